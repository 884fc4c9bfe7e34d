"""``python -m rlrm.evaluate`` in-process: a saved agent on the TRUE reward, with the learned return beside it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from rlrm import model as rm
from rlrm.data.rollout import collect
from rlrm.evaluate import entry
from rlrm.rl.envs import make_vec_env
from rlrm.rl.evaluation import evaluate_agent
from rlrm.rl.files import load_agent
from rlrm.tasks import Task
from rlrm.train.loop import TrainConfig, train_reward_model
from rlrm.train_agent import entry as train_entry

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"

PROG = "python -m rlrm.evaluate"
CARTPOLE = Task("CartPole-v1", "CartPole-v1")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished learned-reward PPO run on CartPole-v1 (its reward model trained by train_agent)."""
    root = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        rc = train_entry(["--env", "CartPole-v1", "-n", "256", "--n-envs", "2", "--collect-steps", "500",
                          "--reward-epochs", "2", "--eval-episodes", "2", "--eval-freq", "256", "--no-progress",
                          "--params", "n_steps:64", "batch_size:64"])
    assert rc == 0
    return root / "runs" / "ppo" / "CartPole-v1_1"


def _expected(agent_path: Path, model_path: Path | None, episodes: int, seed: int = 12345) -> dict:
    """What the CLI should report: the deterministic evaluation it runs, done here by the library."""
    learned = rm.load(model_path).reward_fn("CartPole-v1") if model_path else None
    venv = make_vec_env(CARTPOLE, min(episodes, 5), seed, learned, None, training=False)
    agent = load_agent(agent_path, algo="ppo", env=venv, for_training=False)
    venv.seed(seed)
    try:
        return evaluate_agent(agent, venv, episodes).summary()
    finally:
        venv.close()


def _table_row(out: str) -> str:
    rows = [line for line in out.splitlines() if "CartPole-v1" in line and "│" in line]
    assert len(rows) == 1, out
    return rows[0]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    assert lines[0].startswith(f"{PROG}: error: ") and "Traceback" not in err
    return lines[0]


def _check_row(out: str, expected: dict, episodes: int) -> None:
    assert f"({episodes} episodes, seed " in out
    header = next(line for line in out.splitlines() if "true return" in line)
    assert "learned return" in header and "episode length" in header
    cells = [c.strip() for c in _table_row(out).split("│")[1:-1]]
    assert cells[0] == "CartPole-v1"
    assert cells[1] == f"{expected['true_mean']:.1f}"
    assert cells[3] == f"{expected['learned_mean']:.1f}"
    assert cells[4] == f"{expected['length_mean']:.1f}"


def test_evaluates_a_run_folder_on_the_true_and_the_learned_reward(
        run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    root = run_dir.parent.parent.parent
    monkeypatch.chdir(root)  # where train_agent ran, as in the README
    files = sorted(root.rglob("*"))
    assert entry(["--agent", "runs/ppo/CartPole-v1_1/agent.zip", "--episodes", "3"]) == 0
    # the task and the reward model come from the run's config.json
    # the run's evaluation seed (seed 0 + 10000), as its result.json
    expected = _expected(run_dir / "agent.zip", root / "runs" / "reward" / "reward_model.safetensors", 3, 10_000)
    _check_row(capsys.readouterr().out, expected, 3)
    assert sorted(root.rglob("*")) == files  # evaluation writes nothing


def test_evaluates_a_run_folder_from_another_working_directory(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert entry(["--agent", str(run_dir / "agent.zip"), "--episodes", "3"]) == 0, capsys.readouterr().err
    expected = _expected(run_dir / "agent.zip", run_dir.parent.parent / "reward" / "reward_model.safetensors", 3,
                         10_000)
    _check_row(capsys.readouterr().out, expected, 3)


def test_stochastic_evaluation_runs(run_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(run_dir.parent.parent.parent)
    assert entry(["--agent", "runs/ppo/CartPole-v1_1/agent.zip", "--episodes", "2", "--stochastic", "--seed", "1"]) == 0
    assert "(2 episodes, seed 1)" in capsys.readouterr().out


def test_an_agent_outside_a_run_folder_needs_task(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(run_dir / "agent.zip", "agent.zip")  # a plain SB3 zip: no config.json beside it
    assert entry(["--agent", "agent.zip"]) == 2
    assert "--task" in _one_line_error(capsys)

    model_path = run_dir.parent.parent / "reward" / "reward_model.safetensors"
    assert entry(["--agent", "agent.zip", "--task", "CartPole-v1", "--reward-model", str(model_path),
                  "--episodes", "2"]) == 0
    cells = [c.strip() for c in _table_row(capsys.readouterr().out).split("│")[1:-1]]
    assert cells[1] == f"{_expected(Path('agent.zip'), model_path, 2)['true_mean']:.1f}"
    assert cells[3] != "-"

    assert entry(["--agent", "agent.zip", "--task", "CartPole-v1", "--episodes", "2"]) == 0
    cells = [c.strip() for c in _table_row(capsys.readouterr().out).split("│")[1:-1]]
    assert cells[3] == "-"  # no reward model: no learned return


def test_an_agent_from_another_env_is_refused(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert entry(["--agent", str(run_dir / "agent.zip"), "--task", "Pendulum-v1"]) == 2
    line = _one_line_error(capsys)
    assert "another env" in line and "Pendulum-v1" in line


def test_missing_agent_and_a_model_without_the_task(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert entry(["--agent", "nope/agent.zip"]) == 2
    assert "nope/agent.zip" in _one_line_error(capsys)

    ds = collect(Task("Pendulum-v1", "Pendulum-v1"), 300, n_envs=2, progress=False)
    pendulum_only = rm.save(train_reward_model([ds], TrainConfig(epochs=1), progress=False).model,
                            tmp_path / "pendulum.safetensors")
    assert entry(["--agent", str(run_dir / "agent.zip"), "--reward-model", str(pendulum_only)]) == 2
    assert "CartPole-v1" in _one_line_error(capsys)
