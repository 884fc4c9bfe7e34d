"""Runs that are stopped, resumed, damaged, shared or starved, met the way a user meets them: through
``python -m rlrm.train_agent`` (in-process with ``entry``, or in a subprocess where a second process is the point).

Ctrl-C lands deterministically: a wrapped method of the run sends SIGINT to this very process at a chosen point
(inside a checkpoint save, an evaluation, the final save...), and the handler the CLI installed takes it from there.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from wandb_records import find_run_dirs

from rlrm import model as rm
from rlrm.data.rollout import collect
from rlrm.errors import ConfigError
from rlrm.rl import folder as folder_module
from rlrm.rl import runs as runs_module
from rlrm.rl.callbacks import TrueRewardEval
from rlrm.rl.folder import RunFolder
from rlrm.tasks import Task
from rlrm.train.loop import TrainConfig, train_reward_model
from rlrm.train_agent import entry

PROG = "python -m rlrm.train_agent"
N = 512
# PPO on CartPole, 2 envs x 64 steps: a rollout is 128 steps; checkpoints every rollout, evaluations every two
PPO = ["--env", "CartPole-v1", "--reward", "true", "--n-envs", "2", "-n", str(N), "--checkpoint-freq", "128",
       "--eval-freq", "256", "--eval-episodes", "2", "--no-progress", "--params", "n_steps:64", "batch_size:64",
       "n_epochs:2"]
RUN = Path("runs") / "ppo" / "CartPole-v1_1"


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in _err_lines(capsys) if not line.startswith("[")]  # "[1/1] task...": progress
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{PROG}: error: "), lines[0]
    return lines[0]


def _sigint_at(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, call: int = 1, signals: int = 1,
               before: bool = True) -> None:
    """Make ``owner.name`` send SIGINT (``signals`` times) to this process on its ``call``-th call, before or after
    doing its work: Ctrl-C at exactly that point."""
    original = getattr(owner, name)
    calls = [0]

    def hooked(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if before and calls[0] == call:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
        out = original(*args, **kwargs)
        if not before and calls[0] == call:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(owner, name, hooked)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (but the lock file, which holds its owner's pid) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _progress_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "progress.csv") as f:
        return [int(float(r["time/total_timesteps"])) for r in csv.DictReader(f) if r.get("time/total_timesteps")]


def _monitor_rows(run_dir: Path) -> int:
    return sum(max(0, len(p.read_text().splitlines()) - 2) for p in (run_dir / "monitor").glob("*.monitor.csv"))


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


@pytest.fixture
def interrupted(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    """A PPO run stopped by Ctrl-C inside its second checkpoint save: resumable from 256 steps."""
    with monkeypatch.context() as m:
        _sigint_at(m, RunFolder, "save_checkpoint", call=2)
        assert entry(PPO) == 130
    capsys.readouterr()
    assert _json(workdir / RUN / "checkpoint" / "state.json")["num_timesteps"] == 256
    return workdir / RUN


# --------------------------------------------------------------------------- #7 §2.1 periodic evaluation
def test_periodic_evaluation_runs_the_requested_episodes(workdir: Path) -> None:
    args = ["--env", "CartPole-v1", "--reward", "true", "--n-envs", "2", "-n", "128", "--eval-freq", "128",
            "--eval-episodes", "7", "--no-progress", "--params", "n_steps:64", "batch_size:64"]
    assert entry(args) == 0
    rows = _json(workdir / RUN / "evaluations.json")
    assert [r["episodes"] for r in rows] == [7]  # at most 5 before the fix


# --------------------------------------------------------------------------- #7 §2.11 Ctrl-C at any point
def test_ctrl_c_in_training_stops_at_the_last_update_and_resumes_to_the_same_end(
        interrupted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert not (interrupted / "result.json").exists()
    assert entry(["--resume", *PPO]) == 0
    result = _json(interrupted / "result.json")
    assert result["timesteps"] == N  # PPO's partial rollout was dropped, not counted: no overshoot
    assert [e["timesteps"] for e in _json(interrupted / "evaluations.json")] == [256, 512]


@pytest.mark.parametrize(("owner", "name", "call"), [
    (TrueRewardEval, "run_eval", 1),   # inside a periodic evaluation
    (runs_module, "make_vec_env", 1),  # while the run is being set up, before its first step
    (folder_module, "save_agent", 1),  # inside the first checkpoint's save
])
def test_ctrl_c_during_training_stops_resumably_with_130(
        owner: Any, name: str, call: int, workdir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    with monkeypatch.context() as m:
        _sigint_at(m, owner, name, call)
        assert entry(PPO) == 130
    last = _err_lines(capsys)[-1]
    assert "continue with --resume" in last, last
    assert not (workdir / RUN / "result.json").exists()
    assert not (workdir / "runs" / "results.json").exists()
    assert not _temp_files(workdir)

    assert entry(["--resume", *PPO]) == 0
    assert _json(workdir / RUN / "result.json")["timesteps"] == N
    steps = [e["timesteps"] for e in _json(workdir / RUN / "evaluations.json")]
    assert steps == [256, 512]  # the evaluation cut off is run again, none twice


@pytest.mark.parametrize(("owner", "name"), [(RunFolder, "save_final"), (runs_module, "evaluate_agent")])
def test_ctrl_c_after_training_lets_the_run_finish(owner: Any, name: str, workdir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Decided: a run whose training is complete finishes its final save and evaluation (exit 0, all written)."""
    with monkeypatch.context() as m:
        _sigint_at(m, owner, name)
        assert entry(PPO) == 0
    result = _json(workdir / RUN / "result.json")
    assert result["timesteps"] == N and (workdir / RUN / "agent.zip").is_file()
    assert _json(workdir / "runs" / "results.json") == [result]


def test_ctrl_c_in_a_finishing_run_keeps_its_result_and_starts_no_other(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    two = [*PPO, "--seed", "0", "--seed", "1"]
    with monkeypatch.context() as m:
        _sigint_at(m, runs_module, "evaluate_agent")
        assert entry(two) == 130
    assert "stopped before run 2/2" in _err_lines(capsys)[-1]
    [first] = _json(workdir / "runs" / "results.json")
    assert first["seed"] == 0 and not (workdir / "runs" / "ppo" / "CartPole-v1_2").exists()

    assert entry(["--resume", *two]) == 0
    assert [r["seed"] for r in _json(workdir / "runs" / "results.json")] == [0, 1]


def test_a_second_ctrl_c_stops_at_once_and_the_last_checkpoint_stays_whole(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # two signals after the second checkpoint's agent file is written, before the rest of that checkpoint
    with monkeypatch.context() as m:
        _sigint_at(m, folder_module, "save_agent", call=2, signals=2, before=False)
        assert entry(PPO) == 130
    last = _err_lines(capsys)[-1]
    assert "stopped at once" in last and "continue with --resume" in last, last
    ckpt = workdir / RUN / "checkpoint"
    assert _json(ckpt / "state.json")["num_timesteps"] == 128  # the first checkpoint, whole
    assert not _temp_files(workdir)
    assert entry(["--resume", *PPO]) == 0
    assert _json(workdir / RUN / "result.json")["timesteps"] == N


def _start(args: list[str], cwd: Path, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.Popen([sys.executable, "-m", "rlrm.train_agent", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared (exit {proc.poll()})"


# far more steps than the test can take: the process is surely still training when it gets its signal
LONG = [*PPO[:6], "-n", "1000000", *PPO[8:]]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_to_a_training_process_and_a_second_owner_refused(sig: int, workdir: Path) -> None:
    proc = _start(LONG, workdir)
    try:
        _wait_for(workdir / RUN / "checkpoint" / "state.json", proc)
        # two --resume of one run at once: the second is refused while the first owns the folder
        second = _start(["--resume", *LONG], workdir)
        try:
            _, second_err = second.communicate(timeout=120)
        finally:
            if second.poll() is None:  # it trained instead (no lock)
                second.kill()
                second.wait()
        lines = [line for line in second_err.splitlines() if line.strip() and not line.startswith("[")]
        assert second.returncode == 2 and len(lines) == 1, second_err
        assert lines[0].startswith(f"{PROG}: error: run folder {RUN}: in use by another process (pid {proc.pid})")
        assert sorted(p.name for p in (workdir / RUN).parent.iterdir()) == ["CartPole-v1_1"]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "continue with --resume" in err and "Traceback" not in err
    assert 0 < _json(workdir / RUN / "checkpoint" / "state.json")["num_timesteps"] < 1_000_000
    RunFolder(workdir / RUN).lock().unlock()  # the folder is free again


def test_kill_9_frees_the_run_folder(workdir: Path) -> None:
    proc = _start(LONG, workdir)
    try:
        _wait_for(workdir / RUN / "checkpoint" / "state.json", proc)
        with pytest.raises(ConfigError, match="in use by another process"):
            RunFolder(workdir / RUN).lock()
    finally:
        proc.kill()
        proc.wait()
    RunFolder(workdir / RUN).lock().unlock()  # the kernel dropped the lock with the process


# --------------------------------------------------------------------------- #7 §2.3 resume keeps the history
def test_resume_appends_the_logs_and_continues_the_same_wandb_run(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = [*PPO, "--wandb", "--wandb-mode", "offline"]
    with monkeypatch.context() as m:
        _sigint_at(m, RunFolder, "save_checkpoint", call=2)
        assert entry(args) == 130
    run_dir = workdir / RUN
    before_rows = _monitor_rows(run_dir)
    assert before_rows > 0 and _progress_steps(run_dir) == [128, 256]
    [first] = find_run_dirs(workdir)
    wandb_id = _json(run_dir / "wandb.json")["run_id"]
    assert first.name.endswith(wandb_id)

    assert entry(["--resume", *args]) == 0
    assert _progress_steps(run_dir) == [128, 256, 384, 512]  # one file, one header, both segments
    assert (run_dir / "progress.csv").read_text().count("time/total_timesteps") == 1
    assert _monitor_rows(run_dir) > before_rows  # episodes before the resume kept, those after added
    assert sorted(p.name for p in (run_dir / "monitor").glob("env0*")) == ["env0.monitor.csv",
                                                                          "env0.part1.monitor.csv"]
    runs = find_run_dirs(workdir)
    # the same W&B run, resumed (a segment started in the same second as the first gets a "-1" suffix)
    assert len(runs) == 2 and all(wandb_id in r.name.split("-") for r in runs)


# --------------------------------------------------------------------------- #7 §2.2 Dict observations
class DictPoint(gym.Env):
    """A point on a line with a Dict observation (position, velocity): the smallest Dict-observation task."""

    observation_space = spaces.Dict({"pos": spaces.Box(-2, 2, (2,), np.float32),
                                     "vel": spaces.Box(-1, 1, (1,), np.float32)})
    action_space = spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        self.vel = np.zeros(1, np.float32)
        self.t = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self.vel = np.clip(self.vel + 0.1 * action, -1, 1).astype(np.float32)
        self.pos = np.clip(self.pos + self.vel, -2, 2).astype(np.float32)
        self.t += 1
        return self._obs(), -float(np.abs(self.pos).sum()), False, self.t >= 25, {}

    def _obs(self) -> dict[str, np.ndarray]:
        return {"pos": self.pos.copy(), "vel": self.vel.copy()}


DICT_ENV = "rlrm-test/DictPoint-v0"
if DICT_ENV not in gym.registry:
    gym.register(DICT_ENV, entry_point=DictPoint)
SAC_DICT = ["--env", DICT_ENV, "--algo", "sac", "--reward", "true", "-n", "160", "--checkpoint-freq", "80",
            "--eval-freq", "160", "--eval-episodes", "1", "--no-progress", "--params", "policy:MultiInputPolicy",
            "learning_starts:40", "batch_size:16", "buffer_size:300", "policy_kwargs:{net_arch: [16]}"]
SAC_RUN = Path("runs") / "sac" / f"{DICT_ENV.replace('/', '__')}_1"


def _leaves(buf: Any) -> dict[str, np.ndarray]:
    return {**{f"observations.{k}": v.copy() for k, v in buf.observations.items()},
            **{f"next_observations.{k}": v.copy() for k, v in buf.next_observations.items()},
            "actions": buf.actions.copy(), "rewards": buf.rewards.copy(), "pos": np.array(buf.pos)}


def _interrupt_sac_dict_run(monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """Run the Dict-observation SAC run, stopped by Ctrl-C after its first checkpoint; the buffer as saved."""
    saved: dict[str, np.ndarray] = {}
    original = RunFolder.save_checkpoint

    def save_then_interrupt(self: RunFolder, agent: Any, venv: Any) -> None:
        original(self, agent, venv)
        first = not saved
        saved.update(_leaves(agent.replay_buffer))  # the last save is the stop's own checkpoint
        if first:
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as m:
        m.setattr(RunFolder, "save_checkpoint", save_then_interrupt)
        assert entry(SAC_DICT) == 130
    return saved


def test_resume_restores_a_dict_observation_replay_buffer(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _interrupt_sac_dict_run(monkeypatch)
    assert int(saved["pos"]) > 0 and np.abs(saved["observations.pos"]).sum() > 0
    loaded: dict[str, np.ndarray] = {}
    original = RunFolder.load_checkpoint

    def load_and_look(self: RunFolder, venv: Any, algo: str) -> Any:
        agent = original(self, venv, algo)
        loaded.update(_leaves(agent.replay_buffer))
        return agent

    with monkeypatch.context() as m:
        m.setattr(RunFolder, "load_checkpoint", load_and_look)
        assert entry(["--resume", *SAC_DICT]) == 0
    assert loaded.keys() == saved.keys()
    for name in saved:  # dict observations came back as zeros before the fix
        np.testing.assert_array_equal(loaded[name], saved[name], err_msg=name)
    assert _json(workdir / SAC_RUN / "result.json")["timesteps"] == 160


def test_a_replay_buffer_of_another_shape_is_refused(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _interrupt_sac_dict_run(monkeypatch)
    capsys.readouterr()
    path = workdir / SAC_RUN / "checkpoint" / "replay_buffer.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["observations.vel"] = arrays["observations.vel"][:, :, :0]  # was skipped silently
    np.savez(path, **arrays)
    before = _snapshot(workdir / SAC_RUN)
    assert entry(["--resume", *SAC_DICT]) == 2
    line = _one_line_error(capsys)
    assert str(SAC_RUN / "checkpoint" / "replay_buffer.npz") in line
    assert "field 'observations.vel' has shape (300, 1, 0), expected (300, 1, 1)" in line
    assert "delete the run folder" in line
    assert _snapshot(workdir / SAC_RUN) == before


# --------------------------------------------------------------------------- #8.5, #8.10 damaged checkpoints
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _break_json(path: Path) -> None:
    path.write_text(path.read_text()[:-10])


@pytest.mark.parametrize(("damage", "file"), [
    (_truncate, "checkpoint/agent.zip"),
    (Path.unlink, "checkpoint/agent.zip"),  # deleted: used to restart from step 0 over the last checkpoint
    (_break_json, "evaluations.json"),
    (_break_json, "checkpoint/state.json"),
    (lambda p: shutil.rmtree(p), "checkpoint"),  # history, but no checkpoint at all
])
def test_a_damaged_run_folder_is_not_resumed(damage: Callable[[Path], None], file: str, interrupted: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    damage(interrupted / file)
    before = _snapshot(interrupted)
    assert entry(["--resume", *PPO]) == 2
    line = _one_line_error(capsys)
    assert str(RUN / file) in line or (file == "checkpoint" and str(RUN / "checkpoint" / "agent.zip") in line)
    assert f"delete the run folder {RUN}" in line and "without resuming" in line
    assert _snapshot(interrupted) == before  # nothing written, nothing half-made
    assert sorted(p.name for p in interrupted.parent.iterdir()) == ["CartPole-v1_1"]


def test_a_truncated_sac_replay_buffer_is_not_resumed(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _interrupt_sac_dict_run(monkeypatch)
    capsys.readouterr()
    path = workdir / SAC_RUN / "checkpoint" / "replay_buffer.npz"
    _truncate(path)
    before = _snapshot(workdir / SAC_RUN)
    assert entry(["--resume", *SAC_DICT]) == 2
    line = _one_line_error(capsys)
    assert str(SAC_RUN / "checkpoint" / "replay_buffer.npz") in line and "delete the run folder" in line
    assert _snapshot(workdir / SAC_RUN) == before


# --------------------------------------------------------------------------- #8.11 one output folder, two commands
def test_two_commands_into_one_output_dir_keep_both_results(workdir: Path) -> None:
    short = [*PPO[:6], "-n", "128", *PPO[8:]]
    procs = [_start([*short, "--seed", str(seed)], workdir) for seed in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    rows = _json(workdir / "runs" / "results.json")
    assert sorted(r["seed"] for r in rows) == [0, 1]
    assert sorted(Path(r["run_dir"]).name for r in rows) == ["CartPole-v1_1", "CartPole-v1_2"]


def test_results_json_merges_by_run(workdir: Path) -> None:
    short = [*PPO[:6], "-n", "128", *PPO[8:]]
    assert entry([*short, "--seed", "0"]) == 0
    assert entry([*short, "--seed", "1"]) == 0
    assert entry(["--resume", *short, "--seed", "0"]) == 0  # the same run again: its row, not a second one
    assert [r["seed"] for r in _json(workdir / "runs" / "results.json")] == [0, 1]


def test_a_broken_results_json_is_refused_before_training(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "runs").mkdir()
    (workdir / "runs" / "results.json").write_text("[{")
    assert entry(PPO) == 2
    assert "runs/results.json" in _one_line_error(capsys)
    assert not (workdir / "runs" / "ppo").exists()


# --------------------------------------------------------------------------- #8.14 a save that fails
def test_a_failing_checkpoint_save_names_the_cause_and_leaves_no_temp_file(workdir: Path) -> None:
    def small_files() -> None:  # like a full disk: writes past 40 KB fail (an agent file is ~50 KB)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    proc = _start(PPO, workdir, preexec_fn=small_files)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{PROG}: error: {RUN / 'checkpoint'}: cannot write (File too large)"), lines[0]
    assert not _temp_files(workdir / "runs")
    assert not (workdir / RUN / "checkpoint").exists()


# --------------------------------------------------------------------------- #8.15 a reward model that fails to load
def test_a_reward_model_that_does_not_load_makes_no_run_folder(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = collect(Task("CartPole-v1", "CartPole-v1"), 300, n_envs=2, seed=0, progress=False)
    model = rm.save(train_reward_model([ds], TrainConfig(epochs=1, patience=0), progress=False).model,
                    workdir / "model.safetensors")
    model.write_bytes(model.read_bytes()[:-64])  # the header intact, the weights cut short
    learned = [a for a in PPO if a not in ("--reward", "true")]
    assert entry([*learned, "--reward-model", str(model)]) == 2
    assert "model.safetensors" in _one_line_error(capsys)
    assert not (workdir / "runs").exists()


# --------------------------------------------------------------------------- the lock itself
def test_the_folder_lock_is_one_owner_at_a_time(tmp_path: Path) -> None:
    first = RunFolder(tmp_path).lock()
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        RunFolder(tmp_path).lock()
    first.unlock()
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: anyone can take it
    finally:
        os.close(fd)


def test_leftovers_of_a_killed_save_are_cleaned_when_the_folder_is_taken(tmp_path: Path) -> None:
    (tmp_path / ".result.json.1a2b.tmp").write_text("half")
    (tmp_path / ".checkpoint.1a2b.tmp").mkdir()
    old = tmp_path / ".checkpoint.3c4d.old"  # killed between the two renames of a checkpoint swap
    old.mkdir()
    (old / "state.json").write_text("{}")
    RunFolder(tmp_path).lock().unlock()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "checkpoint"]
    assert (tmp_path / "checkpoint" / "state.json").is_file()


def test_zip_check_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data", "{}")
    folder_module._check_zip(path)
    _truncate(path)
    with pytest.raises(ConfigError, match=r"agent\.zip: truncated or not a zip file"):
        folder_module._check_zip(path)
