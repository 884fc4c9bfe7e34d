"""Grids of runs in parallel (issue #12): ``train_agent --workers N`` (worker processes) and ``--backend ray`` give
the same results as one run after another; a failing run is reported while the others finish; a stopped grid
resumes; bad backends are refused in one line, fast."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rlrm import model as rm
from rlrm.data.rollout import collect
from rlrm.tasks import Task
from rlrm.train.loop import TrainConfig, train_reward_model
from rlrm.train_agent import entry

PROG = "python -m rlrm.train_agent"
TESTS = Path(__file__).parent
# 4 runs: CartPole, seeds 0 and 1, learned reward and the true-reward baseline; two PPO rollouts each
GRID = ["--env", "CartPole-v1", "--seed", "0", "--seed", "1", "--baseline", "-n", "256", "--n-envs", "2",
        "--eval-episodes", "2", "--eval-freq", "128", "--no-progress", "--params", "n_steps:64", "batch_size:64"]
COMPARED = ("task", "algo", "seed", "reward", "timesteps", "true_mean", "true_std", "learned_mean", "key")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = collect(Task("CartPole-v1", "CartPole-v1"), 600, n_envs=4, seed=3, progress=False)
    model = train_reward_model([ds], TrainConfig(epochs=2, patience=0), progress=False).model
    return rm.save(model, tmp_path_factory.mktemp("grid_model") / "reward_model.safetensors")


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads((out / "results.json").read_text())
    return {r["key"]: {k: r[k] for k in COMPARED} for r in rows}


def _cli(args: list[str], cwd: Path, extra_path: Path | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(extra_path) if extra_path else None, str(TESTS),
                                                       os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "rlrm.train_agent", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, **kw)


def test_workers_and_ray_give_the_results_of_one_run_after_another(tmp_path: Path, model_file: Path) -> None:
    """Same seeds on CPU: the 4 runs' returns are identical whatever runs them (the model file travels to Ray
    workers through the object store)."""
    common = [*GRID, "--reward-model", str(model_file)]
    assert entry([*common, "--output-dir", str(tmp_path / "seq")]) == 0
    expected = _rows(tmp_path / "seq")
    assert len(expected) == 4 and {r["reward"] for r in expected.values()} == {"learned", "true"}
    assert len({r["true_mean"] for r in expected.values()}) > 1  # the runs differ: equality below is not trivial

    assert entry([*common, "--workers", "2", "--output-dir", str(tmp_path / "w2")]) == 0
    assert _rows(tmp_path / "w2") == expected

    assert entry([*common, "--backend", "ray", "--workers", "2", "--output-dir", str(tmp_path / "ray")]) == 0
    assert _rows(tmp_path / "ray") == expected
    # every backend writes the same run folders
    for out in ("w2", "ray"):
        assert sorted(p.name for p in (tmp_path / out / "ppo").iterdir()) == \
            sorted(p.name for p in (tmp_path / "seq" / "ppo").iterdir())


def test_a_failing_run_is_reported_while_the_others_finish(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text("tasks:\n"
                     "  steady: {env_id: 'grid_envs:CrashingCartPole-v0'}\n"
                     "  crashing: {env_id: 'grid_envs:CrashingCartPole-v0', env_kwargs: {crash_after: 100}}\n")
    args = ["--tasks-file", str(tasks), "--env-module", "grid_envs", "--task", "steady", "--task", "crashing",
            "--task", "CartPole-v1", "--reward", "true", "-n", "256", "--n-envs", "1", "--eval-episodes", "1",
            "--params", "n_steps:128", "batch_size:64", "--no-progress", "--workers", "2", "--output-dir", "out"]
    proc = _cli(args, tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(r["task"] for r in rows) == ["CartPole-v1", "steady"]
    assert "crashing/ppo/seed0/true: FAILED: RuntimeError: simulator crashed after 100 steps" in proc.stderr
    assert "1 of 3 runs failed" in proc.stderr.splitlines()[-1]
    assert "FAILED crashing" in proc.stdout  # under the final table
    assert "Traceback" in proc.stderr  # an unexpected error keeps its traceback for the person debugging it



def test_a_stopped_grid_checkpoints_every_running_run_and_resumes(tmp_path: Path) -> None:
    # 60 PPO rollouts of 4 minibatch steps each: the stop lands mid-run, and the rest trains in seconds
    args = ["--env", "CartPole-v1", "--reward", "true", "--seed", "0", "--seed", "1", "-n", "7680", "--n-envs", "2",
            "--eval-episodes", "1", "--checkpoint-freq", "1000000", "--params", "n_steps:64", "batch_size:64",
            "n_epochs:2", "--no-progress", "--workers", "2", "--output-dir", "out"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "rlrm.train_agent", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    monitors = tmp_path / "out" / "ppo"
    while time.monotonic() < deadline and sum(_rows_in(p) for p in monitors.glob("*/progress.csv")) < 2:
        time.sleep(0.2)  # both runs have logged a rollout
    proc.send_signal(signal.SIGINT)  # the driver only, as `kill -INT` would
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.count("continue with --resume") == 2, err
    folders = sorted(monitors.iterdir())
    assert len(folders) == 2 and all((f / "checkpoint" / "agent.zip").is_file() for f in folders)
    assert not (tmp_path / "out" / "results.json").exists()

    done = _cli([*args, "--resume"], tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(r["seed"] for r in rows) == [0, 1] and all(r["timesteps"] == 7680 for r in rows)
    assert sorted(monitors.iterdir()) == folders  # resumed in place


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_of_a_killed_driver_checkpoint_and_exit(tmp_path: Path) -> None:
    """`kill -9` of the command leaves no orphan training on: each worker sees its driver gone, stops at its next
    step with a checkpoint, and exits."""
    args = ["--env", "CartPole-v1", "--reward", "true", "--seed", "0", "--seed", "1", "-n", "200000", "--n-envs", "2",
            "--eval-episodes", "1", "--checkpoint-freq", "1000000", "--params", "n_steps:64", "batch_size:64",
            "n_epochs:2", "--no-progress", "--workers", "2", "--output-dir", "out"]
    proc = subprocess.Popen([sys.executable, "-m", "rlrm.train_agent", *args], cwd=tmp_path,
                            env={**os.environ, "WANDB_MODE": "disabled"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    runs = tmp_path / "out" / "ppo"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum(_rows_in(p) for p in runs.glob("*/progress.csv")) < 2:
        time.sleep(0.2)
    workers = [c for c in _children(proc.pid) if "multiprocessing" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) >= 2, workers
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), "a worker trains on without its driver"
    assert all((f / "checkpoint" / "agent.zip").is_file() for f in runs.iterdir())


def _rows_in(csv_file: Path) -> int:
    """1 if SB3's logger has written a row to ``csv_file`` (a header and a line), else 0."""
    try:
        return int(len(csv_file.read_text().splitlines()) >= 2)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "0"], "--workers 0: expected at least 1 run at a time"),
    (["--cpus-per-run", "0"], "--cpus-per-run 0: expected at least 1"),
    (["--ray-address", "127.0.0.1:1"], "--ray-address: only with --backend ray"),
])
def test_bad_grid_options_are_refused_in_one_line(tmp_path: Path, args: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc = entry(["--env", "CartPole-v1", "--reward", "true", "-n", "64", "--output-dir", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"{PROG}: error: {message}"
    assert not (tmp_path / "o").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_ray_cluster_is_a_clear_error_within_30_s(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for address in (f"127.0.0.1:{_closed_port()}", "10.255.255.1:6379"):  # refused; a host that never answers
        start = time.monotonic()
        rc = entry(["--env", "CartPole-v1", "--reward", "true", "-n", "64", "--backend", "ray", "--ray-address",
                    address, "--output-dir", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and time.monotonic() - start < 30
        # refused or silent: our probe says so; a sandbox proxy that accepts any connection: Ray's own refusal
        assert err.startswith((f"{PROG}: error: --ray-address '{address}': cannot reach the Ray cluster",
                               f"{PROG}: error: --ray-address '{address}': Ray could not start or connect")), err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_ray_not_installed_says_which_extra_to_install(tmp_path: Path) -> None:
    shadow = tmp_path / "no_ray"
    shadow.mkdir()
    (shadow / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")  # as if Ray were absent
    proc = _cli(["--env", "CartPole-v1", "--reward", "true", "-n", "64", "--backend", "ray", "--output-dir", "o"],
                tmp_path, extra_path=shadow, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"{PROG}: error: --backend ray: Ray is not installed; install it with "
                                   "pip install 'rlrm[ray]' (or pip install ray)")
    assert not (tmp_path / "o").exists()


def test_a_ray_worker_that_cannot_see_the_model_file_trains_on_a_checked_copy(tmp_path: Path,
                                                                             model_file: Path) -> None:
    """On another node the driver's path does not exist: the bytes from the object store become a cached copy
    named by its SHA-256, and the run's spec points there (same key: the same run)."""
    import shutil

    from rlrm.atomic import file_sha256
    from rlrm.rl.folder import RunSpec
    from rlrm.rl.hyperparams import load_spec
    from rlrm.rl.ray_backend import _local_model

    task = Task("CartPole-v1", "CartPole-v1")
    driver_copy = shutil.copy(model_file, tmp_path / "driver_model.safetensors")
    spec = RunSpec(task, load_spec("ppo", task, {"n_timesteps": 64}), 0, "learned", str(driver_copy))
    assert _local_model(spec, b"unused") is spec  # the file is here and identical: used as it is
    data = Path(driver_copy).read_bytes()
    Path(driver_copy).unlink()  # as seen from another node
    local = _local_model(spec, data)
    assert local.reward_model != spec.reward_model and Path(local.reward_model).read_bytes() == data
    assert file_sha256(local.reward_model) == spec.reward_model_sha256 and local.key() == spec.key()


def test_the_ray_control_actor_carries_progress_and_the_stop_flag() -> None:
    """The one actor of a Ray grid, as a plain object: runs report steps and read the flag in the same call."""
    from rlrm.rl.ray_backend import _Control

    control = _Control()
    assert control.report(0, 100) is False and control.report(1, 50) is False
    control.set_stop()
    assert control.report(0, 200) is True
    assert control.steps() == {0: 200, 1: 50}
