"""The collect / train_reward CLIs: one-line errors with exit code 2 and nothing written; tables on success;
W&B offline logging and mode resolution (never touching the network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from wandb_records import find_run_dirs, history

from rlrm import collect, tracking, train_reward
from rlrm import model as rm
from rlrm.data.dataset import FORMAT_VERSION, MANIFEST, TransitionDataset
from rlrm.errors import ConfigError
from rlrm.model.network import ModelConfig, RewardModel

pytestmark = pytest.mark.usefixtures("workdir")

TRAIN_PROG = "python -m rlrm.train_reward"
COLLECT_PROG = "python -m rlrm.collect"
FAST = ["--epochs", "2", "--encoder", "16,16", "--no-progress"]
FAST_INIT = ["--epochs", "2", "--no-progress"]  # a model extended with --init keeps its architecture


def _error_line(capsys: pytest.CaptureFixture, prog: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def data(cartpole_ds: TransitionDataset, pendulum_ds: TransitionDataset, workdir: Path) -> Path:
    cartpole_ds.save(workdir / "data" / "CartPole-v1")
    pendulum_ds.save(workdir / "data" / "Pendulum-v1")
    return workdir / "data"


# --------------------------------------------------------------------------- success
def test_collect_then_train_writes_model_metrics_and_tables(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    rc = collect.entry(["--task", "CartPole-v1", "--task", "Pendulum-v1", "--steps", "400", "--n-envs", "2",
                        "--out", "data", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "Collected transitions" in out and "CartPole-v1" in out and "Pendulum-v1" in out
    assert len(TransitionDataset.load(workdir / "data" / "Pendulum-v1")) == 400

    rc = train_reward.entry(["--data", "data", "--out", "models/rm.safetensors", *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    for word in ("Reward model", "CartPole-v1", "Pendulum-v1", "n_train", "mse", "r2", "spearman", "ranking_acc"):
        assert word in captured.out
    model = rm.load(workdir / "models" / "rm.safetensors")
    assert list(model.tasks) == ["CartPole-v1", "Pendulum-v1"]
    assert model.config.encoder == [16, 16]
    report = json.loads((workdir / "models" / "rm.metrics.json").read_text())
    assert set(report["tasks"]) == {"CartPole-v1", "Pendulum-v1"}
    assert not (workdir / "wandb").exists()


def test_collect_a_suite_with_a_tasks_file(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "mine.yaml").write_text("tasks:\n  Pendulum-v1/short: {env_id: Pendulum-v1, max_episode_steps: 10}\n"
                                       "suites:\n  tiny: [Pendulum-v1/short]\n")
    rc = collect.entry(["--suite", "tiny", "--tasks-file", "mine.yaml", "--steps", "40", "--n-envs", "2",
                        "--out", "data", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    ds = TransitionDataset.load(workdir / "data" / "Pendulum-v1__short")
    assert ds.task.name == "Pendulum-v1/short" and ds.truncated.sum() == 4


def test_train_with_init_and_frozen_encoder_adds_a_head(data: Path, workdir: Path, acrobot_ds: TransitionDataset,
                                                        capsys: pytest.CaptureFixture) -> None:
    assert train_reward.entry(["--data", str(data / "Pendulum-v1"), "--out", "base/rm.safetensors", *FAST]) == 0
    acrobot_ds.save(workdir / "more" / "Acrobot-v1")
    rc = train_reward.entry(["--data", "more", "--init", "base/rm.safetensors", "--freeze-encoder",
                             "--out", "fewshot/rm.safetensors", *FAST_INIT])
    assert rc == 0, capsys.readouterr().err
    base, extended = rm.load("base/rm.safetensors"), rm.load("fewshot/rm.safetensors")
    assert list(extended.tasks) == ["Pendulum-v1", "Acrobot-v1"]
    for k, v in base.state_dict().items():
        assert (extended.state_dict()[k] == v).all(), k


def test_train_joins_the_folders_of_one_task(workdir: Path, pendulum_ds: TransitionDataset,
                                             capsys: pytest.CaptureFixture) -> None:
    """Random data and an agent's for one task, collected into two folders, train one head on every row."""
    pendulum_ds.subset(pendulum_ds.episode < 4).save(workdir / "random" / "Pendulum-v1")
    pendulum_ds.subset(pendulum_ds.episode >= 4).save(workdir / "agent" / "Pendulum-v1")
    rc = train_reward.entry(["--data", "random", "agent", "--out", "rm.safetensors", *FAST])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((workdir / "rm.metrics.json").read_text())["tasks"]["Pendulum-v1"]
    assert metrics["n_train"] + metrics["n_val"] == len(pendulum_ds)


# --------------------------------------------------------------------------- errors: exit 2, one line, nothing written
def test_collect_unknown_env_id(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    rc = collect.entry(["--task", "NoSuchEnv-v0", "--steps", "10", "--out", "data", "--no-progress"])
    assert rc == 2
    assert "NoSuchEnv-v0" in _error_line(capsys, COLLECT_PROG)
    assert not (workdir / "data").exists()


def test_collect_without_tasks(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert collect.entry(["--steps", "10", "--out", "data"]) == 2
    assert "--task" in _error_line(capsys, COLLECT_PROG)
    assert not (workdir / "data").exists()


def test_collect_bad_labeler(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    rc = collect.entry(["--task", "CartPole-v1", "--steps", "10", "--labeler", "file:nope.csv", "--out", "data",
                        "--no-progress"])
    assert rc == 2
    assert "nope.csv" in _error_line(capsys, COLLECT_PROG)
    assert not (workdir / "data").exists()


def _train_error(capsys: pytest.CaptureFixture, workdir: Path, *args: str, fast: list[str] = FAST) -> str:
    rc = train_reward.entry([*args, "--out", "models/rm.safetensors", *fast])
    line = _error_line(capsys, TRAIN_PROG)
    assert rc == 2
    assert not (workdir / "models" / "rm.safetensors").exists()
    assert not (workdir / "models" / "rm.metrics.json").exists()
    return line


def test_train_missing_data_dir(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    line = _train_error(capsys, workdir, "--data", "no_such_data")
    assert "no_such_data" in line and "not found" in line


def test_train_empty_data_dir(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "empty").mkdir()
    line = _train_error(capsys, workdir, "--data", "empty")
    assert "empty" in line


def test_train_dataset_of_a_newer_format(data: Path, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    manifest_path = data / "Pendulum-v1" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    manifest_path.write_text(json.dumps(manifest))
    line = _train_error(capsys, workdir, "--data", "data")
    assert str(manifest_path.relative_to(workdir)) in line and "format_version" in line


def test_train_nan_labels(data: Path, workdir: Path, pendulum_ds: TransitionDataset,
                          capsys: pytest.CaptureFixture) -> None:
    label = pendulum_ds.label.copy()
    label[[3, 50]] = np.nan
    np.save(data / "Pendulum-v1" / "label.npy", label)
    line = _train_error(capsys, workdir, "--data", "data")
    assert "Pendulum-v1" in line and "'label'" in line and "non-finite" in line


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_train_with_a_bad_init_model(data: Path, workdir: Path, capsys: pytest.CaptureFixture, damage: str) -> None:
    init = workdir / "init.safetensors"
    if damage == "truncated":
        rm.save(RewardModel(ModelConfig(encoder=[8])), init)
        init.write_bytes(init.read_bytes()[:-20])
    line = _train_error(capsys, workdir, "--data", "data", "--init", "init.safetensors", fast=FAST_INIT)
    assert "init.safetensors" in line and ("truncated" in line or "not found" in line)


@pytest.mark.parametrize("args, word", [
    (["--activation", "swish"], "swish"),
    (["--inputs", "obs,reward"], "reward"),
    (["--wandb", "--wandb-mode", "sometimes"], "sometimes"),
    (["--tasks", "Acrobot-v1"], "Acrobot-v1"),
    (["--val-frac", "1.5"], "val_frac"),
])
def test_train_bad_options(data: Path, workdir: Path, capsys: pytest.CaptureFixture, args: list[str],
                           word: str) -> None:
    assert word in _train_error(capsys, workdir, "--data", "data", *args)
    assert not (workdir / "models" / "wandb").exists()


def test_train_out_is_a_directory(data: Path, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "models").mkdir()
    rc = train_reward.entry(["--data", "data", "--out", "models", *FAST])
    assert rc == 2
    assert "models" in _error_line(capsys, TRAIN_PROG)
    assert list((workdir / "models").iterdir()) == []


def test_train_debug_shows_the_exception(workdir: Path) -> None:
    from rlrm.errors import DatasetError

    with pytest.raises(DatasetError):
        train_reward.entry(["--data", "no_such_data", "--debug", *FAST])


def test_real_process_exit_code_and_one_line_error(workdir: Path) -> None:
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "rlrm.train_reward", "--data", "no_such_data", "--out",
                           "m.safetensors", "--no-progress"], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{TRAIN_PROG}: error: ") and "no_such_data" in lines[0], proc.stderr
    assert not (workdir / "m.safetensors").exists()


# --------------------------------------------------------------------------- W&B
def test_wandb_offline_run_logs_every_epoch(data: Path, workdir: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(workdir / "home"))  # wandb's cache and settings stay in the scratch folder
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    rc = train_reward.entry(["--data", "data", "--out", "models/rm.safetensors", "--epochs", "3", "--patience", "0",
                             "--encoder", "16", "--no-progress", "--wandb", "--wandb-mode", "offline"])
    assert rc == 0, capsys.readouterr().err
    assert (workdir / "models" / "rm.safetensors").exists()
    runs = find_run_dirs(workdir)
    assert len(runs) == 1
    assert runs[0].parent == workdir / "models" / "wandb"  # the run lives beside the model
    rows = [r for r in history(runs[0]) if "epoch" in r]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert {"train/loss", "val/loss", "val/Pendulum-v1/loss"} <= set(r), r  # CartPole: constant labels
        assert np.isfinite(r["train/loss"]) and np.isfinite(r["val/loss"])
    metrics = json.loads((workdir / "models" / "rm.metrics.json").read_text())
    assert metrics["epochs_run"] == 3


def test_wandb_mode_disabled_writes_no_wandb_dir(data: Path, workdir: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(workdir / "home"))
    rc = train_reward.entry(["--data", "data", "--out", "models/rm.safetensors", *FAST, "--wandb",
                             "--wandb-mode", "disabled"])
    assert rc == 0, capsys.readouterr().err
    assert (workdir / "models" / "rm.safetensors").exists()
    assert not [p for p in workdir.rglob("wandb") if p.is_dir()]


@pytest.fixture
def no_wandb_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No API key, an empty HOME (no ~/.netrc), and any network connection attempt fails the test."""
    home = tmp_path / "empty_home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args, **kwargs):
        pytest.fail(f"resolve_mode tried to open a connection: {args}")

    monkeypatch.setattr(tracking.socket, "create_connection", no_network)


@pytest.mark.usefixtures("no_wandb_credentials")
@pytest.mark.parametrize("requested", [None, "auto", "AUTO"])
def test_auto_mode_without_credentials_goes_offline_with_a_notice(requested: str | None) -> None:
    mode, notice = tracking.resolve_mode(requested)
    assert mode == "offline"
    assert notice and "offline" in notice and "API key" in notice


@pytest.mark.usefixtures("no_wandb_credentials")
def test_wandb_mode_environment_variable_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.resolve_mode(None) == ("disabled", None)
    assert isinstance(tracking.init_wandb(tracking.WandbOptions(True, project="p")), tracking.NullTracker)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.resolve_mode(None) == ("offline", None)
    assert tracking.resolve_mode("disabled") == ("disabled", None)  # an explicit mode wins
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert tracking.resolve_mode(None) == ("offline", None)


@pytest.mark.usefixtures("no_wandb_credentials")
def test_unreachable_host_goes_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(tracking, "_reachable", lambda host, port, timeout=2.0: False)
    mode, notice = tracking.resolve_mode("auto")
    assert mode == "offline" and notice and "api.wandb.ai" in notice


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sometimes"):
        tracking.resolve_mode("sometimes")


def test_disabled_tracker_is_a_null_tracker() -> None:
    options = tracking.WandbOptions(False, project="p", mode="online")
    assert isinstance(tracking.init_wandb(options), tracking.NullTracker)
