"""Reward-model and reward-training defects (issues #7 §2.6-9, 13, §3 warnings; #8 cases 3, 8, 12, 16), each run the
way a user meets it: through ``rlrm.train_reward`` (exit 2, one line naming the file/field, no traceback, nothing
written) or the library call that has the defect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from safetensors.torch import save as st_save
from wandb_records import find_run_dirs, records

from rlrm import model as rm
from rlrm import train_reward
from rlrm.data.dataset import TransitionDataset
from rlrm.data.rollout import collect
from rlrm.model.network import CLIP, ModelConfig, RewardModel
from rlrm.tasks import Catalog, Task
from rlrm.train.checks import DataWarning, data_warnings
from rlrm.train.loop import TrainConfig, train_reward_model

PROG = "python -m rlrm.train_reward"
FAST = ["--epochs", "2", "--encoder", "16,16", "--no-progress"]
REPO = Path(__file__).resolve().parents[1]


def _error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{PROG}: error: ") and "Traceback" not in err
    return lines[0]


def _nothing_written(folder: Path) -> None:
    assert not folder.exists() or not [p for p in folder.rglob("*") if p.is_file()], list(folder.rglob("*"))


@pytest.fixture
def data(cartpole_ds: TransitionDataset, pendulum_ds: TransitionDataset, workdir: Path) -> Path:
    cartpole_ds.save(workdir / "data" / "CartPole-v1")
    pendulum_ds.save(workdir / "data" / "Pendulum-v1")
    return workdir / "data"


# --------------------------------------------------------------------------- #7 §2.6: bounded inputs
@pytest.fixture(scope="module")
def zero_action_pendulum(catalog: Catalog) -> TransitionDataset:
    """Pendulum-v1 driven by a policy that always pushes 0: the action feature is constant in the data."""
    return collect(catalog.task("Pendulum-v1"), 2000, policy=lambda obs: np.zeros((len(obs), 1), np.float32),
                   n_envs=4, seed=0, progress=False)


def test_a_feature_unseen_in_training_cannot_move_the_reward(zero_action_pendulum: TransitionDataset) -> None:
    """The old model said +39,120 at action 0.5 (true reward -0.77): a std floor of 1e-6, inputs never bounded."""
    ds = zero_action_pendulum
    model = train_reward_model([ds], TrainConfig(epochs=5), progress=False).model
    labels_range = float(ds.label.max() - ds.label.min())
    batch = ds.subset(slice(0, 200))
    fn = model.reward_fn("Pendulum-v1")
    seen = model.predict("Pendulum-v1", batch.obs, batch.action, batch.next_obs, batch.terminated)
    for a in (0.5, 2.0, -2.0, 1e6):
        action = np.full_like(batch.action, a)
        for f in (lambda *b: model.predict("Pendulum-v1", *b), fn):
            moved = np.abs(f(batch.obs, action, batch.next_obs, batch.terminated) - seen)
            assert moved.max() <= labels_range, (a, moved.max(), labels_range)
    # the constant action is ignored altogether; the observations still matter
    np.testing.assert_allclose(fn(batch.obs, np.full_like(batch.action, 2.0), batch.next_obs, batch.terminated),
                               seen, atol=1e-5)
    assert np.std(seen) > 0.1


def test_standardized_inputs_are_clipped_at_ten_std_in_both_paths(pendulum_ds: TransitionDataset) -> None:
    model = train_reward_model([pendulum_ds], TrainConfig(epochs=2), progress=False).model
    gid = model.tasks["Pendulum-v1"].group
    mean, std = (t.double().numpy() for t in model.normalization(gid))
    low, high = (t.double().numpy() for t in model.clip_bounds(gid))
    np.testing.assert_allclose(high[:7], (mean + CLIP * std)[:7], rtol=1e-6)
    np.testing.assert_allclose(low[:7], (mean - CLIP * std)[:7], rtol=1e-6, atol=1e-6)
    assert low[7] == high[7] == 0.0  # done: Pendulum never terminates, so the flag is constant in the data
    b = pendulum_ds.subset(slice(0, 16))
    fn = model.reward_fn("Pendulum-v1")
    edge = model.predict("Pendulum-v1", b.obs, b.action, (mean[4:7] + 10 * std[4:7] + 0 * b.next_obs).astype(
        np.float32), b.terminated)
    for scale in (1e3, 1e9):
        far = np.full_like(b.next_obs, scale)
        torch_out = model.predict("Pendulum-v1", b.obs, b.action, far, b.terminated)
        np.testing.assert_allclose(torch_out, edge, rtol=1e-5, atol=1e-4)  # no further than the clip's edge
        np.testing.assert_allclose(fn(b.obs, b.action, far, b.terminated), torch_out, rtol=1e-5, atol=1e-5)


def test_std_is_floored_relative_to_the_feature_scale(pendulum_ds: TransitionDataset) -> None:
    model = RewardModel(ModelConfig(encoder=[8], inputs=["obs"]))
    gid = model.add_task(pendulum_ds.task, pendulum_ds.obs_space, pendulum_ds.action_space).group
    model.set_normalization(gid, np.array([100.0, 0.0, 0.0]), np.zeros(3), np.array([99.0, 0.0, -1.0]),
                            np.array([101.0, 0.0, 1.0]))
    std = model.normalization(gid)[1]
    np.testing.assert_allclose(std.numpy(), [1e-3 * (100 + 2), 1e-6, 1e-3 * 2], rtol=1e-6)
    low, high = model.clip_bounds(gid)
    assert low[1] == high[1] == 0.0  # constant in the data: clipped to its value


# --------------------------------------------------------------------------- #7 §2.13: done is a default input
def test_done_is_a_default_input_and_fits_a_terminal_reward(cartpole_ds: TransitionDataset) -> None:
    """A labeler that pays -10 when CartPole terminates: from obs/action/next_obs alone the model must guess the
    termination boundary; with ``done`` it reads it."""
    assert ModelConfig().inputs == ["obs", "action", "next_obs", "done"]
    assert train_reward.build_parser().parse_args(["--data", "x"]).inputs is None  # None: the default, all inputs
    assert train_reward.ARCHITECTURE["inputs"] == "obs,action,next_obs,done"
    ds = cartpole_ds.with_labels(np.where(cartpole_ds.terminated, -10.0, 0.0), "pays at termination")
    r2 = {}
    for inputs in (["obs", "action", "next_obs"], ModelConfig().inputs):
        result = train_reward_model([ds], TrainConfig(epochs=60, lr=3e-3, seed=0),
                                    model_config=ModelConfig(encoder=[32, 32], inputs=inputs), progress=False)
        r2[len(inputs)] = result.metrics["CartPole-v1"]["r2"]
        fn, b = result.model.reward_fn("CartPole-v1"), ds.subset(slice(0, 64))
        np.testing.assert_allclose(fn(b.obs, b.action, b.next_obs, b.terminated),
                                   result.model.predict("CartPole-v1", b.obs, b.action, b.next_obs, b.terminated),
                                   rtol=1e-5, atol=1e-5)
    # held-out: with done the fit is near exact; without it the unexplained variance is 10x larger or more
    assert r2[4] >= 0.98 and 1 - r2[3] >= 10 * (1 - r2[4]), r2


def test_numpy_fast_path_covers_done(cartpole_ds: TransitionDataset, pendulum_ds: TransitionDataset) -> None:
    """The unrolled fill (no np.concatenate) serves the default inputs, done included, for the batches wrappers pass."""
    from rlrm.model import numpy_fn

    for ds in (cartpole_ds, pendulum_ds):
        model = RewardModel(ModelConfig(encoder=[16]))
        gid = model.add_task(ds.task, ds.obs_space, ds.action_space).group
        fill = numpy_fn._filler(model.groups[gid], 8, np.empty((8, model.groups[gid].dim)), np.dtype(np.float32))
        assert fill.__name__ == "fill3"
        b = ds.subset(slice(0, 8))
        assert fill(b.obs, b.action, b.next_obs, np.arange(8) % 2 == 0)
        assert not fill(b.obs, b.action, b.next_obs, (np.arange(8) % 2).tolist())  # lists: the general path


# --------------------------------------------------------------------------- #7 §2.8: --init and the architecture
@pytest.mark.parametrize("flag", [["--encoder", "16,16"], ["--inputs", "obs"], ["--activation", "tanh"],
                                  ["--layer-norm"]])
def test_init_refuses_architecture_flags(data: Path, workdir: Path, capsys: pytest.CaptureFixture,
                                         flag: list[str]) -> None:
    base = train_reward_model([TransitionDataset.load(data / "Pendulum-v1")], TrainConfig(epochs=1),
                              model_config=ModelConfig(encoder=[8]), progress=False).model
    rm.save(base, workdir / "base.safetensors")
    rc = train_reward.entry(["--data", "data", "--init", "base.safetensors", "--out", "models/rm.safetensors",
                             "--epochs", "1", "--no-progress", *flag])
    line = _error_line(capsys)
    assert rc == 2 and "--init" in line and "base.safetensors" in line and flag[0] in line
    _nothing_written(workdir / "models")


def _wandb_config(run_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rec in records(next(run_dir.glob("run-*.wandb"))):
        if rec.WhichOneof("record_type") == "config":
            out.update({item.key: json.loads(item.value_json) for item in rec.config.update})
        elif rec.WhichOneof("record_type") == "run":
            out.update({item.key: json.loads(item.value_json) for item in rec.run.config.update})
    return out


def test_init_logs_the_model_s_real_config(data: Path, workdir: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(workdir / "home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert train_reward.entry(["--data", "data/Pendulum-v1", "--out", "base/rm.safetensors", "--encoder", "8",
                               "--activation", "tanh", "--epochs", "1", "--no-progress"]) == 0
    rc = train_reward.entry(["--data", "data", "--init", "base/rm.safetensors", "--out", "models/rm.safetensors",
                             "--epochs", "1", "--no-progress", "--wandb", "--wandb-mode", "offline"])
    assert rc == 0, capsys.readouterr().err
    [run] = find_run_dirs(workdir / "models")
    config = _wandb_config(run)
    assert config["model"]["encoder"] == [8] and config["model"]["activation"] == "tanh", config
    assert rm.load("models/rm.safetensors").config.encoder == [8]


# --------------------------------------------------------------------------- #7 §3: warnings about the data
def test_data_warnings(catalog: Catalog, cartpole_ds: TransitionDataset, pendulum_ds: TransitionDataset) -> None:
    assert data_warnings([pendulum_ds]) == []  # varied labels; Pendulum never terminates; no reward_threshold
    [constant] = data_warnings([cartpole_ds])
    assert "'CartPole-v1'" in constant and "constant" in constant
    # the same transitions, every episode cut by a time limit instead: no termination in the data
    cut = replace(cartpole_ds, terminated=np.zeros_like(cartpole_ds.terminated),
                  truncated=cartpole_ds.terminated | cartpole_ds.truncated)
    lines = data_warnings([cut.with_labels(cut.obs[:, 0], "x")])
    assert len(lines) == 1 and "no transition in the data is terminated" in lines[0]
    assert all("\n" not in line for line in [*lines, constant])


def test_mountain_car_from_random_steps_warns_that_the_goal_was_never_reached(catalog: Catalog) -> None:
    task = catalog.task("MountainCarContinuous-v0")
    random = collect(task, 4000, n_envs=4, seed=0, progress=False)
    assert random.label.max() < 1.0  # no goal bonus in the data
    [line] = data_warnings([random])
    assert "MountainCarContinuous-v0" in line and "reward_threshold 90" in line and "never" in line
    # a policy that pumps energy reaches the goal (+100): nothing to warn about
    def pump(obs: np.ndarray) -> np.ndarray:
        return np.where(obs[:, 1:2] >= 0, 1.0, -1.0).astype(np.float32)

    reached = collect(task, 2000, policy=pump, n_envs=4, seed=0, progress=False)
    assert reached.label.max() > 90 and data_warnings([reached]) == []


def test_train_reward_shows_each_warning_as_one_line(data: Path, workdir: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert train_reward.entry(["--data", "data", "--out", "models/rm.safetensors", *FAST]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{PROG}: warning: task 'CartPole-v1': labels are constant (1): its learned reward is that "
                   "constant, so this task does not test reward learning"], err
    with pytest.warns(DataWarning, match="CartPole-v1"):  # the library warns; only the CLI prints
        train_reward.train_job(["data"], "models/second.safetensors", TrainConfig(epochs=1), progress=False)


# --------------------------------------------------------------------------- #8.3: hostile model files
def _hostile(path: Path, encoder: list[int], *, discrete: int | None = None, weights: list[int] | None = None) -> Path:
    """A valid safetensors file holding a tiny model's weights (``weights`` widths, default [8]) whose description
    asks for an encoder of ``encoder`` widths (and a Discrete observation space of ``discrete`` values)."""
    small = RewardModel(ModelConfig(encoder=weights or [8]))
    small.add_task(Task("Pendulum-v1", "Pendulum-v1"), spaces.Box(-1, 1, (3,)), spaces.Box(-2, 2, (1,)))
    # format 1 (no clip bounds), which every rlrm reads
    desc = {"format": "rlrm.reward_model", "format_version": 1, "rlrm_version": "0", **small.describe()}
    desc["config"]["encoder"] = encoder
    if discrete is not None:
        desc["groups"]["g0"]["obs_space"] = {"type": "Discrete", "n": discrete, "start": 0}
    tensors = {k: v.contiguous() for k, v in small.state_dict().items() if not k.startswith(("norm_low", "norm_high"))}
    path.write_bytes(st_save(tensors, metadata={"rlrm": json.dumps(desc)}))
    return path


@pytest.mark.parametrize("case, words", [
    ({"encoder": [20000, 20000]}, ["parameters", "100,000,000"]),
    ({"encoder": [10**6, 10**6]}, ["config.encoder", "1,000,000", "65,536"]),
    ({"encoder": [8], "discrete": 10**9}, ["Discrete", "1,000,000,000"]),
    ({"encoder": [16, 16], "weights": [16, 8]}, ["encoder.0.weight", "(8, 16)", "(16, 16)"]),
])
def test_hostile_model_file_is_refused_from_its_header(data: Path, workdir: Path, capsys: pytest.CaptureFixture,
                                                       case: dict[str, Any], words: list[str]) -> None:
    path = _hostile(workdir / "hostile.safetensors", **case)
    assert path.stat().st_size < 25_000
    rc = train_reward.entry(["--data", "data", "--init", "hostile.safetensors", "--out", "models/rm.safetensors",
                             "--epochs", "1", "--no-progress"])
    line = _error_line(capsys)
    assert rc == 2 and "hostile.safetensors" in line and all(w in line for w in words), line
    _nothing_written(workdir / "models")


def test_hostile_model_file_allocates_nothing_before_it_is_refused(workdir: Path) -> None:
    """Peak memory of a process that loads a 25 KB file asking for a 20000x20000 encoder (the old loader allocated
    1.8 GB before refusing it): below what importing torch takes plus 200 MB."""
    path = _hostile(workdir / "hostile.safetensors", [20000, 20000])
    code = ("import resource, sys\nfrom rlrm import model as rm\nbase = resource.getrusage(resource.RUSAGE_SELF)."
            "ru_maxrss\ntry:\n    rm.load(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                          timeout=120)
    name, grown_mb = proc.stdout.split()
    assert name == "ModelFileError" and int(grown_mb) < 200, proc.stdout + proc.stderr


def test_format_1_files_still_load(pendulum_ds: TransitionDataset, tmp_path: Path) -> None:
    """Files written before the clip bounds load with bounds mean -/+ CLIP std."""
    model = train_reward_model([pendulum_ds], TrainConfig(epochs=1), progress=False).model
    path = rm.save(model, tmp_path / "m.safetensors")
    desc = {**rm.read_description(path), "format_version": 1}
    tensors = {k: v for k, v in model.state_dict().items() if not k.startswith(("norm_low_", "norm_high_"))}
    old = tmp_path / "old.safetensors"
    old.write_bytes(st_save(tensors, metadata={"rlrm": json.dumps(desc)}))
    loaded = rm.load(old)
    gid = loaded.tasks["Pendulum-v1"].group
    mean, std = loaded.normalization(gid)
    torch.testing.assert_close(loaded.clip_bounds(gid)[1], mean + CLIP * std)
    b = pendulum_ds.subset(slice(0, 32))
    np.testing.assert_allclose(loaded.predict("Pendulum-v1", b.obs, b.action, b.next_obs, b.terminated),
                               model.predict("Pendulum-v1", b.obs, b.action, b.next_obs, b.terminated), atol=1e-5)


# --------------------------------------------------------------------------- #8.8: dataset vs env spaces
def test_dataset_whose_spaces_disagree_with_its_env(cartpole_ds: TransitionDataset, workdir: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    five = np.hstack([cartpole_ds.obs, cartpole_ds.obs[:, :1]])
    nxt = np.hstack([cartpole_ds.next_obs, cartpole_ds.next_obs[:, :1]])
    bad = TransitionDataset.from_arrays(cartpole_ds.task, spaces.Box(-np.inf, np.inf, (5,), np.float32),
                                        cartpole_ds.action_space, obs=five, action=cartpole_ds.action, next_obs=nxt,
                                        terminated=cartpole_ds.terminated, truncated=cartpole_ds.truncated,
                                        episode=cartpole_ds.episode, step=cartpole_ds.step, label=cartpole_ds.label)
    bad.save(workdir / "data" / "five")
    rc = train_reward.entry(["--data", "data", "--out", "models/rm.safetensors", *FAST])
    line = _error_line(capsys)
    assert rc == 2 and "five" in line and "observation space" in line and "(5,)" in line and "(4,)" in line, line
    _nothing_written(workdir / "models")


def test_dataset_of_a_module_env_needs_the_module_named(cartpole_ds: TransitionDataset, workdir: Path) -> None:
    """The space check creates each dataset's env; a ``module:EnvId`` env imports its module only when the user names
    it (--env-module), never because a dataset file says so."""
    (workdir / "tinyenvs.py").write_text("import gymnasium\ngymnasium.register('Tiny-v0', "
                                         "entry_point='gymnasium.envs.classic_control:CartPoleEnv')\n")
    replace(cartpole_ds, task=Task("tiny", "tinyenvs:Tiny-v0")).save(workdir / "data" / "tiny")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    run = [sys.executable, "-m", "rlrm.train_reward", "--data", "data", "--out", "models/rm.safetensors", *FAST]
    proc = subprocess.run(run, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--env-module tinyenvs" in lines[0], proc.stderr
    _nothing_written(workdir / "models")
    proc = subprocess.run([*run, "--env-module", "tinyenvs"], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert list(rm.load(workdir / "models" / "rm.safetensors").tasks) == ["tiny"]


# --------------------------------------------------------------------------- #8.12: unwritable --out
@pytest.fixture
def unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores modes: /sys refuses new files even to root)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    folder = Path("/sys")
    try:
        os.close(os.open(folder / "rlrm-write-test", os.O_CREAT | os.O_WRONLY))
        os.unlink(folder / "rlrm-write-test")
    except OSError:
        return folder
    pytest.skip("no unwritable folder on this machine")


def test_unwritable_out_fails_before_anything_long(data: Path, workdir: Path, unwritable: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = unwritable / "models" / "rm.safetensors"
    rc = train_reward.entry(["--data", "no_such_data", "--out", str(out), *FAST])  # checked before the data
    line = _error_line(capsys)
    assert rc == 2 and f"--out {out}" in line and str(unwritable) in line and ".tmp" not in line, line
    assert not (unwritable / "models").exists()
    (workdir / "file").write_text("x")  # a file where a folder is needed
    rc = train_reward.entry(["--data", "data", "--out", "file/rm.safetensors", *FAST])
    assert rc == 2 and "file" in _error_line(capsys) and (workdir / "file").read_text() == "x"


# --------------------------------------------------------------------------- #8.16: one metrics file per model
def test_two_models_in_one_folder_keep_their_metrics(data: Path, workdir: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert train_reward.entry(["--data", "data", "--out", "models/a.safetensors", *FAST]) == 0
    assert train_reward.entry(["--data", "data/Pendulum-v1", "--out", "models/b.safetensors", *FAST]) == 0
    a = json.loads((workdir / "models" / "a.metrics.json").read_text())
    b = json.loads((workdir / "models" / "b.metrics.json").read_text())
    assert set(a["tasks"]) == {"CartPole-v1", "Pendulum-v1"} and set(b["tasks"]) == {"Pendulum-v1"}
    assert a["model"] == "models/a.safetensors" and b["model"] == "models/b.safetensors"
    assert not (workdir / "models" / "metrics.json").exists()
    assert "models/b.metrics.json" in capsys.readouterr().out
