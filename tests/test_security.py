"""Hostile files, run the way a user meets them (the CLIs in a subprocess): an agent .zip whose pickled entries hold
a payload, a .pth that is more than tensors, and a run folder whose config.json names a module of the working
directory. Nothing planted may run unless the user opts in on the command line."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from rlrm.evaluate import entry as evaluate_entry
from rlrm.tasks import Task
from rlrm.train_agent import entry as train_entry

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"

CARTPOLE = Task("CartPole-v1", "CartPole-v1")
# rlrm's own schedule (lin_) makes SB3 pickle learning_rate and clip_range: entries rebuilt from the run's config
TRAIN = ["--env", "CartPole-v1", "--reward", "true", "-n", "256", "--n-envs", "2", "--eval-episodes", "2",
         "--checkpoint-freq", "128", "--no-progress", "--params", "n_steps:64", "batch_size:64",
         "learning_rate:lin_0.001", "clip_range:lin_0.2"]


class Payload:
    """Unpickling this runs code: it writes ``marker`` (what a planted payload in an agent file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def _run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", f"rlrm.{module}", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _evaluate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m rlrm.evaluate`` in-process (its ``entry``), as a completed process (what the subprocess gives)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.chdir(cwd)
        rc = evaluate_entry(list(args))
    return subprocess.CompletedProcess(["evaluate", *args], rc, out.getvalue(), err.getvalue())


def _one_line_error(proc: subprocess.CompletedProcess[str], module: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m rlrm.{module}: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _pickled_keys(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        data = json.loads(zf.read("data"))
    return [k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v]


def _rewrite(path: Path, edit_data: Any = None, members: dict[str, bytes] | None = None) -> None:
    """Rewrite an SB3 zip with its ``data`` JSON edited and/or members replaced (the rest copied as they are)."""
    with zipfile.ZipFile(path) as zf:
        contents = {name: zf.read(name) for name in zf.namelist()}
    if edit_data is not None:
        data = json.loads(contents["data"])
        edit_data(data)
        contents["data"] = json.dumps(data, indent=4).encode()
    contents.update(members or {})
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in contents.items():
            zf.writestr(name, blob)


def plant(path: Path, marker: Path, keys: list[str] | None = None, **plain: Any) -> None:
    """Replace the pickle of each of ``keys`` (default: every pickled entry) by the payload, keeping the readable
    description SB3 writes beside it, so the file looks as before; ``plain`` sets plain JSON values."""
    blob = base64.b64encode(cloudpickle.dumps(Payload(marker))).decode()

    def edit(data: dict[str, Any]) -> None:
        data.update(plain)
        for key in keys if keys is not None else _pickled_keys(path):
            data[key][":serialized:"] = blob

    _rewrite(path, edit)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished true-reward PPO run on CartPole-v1 with checkpoints (``runs/ppo/CartPole-v1_1``)."""
    root = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert train_entry(TRAIN) == 0
    run = root / "runs" / "ppo" / "CartPole-v1_1"
    assert {"learning_rate", "clip_range", "policy_class", "observation_space"} <= set(_pickled_keys(run / "agent.zip"))
    return root


@pytest.fixture
def work(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained working folder (runs/ inside) for one test to damage."""
    shutil.copytree(trained, tmp_path / "w")
    return tmp_path / "w"


# --------------------------------------------------------------------------- agent files: evaluate
def test_evaluate_never_unpickles_a_run_agent_file(work: Path) -> None:
    marker = work / "pwned.txt"
    agent = work / "runs" / "ppo" / "CartPole-v1_1" / "agent.zip"
    plant(agent, marker)  # every pickled entry: policy class, spaces, schedules, buffers
    proc = _run("evaluate", "--agent", str(agent), "--episodes", "2", cwd=work)
    assert proc.returncode == 0, proc.stderr  # rebuilt from the run's config and the env: nothing to unpickle
    assert "CartPole-v1" in proc.stdout
    assert not marker.exists()


def test_trust_agent_file_loads_as_sb3_does(work: Path) -> None:
    # the same kind of file, with the payload where SB3 tolerates its result (None): the opt-in unpickles it
    marker = work / "pwned.txt"
    agent = work / "runs" / "ppo" / "CartPole-v1_1" / "agent.zip"
    plant(agent, marker, ["ep_info_buffer"])
    proc = _evaluate("--agent", str(agent), "--episodes", "2", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    proc = _evaluate("--agent", str(agent), "--episodes", "2", "--trust-agent-file", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text() == "payload ran"  # the payload is real: only the opt-in runs it


def test_an_entry_rlrm_cannot_rebuild_needs_the_opt_in(work: Path, tmp_path: Path) -> None:
    marker = work / "pwned.txt"
    agent = tmp_path / "elsewhere" / "agent.zip"  # no run folder around it
    agent.parent.mkdir()
    shutil.copy(work / "runs" / "ppo" / "CartPole-v1_1" / "agent.zip", agent)
    plant(agent, marker, ["sneaky"], sneaky={":type:": "<class 'dict'>"})  # a pickled entry SB3 does not write
    line = _one_line_error(_evaluate("--agent", str(agent), "--task", "CartPole-v1", cwd=work), "evaluate")
    assert f"--agent {agent}: " in line and "'sneaky'" in line and "cannot rebuild" in line
    assert "--trust-agent-file" in line and "runs any code" in line
    assert not marker.exists()


def test_a_plain_sb3_zip_loads_when_every_pickled_entry_is_rebuilt(tmp_path: Path) -> None:
    # SB3's defaults: no run config needed; a non-default network needs the opt-in (rlrm cannot rebuild it)
    PPO("MlpPolicy", DummyVecEnv([CARTPOLE.make_env]), n_steps=32, batch_size=32, device="cpu").save(
        tmp_path / "plain.zip")
    proc = _evaluate("--agent", "plain.zip", "--task", "CartPole-v1", "--episodes", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    PPO("MlpPolicy", DummyVecEnv([CARTPOLE.make_env]), n_steps=32, batch_size=32, device="cpu",
        policy_kwargs={"activation_fn": torch.nn.ReLU}).save(tmp_path / "relu.zip")
    proc = _evaluate("--agent", "relu.zip", "--task", "CartPole-v1", "--episodes", "2", cwd=tmp_path)
    line = _one_line_error(proc, "evaluate")
    assert "'policy_kwargs'" in line and "ReLU" in line and "--trust-agent-file" in line
    proc = _evaluate("--agent", "relu.zip", "--task", "CartPole-v1", "--episodes", "2", "--trust-agent-file",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_weights_that_are_more_than_tensors_are_refused_even_when_trusted(work: Path) -> None:
    # SB3 reads every .pth with torch.load(weights_only=True): a pickled object in one is refused, never run
    marker = work / "pwned.txt"
    agent = work / "runs" / "ppo" / "CartPole-v1_1" / "agent.zip"
    hostile = work / "hostile.pth"
    torch.save({"mlp_extractor.policy_net.0.weight": Payload(marker)}, hostile)
    _rewrite(agent, members={"policy.pth": hostile.read_bytes()})
    for extra in ([], ["--trust-agent-file"]):
        line = _one_line_error(_evaluate("--agent", str(agent), *extra, cwd=work), "evaluate")
        assert str(agent) in line and "more than tensors" in line
    assert not marker.exists()


# --------------------------------------------------------------------------- agent files: collect, resume
def test_collect_never_unpickles_its_policy_agent(work: Path) -> None:
    marker = work / "pwned.txt"
    agent = work / "runs" / "ppo" / "CartPole-v1_1" / "agent.zip"
    plant(agent, marker)
    proc = _run("collect", "--task", "CartPole-v1", "--steps", "200", "--n-envs", "2", "--no-progress",
                "--policy", f"mixture:{agent}:0.1", "--out", "data", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert (work / "data" / "CartPole-v1").is_dir()
    assert not marker.exists()

    plant(agent, marker, ["sneaky"], sneaky={":type:": "<class 'dict'>"})  # a pickled entry SB3 does not write
    proc = _run("collect", "--task", "CartPole-v1", "--steps", "200", "--no-progress", "--policy", str(agent),
                "--out", "data2", cwd=work)
    line = _one_line_error(proc, "collect")
    assert "'sneaky'" in line and "--trust-agent-file" in line
    assert not (work / "data2").exists() and not marker.exists()


def test_resume_never_unpickles_its_checkpoint(work: Path) -> None:
    run = work / "runs" / "ppo" / "CartPole-v1_1"
    marker = work / "pwned.txt"
    (run / "result.json").unlink()  # an unfinished run: --resume loads its checkpoint
    plant(run / "checkpoint" / "agent.zip", marker, num_timesteps=128)  # and trains from step 128 again
    proc = _run("train_agent", *TRAIN, "--resume", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "result.json").read_text())["timesteps"] == 256
    assert not marker.exists()


# --------------------------------------------------------------------------- modules named by files
PWNMOD = "open('pwnmod_imported.txt', 'w').write('pwnmod ran')\n"


def test_a_run_config_cannot_make_evaluate_import_a_module(work: Path) -> None:
    (work / "pwnmod.py").write_text(PWNMOD)  # in the working directory, as sys.path[0] of python -m
    run = work / "runs" / "ppo" / "CartPole-v1_1"
    cfg = json.loads((run / "config.json").read_text())
    cfg["task"]["env_id"] = "pwnmod:CartPole-v1"
    (run / "config.json").write_text(json.dumps(cfg))
    marker = work / "pwnmod_imported.txt"

    line = _one_line_error(_run("evaluate", "--agent", str(run / "agent.zip"), cwd=work), "evaluate")
    assert str(run / "config.json") in line and "task.env_id" in line and "--env-module pwnmod" in line
    assert not marker.exists()
    # collect --policy reads the same config.json
    proc = _run("collect", "--task", "CartPole-v1", "--steps", "100", "--no-progress", "--policy",
                str(run / "agent.zip"), "--out", "data", cwd=work)
    assert "--env-module pwnmod" in _one_line_error(proc, "collect")
    assert not marker.exists() and not (work / "data").exists()

    # named on the command line: the user's choice
    proc = _run("evaluate", "--agent", str(run / "agent.zip"), "--episodes", "1", "--env-module", "pwnmod", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text() == "pwnmod ran"


def test_a_tasks_file_cannot_make_collect_import_a_module_but_a_typed_id_can(tmp_path: Path) -> None:
    (tmp_path / "pwnmod.py").write_text(PWNMOD)
    (tmp_path / "tasks.yaml").write_text("tasks:\n  pw: {env_id: 'pwnmod:CartPole-v1'}\n")
    marker = tmp_path / "pwnmod_imported.txt"
    common = ["--steps", "100", "--n-envs", "2", "--no-progress"]
    proc = _run("collect", "--tasks-file", "tasks.yaml", "--task", "pw", *common, "--out", "d1", cwd=tmp_path)
    line = _one_line_error(proc, "collect")
    assert "'pwnmod:CartPole-v1'" in line and "--env-module pwnmod" in line
    assert not marker.exists() and not (tmp_path / "d1").exists()

    proc = _run("collect", "--task", "pwnmod:CartPole-v1", *common, "--out", "d2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # typed as --task module:EnvId: named on the command line
    assert marker.exists()
    marker.unlink()
    proc = _run("collect", "--tasks-file", "tasks.yaml", "--task", "pw", "--env-module", "pwnmod", *common,
                "--out", "d3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()
