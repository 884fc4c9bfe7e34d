"""``python -m rlrm.train_agent`` in-process with tiny budgets: folders, results, errors, resume, W&B offline."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from wandb_records import find_run_dirs, history, records, run_file

import rlrm
from rlrm import model as rm
from rlrm.atomic import file_sha256
from rlrm.data.rollout import collect
from rlrm.rl.folder import RunFolder
from rlrm.tasks import Task
from rlrm.train.loop import TrainConfig, train_reward_model
from rlrm.train_agent import CONSTANT_NOTE, entry

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"

PROG = "python -m rlrm.train_agent"
# PPO on CartPole with 2 envs x 64 steps per rollout: -n 256 is exactly two rollouts
PPO = ["--env", "CartPole-v1", "--n-envs", "2", "--eval-episodes", "2", "--eval-freq", "128", "--no-progress",
       "--params", "n_steps:64", "batch_size:64"]
SAC = ["--env", "Pendulum-v1", "--algo", "sac", "-n", "200", "--eval-episodes", "2", "--eval-freq", "100",
       "--no-progress", "--params", "learning_starts:50", "batch_size:32", "buffer_size:1000"]
RUN_FILES = ("agent.zip", "config.json", "result.json", "evaluations.json", "progress.csv")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small reward model file with heads for CartPole-v1 and Pendulum-v1 (not Acrobot-v1)."""
    datasets = [collect(Task(e, e), 600, n_envs=4, seed=i, progress=False)
                for i, e in enumerate(["CartPole-v1", "Pendulum-v1"])]
    model = train_reward_model(datasets, TrainConfig(epochs=3, patience=0), progress=False).model
    return rm.save(model, tmp_path_factory.mktemp("model") / "reward_model.safetensors")


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _run_dirs(root: Path, algo: str = "ppo") -> list[str]:
    base = root / "runs" / algo
    return sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []


def _table(out: str) -> list[dict[str, str]]:
    """The rows of the last rich table printed, as dicts keyed by the column headers."""
    lines = out.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("┃ task"))
    columns = [c.strip() for c in lines[start].split("┃")[1:-1]]
    return [dict(zip(columns, (c.strip() for c in line.split("│")[1:-1])))
            for line in lines[start:] if line.startswith("│")]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    assert lines[0].startswith(f"{PROG}: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- the whole job
def test_default_job_trains_a_model_then_agents_and_writes_the_run_folders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    rc = entry([*PPO, "-n", "256", "--collect-steps", "500", "--reward-epochs", "2", "--baseline"])
    assert rc == 0
    out, err = capsys.readouterr()
    model = tmp_path / "runs" / "reward" / "reward_model.safetensors"
    assert model.is_file()  # no --reward-model: one was trained first

    assert _run_dirs(tmp_path) == ["CartPole-v1_1", "CartPole-v1_2"]
    results = _json(tmp_path / "runs" / "results.json")
    assert [r["reward"] for r in results] == ["learned", "true"]
    for r in results:
        run_dir = Path(r["run_dir"])
        assert run_dir.parent == Path("runs") / "ppo"
        for name in RUN_FILES:
            assert (run_dir / name).is_file(), f"{run_dir / name} missing"
        assert any((run_dir / "monitor").glob("*.monitor.csv"))
        assert _json(run_dir / "result.json") == r
        assert r["timesteps"] == 256 and r["episodes"] == 2
        assert r["true_mean"] > 0 and math.isfinite(r["true_std"])
        config = _json(run_dir / "config.json")
        assert config["rlrm_version"] == rlrm.__version__
        assert config["key"] == r["key"]
        assert config["reward"] == r["reward"]
        assert config["agent"]["algo"] == "ppo" and config["agent"]["n_timesteps"] == 256
        assert config["agent"]["kwargs"]["n_steps"] == 64 and config["agent"]["kwargs"]["batch_size"] == 64
        assert config["reward_model_sha256"] == file_sha256(model)
        assert [e["timesteps"] for e in _json(run_dir / "evaluations.json")] == [128, 256]
    assert math.isfinite(results[0]["learned_mean"])

    # the table: each run, its true return, and the learned run beside its baseline
    assert "Agents evaluated on the TRUE reward" in out
    table = _table(out)
    assert [(r["reward"], r["timesteps"]) for r in table] == [("learned", "256"), ("true", "256")]
    for row, r in zip(table, results):
        assert row["true return"] == f"{r['true_mean']:.1f} ± {r['true_std']:.1f}"
    assert table[0]["baseline true return"] == table[1]["true return"]
    assert table[1]["baseline true return"] == "-"
    # CartPole's labels are constant: the learned row says it does not test reward learning (#7 §3)
    assert table[0]["note"] == CONSTANT_NOTE and table[1]["note"] == ""
    assert f"{PROG}: warning: task 'CartPole-v1'" in err and "constant" in err  # the data warning, one line


def test_true_reward_needs_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert entry([*PPO, "-n", "128", "--reward", "true"]) == 0
    assert not (tmp_path / "runs" / "reward").exists()  # no reward model was built
    [result] = _json(tmp_path / "runs" / "results.json")
    assert result["reward"] == "true" and result["timesteps"] == 128
    assert result["learned_mean"] is None  # NaN is stored as null: strict JSON
    assert _json(tmp_path / "runs" / "ppo" / "CartPole-v1_1" / "config.json")["reward_model"] is None
    assert "CartPole-v1" in capsys.readouterr().out


def test_sac_run_saves_its_replay_buffer_in_checkpoints(model_file: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert entry([*SAC, "--reward-model", str(model_file), "--checkpoint-freq", "100"]) == 0
    run_dir = tmp_path / "runs" / "sac" / "Pendulum-v1_1"
    for name in RUN_FILES:
        assert (run_dir / name).is_file()
    for name in ("agent.zip", "replay_buffer.npz", "state.json"):
        assert (run_dir / "checkpoint" / name).is_file()
    result = _json(run_dir / "result.json")
    assert result["timesteps"] == 200 and result["algo"] == "sac"
    assert math.isfinite(result["true_mean"]) and math.isfinite(result["learned_mean"])


# --------------------------------------------------------------------------- errors: one line, exit 2
@pytest.mark.parametrize(("args", "needle"), [
    (["--algo", "foo"], "foo"),
    (["--env", "NoSuchEnv-v9"], "NoSuchEnv-v9"),
    (["--params", "n_stepz:64"], "n_stepz"),
    (["--params", "n_steps:abc"], "n_steps"),
    (["--params", "n_steps"], "n_steps"),
    (["--params", "batch_size:1"], "batch_size"),
    (["-n", "0"], "n_timesteps"),
])
def test_bad_arguments_fail_fast_with_one_line(args: list[str], needle: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["--env", "CartPole-v1", "--reward", "true", "-n", "128", "--no-progress"]
    assert entry([*base, *args]) == 2
    assert needle in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_a_model_without_the_task_is_refused(model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert entry(["--env", "Acrobot-v1", "-n", "128", "--reward-model", str(model_file), "--no-progress"]) == 2
    line = _one_line_error(capsys)
    assert "Acrobot-v1" in line and str(model_file) in line
    assert not (tmp_path / "runs" / "ppo").exists()

    assert entry(["--env", "CartPole-v1", "-n", "128", "--reward-model", "missing.safetensors"]) == 2
    assert "missing.safetensors" in _one_line_error(capsys)


def test_unwritable_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    Path("a_file").write_text("not a folder")
    assert entry([*PPO, "-n", "128", "--reward", "true", "--output-dir", "a_file/runs"]) == 2
    assert "a_file" in _one_line_error(capsys)


def test_eval_freq_zero_does_not_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``--eval-freq 0``: no periodic evaluation (or, at least, a one-line error; never a traceback)."""
    monkeypatch.chdir(tmp_path)
    args = ["--env", "CartPole-v1", "--n-envs", "2", "-n", "128", "--reward", "true", "--eval-episodes", "2",
            "--eval-freq", "0", "--no-progress", "--params", "n_steps:64", "batch_size:64"]
    rc = entry(args)
    if rc == 2:
        _one_line_error(capsys)
        return
    assert rc == 0
    run_dir = tmp_path / "runs" / "ppo" / "CartPole-v1_1"
    assert _json(run_dir / "result.json")["episodes"] == 2  # the final evaluation still runs
    assert not (run_dir / "evaluations.json").exists() or _json(run_dir / "evaluations.json") == []


# --------------------------------------------------------------------------- resume
def test_resume_reuses_a_finished_run(model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = [*PPO, "-n", "256", "--reward-model", str(model_file)]
    assert entry(args) == 0
    run_dir = tmp_path / "runs" / "ppo" / "CartPole-v1_1"
    first = _json(run_dir / "result.json")
    stamps = {name: (run_dir / name).stat().st_mtime_ns for name in RUN_FILES}

    assert entry(["--resume", *args]) == 0
    assert _run_dirs(tmp_path) == ["CartPole-v1_1"]  # no new folder
    assert _json(tmp_path / "runs" / "results.json") == [first]  # the same result
    assert {name: (run_dir / name).stat().st_mtime_ns for name in RUN_FILES} == stamps  # nothing rewritten

    assert entry(args) == 0  # without --resume: a new run beside it
    assert _run_dirs(tmp_path) == ["CartPole-v1_1", "CartPole-v1_2"]
    # a different run (other seed) is not confused with the finished one
    assert entry(["--resume", *args, "--seed", "1"]) == 0
    assert _run_dirs(tmp_path) == ["CartPole-v1_1", "CartPole-v1_2", "CartPole-v1_3"]
    assert _json(tmp_path / "runs" / "ppo" / "CartPole-v1_3" / "result.json")["seed"] == 1


def test_resume_continues_an_interrupted_run_from_its_checkpoint(model_file: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C lands deterministically: the first checkpoint save sends SIGINT to this process (more cases, and a
    real signal to a subprocess, in test_runs_hardening.py)."""
    monkeypatch.chdir(tmp_path)
    n = 1024
    args = ["--env", "CartPole-v1", "--n-envs", "2", "-n", str(n), "--reward-model", str(model_file),
            "--eval-episodes", "2", "--eval-freq", "512", "--checkpoint-freq", "256", "--no-progress",
            "--params", "n_steps:64", "batch_size:64", "n_epochs:4"]
    run_dir = tmp_path / "runs" / "ppo" / "CartPole-v1_1"
    save_checkpoint = RunFolder.save_checkpoint

    def save_then_ctrl_c(self: RunFolder, agent: Any, venv: Any) -> None:
        save_checkpoint(self, agent, venv)
        os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as m:
        m.setattr(RunFolder, "save_checkpoint", save_then_ctrl_c)
        assert entry(args) == 130
    err = capsys.readouterr().err
    assert "continue with --resume" in err and "Traceback" not in err
    assert not (run_dir / "result.json").exists()
    saved = _json(run_dir / "checkpoint" / "state.json")["num_timesteps"]
    assert saved == 256  # the first checkpoint; the stop's own checkpoint is at the same (last) update

    assert entry(["--resume", *args]) == 0
    assert _run_dirs(tmp_path) == ["CartPole-v1_1"]  # the same folder
    result = _json(run_dir / "result.json")
    assert result["timesteps"] == n
    assert _json(tmp_path / "runs" / "results.json") == [result]
    # it went on from the checkpoint, not from step 0; progress.csv holds both segments
    with open(run_dir / "progress.csv") as f:
        logged = [int(float(row["time/total_timesteps"])) for row in csv.DictReader(f)
                  if row.get("time/total_timesteps")]  # eval rows leave this column empty
    assert logged == [128, 256, 384, 512, 640, 768, 896, 1024]
    evaluations = [e["timesteps"] for e in _json(run_dir / "evaluations.json")]
    assert evaluations == [512, 1024]  # history kept, no step repeated


# --------------------------------------------------------------------------- Weights & Biases
def test_wandb_offline_logs_sb3_eval_and_final_metrics(model_file: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert entry([*PPO, "-n", "256", "--reward-model", str(model_file), "--wandb", "--wandb-mode", "offline"]) == 0
    run_dir = tmp_path / "runs" / "ppo" / "CartPole-v1_1"
    [wandb_dir] = find_run_dirs(tmp_path)
    assert wandb_dir.parent == run_dir / "wandb"  # the W&B folder lives in the run folder, not in the cwd

    rows = history(wandb_dir)
    keys = {k for row in rows for k in row}
    assert "rollout/ep_rew_mean" in keys or any(k.startswith("train/") for k in keys), sorted(keys)
    assert "rollout/ep_learned_rew_mean" in keys
    assert {"eval/true_return_mean", "final/true_return_mean"} <= keys
    # the run's proxy-vs-true figure reaches W&B as an image
    assert list((wandb_dir / "files" / "media" / "images" / "reward_hacking").glob("proxy_vs_true_*.png"))
    result = _json(run_dir / "result.json")
    assert result["reward_hacking"]["flagged"] is False and (run_dir / "reward_hacking.json").is_file()
    final = [row for row in rows if "final/true_return_mean" in row]
    assert final[-1]["final/true_return_mean"] == pytest.approx(result["true_mean"])
    evals = [row["eval/true_return_mean"] for row in rows if "eval/true_return_mean" in row]
    assert evals == pytest.approx([e["true_mean"] for e in _json(run_dir / "evaluations.json")])

    config = {}  # the run's config: given at init (run record), updated later (config records)
    for r in records(run_file(wandb_dir)):
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):
            items = r.run.config.update if kind == "run" else r.config.update
            config.update({item.key: json.loads(item.value_json) for item in items})
    assert config.get("reward") == "learned" and config.get("task", {}).get("name") == "CartPole-v1"


def test_wandb_disabled_writes_no_wandb_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert entry([*PPO, "-n", "128", "--reward", "true", "--wandb", "--wandb-mode", "disabled"]) == 0
    assert (tmp_path / "runs" / "ppo" / "CartPole-v1_1" / "result.json").is_file()
    assert not [p for p in tmp_path.rglob("*") if "wandb" in p.name]
