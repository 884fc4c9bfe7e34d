"""``python -m rlrm.evaluate`` in-process: a saved agent on the TRUE reward, with the learned return beside it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rlrm import model as rm
from rlrm.collect import entry as collect_entry
from rlrm.data.rollout import collect
from rlrm.evaluate import entry
from rlrm.rl.envs import load_vecnormalize, make_vec_env
from rlrm.rl.evaluation import evaluate_agent
from rlrm.rl.files import load_agent
from rlrm.rl.folder import RunFolder
from rlrm.rl.saved import agent_policy, load_agent_for_eval
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


def _library_eval(agent_path: Path, task: Task, episodes: int, seed: int, model_path: Path | None = None,
                  stats: Path | None = None) -> dict:
    """The deterministic evaluation the CLI should report, done here by the library (``stats``: the run's
    VecNormalize statistics)."""
    learned = rm.load(model_path).reward_fn(task.name) if model_path else None
    venv = make_vec_env(task, min(episodes, 5), seed, learned, {"gamma": 0.99} if stats else None, training=False)
    if stats is not None:
        load_vecnormalize(venv, stats)
    agent = load_agent(agent_path, algo="ppo", env=venv, for_training=False)
    venv.seed(seed)
    try:
        return evaluate_agent(agent, venv, episodes).summary()
    finally:
        venv.close()


def _expected(agent_path: Path, model_path: Path | None, episodes: int, seed: int = 12345) -> dict:
    """What the CLI should report for the CartPole run."""
    return _library_eval(agent_path, CARTPOLE, episodes, seed, model_path)


def _table_row(out: str, task: str = "CartPole-v1") -> str:
    rows = [line for line in out.splitlines() if task in line and "│" in line]
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


# --------------------------------------------------------------------------- same numbers as result.json (defect 10)
@pytest.fixture(scope="module")
def shaped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished learned-reward PPO CartPole-v1 run whose agent was paid ``clip(0.5 * learned, 0.3)``, evaluated
    on 3 episodes."""
    root = tmp_path_factory.mktemp("shaped")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        rc = train_entry(["--env", "CartPole-v1", "-n", "256", "--n-envs", "2", "--collect-steps", "500",
                          "--reward-epochs", "2", "--eval-episodes", "3", "--seed", "3", "--no-progress",
                          "--reward-scale", "0.5", "--reward-clip", "0.3", "--no-baseline",
                          "--params", "n_steps:64", "batch_size:64"])
    assert rc == 0
    return root / "runs" / "ppo" / "CartPole-v1_1"


def test_evaluate_gives_the_numbers_of_result_json(shaped_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # defect 10: the run's shaping (scale/clip), evaluation seed and episode count, not 12345 and the raw reward
    result = json.loads((shaped_run / "result.json").read_text())
    monkeypatch.chdir(shaped_run.parent.parent.parent)
    assert entry(["--agent", "runs/ppo/CartPole-v1_1/agent.zip"]) == 0
    out = capsys.readouterr().out
    assert f"(3 episodes, seed {3 + 10_000})" in " ".join(out.split())  # the title may wrap
    cells = [c.strip() for c in _table_row(out).split("│")[1:-1]]
    assert cells[1] == f"{result['true_mean']:.1f}" and cells[3] == f"{result['learned_mean']:.1f}"
    # exactly, through the library the CLI calls
    loaded = load_agent_for_eval(shaped_run / "agent.zip", RunFolder(shaped_run))
    summary = evaluate_agent(loaded.agent, loaded.venv, loaded.episodes).summary()
    loaded.venv.close()
    assert (summary["true_mean"], summary["learned_mean"], summary["episodes"]) == \
        (result["true_mean"], result["learned_mean"], result["episodes"])
    assert result["learned_mean"] == pytest.approx(0.3 * result["true_mean"])  # CartPole: learned 1.0, paid 0.3


# --------------------------------------------------------------------------- normalization statistics (defect 4)
@pytest.fixture(scope="module")
def normalized_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A true-reward PPO Pendulum-v1 run with VecNormalize, and checkpoints (their statistics beside them)."""
    root = tmp_path_factory.mktemp("normalized")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        rc = train_entry(["--env", "Pendulum-v1", "--algo", "ppo", "--reward", "true", "-n", "256", "--n-envs", "2",
                          "--eval-episodes", "2", "--checkpoint-freq", "128", "--no-progress",
                          "--params", "n_steps:64", "batch_size:64", "normalize:true"])
    assert rc == 0
    run = root / "runs" / "ppo" / "Pendulum-v1_1"
    assert (run / "checkpoint" / "vecnormalize.json").exists()
    return run


def _pendulum_eval(agent_path: Path, stats: Path | None, seed: int, episodes: int = 2) -> dict:
    """The evaluation of an agent of the normalized run, with or without its statistics, done by the library."""
    return _library_eval(agent_path, Task("Pendulum-v1", "Pendulum-v1"), episodes, seed, stats=stats)


def test_a_checkpoint_is_evaluated_with_its_normalization_statistics(
        normalized_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = normalized_run / "checkpoint"
    assert entry(["--agent", str(ckpt / "agent.zip")]) == 0
    cells = [c.strip() for c in _table_row(capsys.readouterr().out, "Pendulum-v1").split("│")[1:-1]]
    with_stats = _pendulum_eval(ckpt / "agent.zip", ckpt / "vecnormalize.json", 10_000)
    assert cells[1] == f"{with_stats['true_mean']:.1f}"
    # the statistics matter: the same agent on raw observations scores otherwise
    assert cells[1] != f"{_pendulum_eval(ckpt / 'agent.zip', None, 10_000)['true_mean']:.1f}"


def test_a_normalized_agent_without_its_statistics_is_refused(
        normalized_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(normalized_run, run)
    (run / "checkpoint" / "vecnormalize.json").unlink()
    monkeypatch.chdir(tmp_path)
    assert entry(["--agent", "run/checkpoint/agent.zip"]) == 2
    line = _one_line_error(capsys)
    assert "run/checkpoint/vecnormalize.json is missing" in line and "VecNormalize" in line
    # collect --policy has the same need
    assert collect_entry(["--task", "Pendulum-v1", "--steps", "100", "--no-progress", "--policy",
                          "run/checkpoint/agent.zip", "--out", "data"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run/checkpoint/vecnormalize.json is missing" in err
    assert not (tmp_path / "data").exists()


def test_collect_policy_sees_observations_normalized_with_the_run_statistics(normalized_run: Path) -> None:
    ckpt = normalized_run / "checkpoint"
    task = Task("Pendulum-v1", "Pendulum-v1")
    policy = agent_policy(str(ckpt / "agent.zip"), task, 4, seed=0)
    venv = make_vec_env(task, 4, 0, None, {"gamma": 0.99}, training=False)
    load_vecnormalize(venv, ckpt / "vecnormalize.json")
    agent = load_agent(ckpt / "agent.zip", algo="ppo", env=venv, for_training=False)
    raw = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -3.0], [-1.0, 0.0, 7.0], [0.6, 0.8, 0.0]], dtype=np.float32)
    torch.manual_seed(0)
    acted = policy(raw)
    torch.manual_seed(0)
    expected, _ = agent.predict(venv.normalize_obs(raw), deterministic=False)
    torch.manual_seed(0)
    unnormalized, _ = agent.predict(raw, deterministic=False)
    venv.close()
    np.testing.assert_array_equal(acted, expected)
    assert not np.allclose(acted, unnormalized)


def test_evaluates_the_true_peak_agent_a_run_kept(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``<run>/best_true/agent.zip`` (the agent of the best true-reward evaluation) evaluates with its settings."""
    best = run_dir / "best_true" / "agent.zip"
    assert best.is_file()
    assert entry(["--agent", str(best), "--episodes", "3"]) == 0, capsys.readouterr().err
    expected = _expected(best, run_dir.parent.parent / "reward" / "reward_model.safetensors", 3, 10_000)
    _check_row(capsys.readouterr().out, expected, 3)
