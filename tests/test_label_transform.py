"""The ``symlog`` label transform: heads fit ``sign(y) log(1 + |y|)``, so a rare large bonus does not drown the small
dense rewards around it (MountainCar's +100 goal over its -0.1 a^2 action cost); predictions, the NumPy fast path and
the model file all give rewards in label units."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlrm import model as rm
from rlrm.data.dataset import TransitionDataset
from rlrm.errors import ConfigError
from rlrm.model.network import symexp, symlog
from rlrm.rl.folder import FeedbackSpec
from rlrm.train.loop import TrainConfig, train_reward_model
from rlrm.train_agent import entry


def bonus_labels(ds: TransitionDataset) -> tuple[TransitionDataset, np.ndarray]:
    """Pendulum made like MountainCar: an action cost -0.1 a^2 everywhere, and +100 on the transitions that end an
    episode by termination, here where the pole comes near upright (a few percent of random transitions); returns
    the dataset (every transition an episode of its own) and the mask of those rows."""
    bonus = ds.next_obs[:, 0] > 0.97
    labels = -0.1 * ds.action[:, 0] ** 2 / 4.0 + 100.0 * bonus  # Pendulum's torque is in [-2, 2]
    made = TransitionDataset.from_arrays(ds.task, ds.obs_space, ds.action_space, obs=ds.obs, action=ds.action,
                                         next_obs=ds.next_obs, terminated=bonus, truncated=~bonus,
                                         episode=np.arange(len(ds)), step=np.zeros(len(ds), np.int32),
                                         env_reward=ds.env_reward,
                                         label=labels.astype(np.float32), label_source="test")
    return made, bonus


def test_symlog_inverts() -> None:
    y = np.array([-1e4, -100.0, -0.1, 0.0, 1e-3, 3.0, 100.0])
    np.testing.assert_allclose(symexp(symlog(y)), y, rtol=1e-12)


def test_symlog_fits_small_rewards_beside_a_rare_bonus(pendulum_20k: TransitionDataset, tmp_path: Path) -> None:
    ds, bonus = bonus_labels(pendulum_20k)
    assert 0.005 < bonus.mean() < 0.1
    fits = {}
    for transform in ("none", "symlog"):
        model = train_reward_model([ds], TrainConfig(epochs=10, seed=0, label_transform=transform),
                                   progress=False).model.eval()
        paid = model.predict(ds.task.name, ds.obs, ds.action, ds.next_obs, ds.terminated)
        fits[transform] = (np.corrcoef(paid[~bonus], ds.label[~bonus])[0, 1], paid[bonus].mean())
        if transform == "symlog":  # the fast path and the file give the same rewards, in label units
            assert model.tasks[ds.task.name].label_transform == "symlog"
            for dtype in ("float32", "float64"):
                fast = model.reward_fn(ds.task.name, dtype)(ds.obs, ds.action, ds.next_obs, ds.terminated)
                np.testing.assert_allclose(fast, paid, rtol=1e-4, atol=1e-4)
            rm.save(model, tmp_path / "m.safetensors")
            back = rm.load(tmp_path / "m.safetensors")
            assert back.tasks[ds.task.name].label_transform == "symlog"
            np.testing.assert_allclose(back.predict(ds.task.name, ds.obs, ds.action, ds.next_obs, ds.terminated),
                                       paid, rtol=1e-5, atol=1e-5)
    # both find the bonus; only symlog still sees the action cost beside it
    assert fits["none"][1] > 50 and fits["symlog"][1] > 50
    assert fits["symlog"][0] > 0.8 and fits["symlog"][0] > fits["none"][0] + 0.3, fits


def test_refusals(pendulum_ds: TransitionDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="label_transform 'log'"):
        TrainConfig(label_transform="log")
    with pytest.raises(ConfigError, match="only for scalar labels"):
        FeedbackSpec("preferences", budget=10, label_transform="symlog")
    code = entry(["--task", "Pendulum-v1", "-n", "256", "--label-transform", "symlog", "--output-dir",
                  str(tmp_path / "a")])
    assert code == 2 and "only with --feedback" in capsys.readouterr().err
    from rlrm.train_reward import entry as train_reward

    data = pendulum_ds.save(tmp_path / "data")
    code = train_reward(["--data", str(data), "--ensemble", "2", "--label-transform", "symlog", "--out",
                         str(tmp_path / "e.safetensors"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not with --ensemble" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e.safetensors").exists()


def test_the_loop_fits_symlog_labels(tmp_path: Path) -> None:
    assert entry(["--task", "Pendulum-v1", "--algo", "ppo", "-n", "2048", "--params", "n_steps:256", "n_envs:4",
                  "n_epochs:1", "--eval-freq", "2048", "--eval-episodes", "1", "--feedback", "labels",
                  "--budget", "100", "--feedback-every", "1024", "--feedback-epochs", "3", "--label-transform",
                  "symlog", "--no-progress", "--output-dir", str(tmp_path)]) == 0
    (run,) = (tmp_path / "ppo").glob("Pendulum-v1_*")
    fb = json.loads((run / "feedback" / "feedback.json").read_text())
    assert fb["spec"]["label_transform"] == "symlog"
    model = rm.load(run / "feedback" / "models" / f"reward_model_v{fb['version']}.safetensors")
    assert model.tasks["Pendulum-v1"].label_transform == "symlog"
    ds = TransitionDataset.load(run / "feedback" / "labels")
    # the label scale is fit in symlog units (re-estimated from every label before the retraining)
    assert fb["history"][-1]["label_scale"]["std"] == pytest.approx(float(np.std(symlog(ds.label.astype(float)))),
                                                                    rel=1e-4)
