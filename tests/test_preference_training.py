"""Bradley-Terry training on segment preferences, alone and beside scalar labels, in one multi-task model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rlrm import metrics
from rlrm import model as rm
from rlrm.data import labels
from rlrm.data.dataset import TransitionDataset
from rlrm.data.teachers import make_preferences
from rlrm.errors import ConfigError
from rlrm.model.network import ModelConfig
from rlrm.tasks import Task
from rlrm.train import TrainConfig, train_reward_model

W = np.array([1.0, -1.0, 0.2])


def linear(obs, action, next_obs, done) -> np.ndarray:
    """A known reward, linear in the next observation and the action."""
    return next_obs @ W + 0.5 * action[:, 0]


def _as(ds: TransitionDataset, name: str, fn=None) -> TransitionDataset:
    ds = replace(ds, task=Task(name, "Pendulum-v1"))
    if fn is None:
        return ds
    return labels.label_with(ds, lambda d: fn(d.obs, d.action, d.next_obs, d.terminated).astype(np.float64),
                             f"python:test:{name}")


@pytest.fixture(scope="module")
def linear_ds(pendulum_20k: TransitionDataset) -> TransitionDataset:
    return _as(pendulum_20k.subset(slice(0, 10_000)), "Pendulum-v1/linear", linear)


def test_bradley_terry_recovers_a_known_linear_reward(linear_ds):
    prefs = make_preferences(linear_ds, linear_ds.label, 1000, 10, "oracle", seed=0)
    result = train_reward_model([], TrainConfig(epochs=40, patience=10), preferences=[(prefs, linear_ds)],
                                model_config=ModelConfig(inputs=["action", "next_obs"]), progress=False)
    fn = result.model.reward_fn("Pendulum-v1/linear")
    d = linear_ds
    assert metrics.epic_distance(fn, linear, d.obs, d.action, d.next_obs, d.terminated) < 0.05
    m = result.metrics["Pendulum-v1/linear"]
    assert m["feedback"] == "preferences" and m["pref_acc"] > 0.9 and m["n_pairs_val"] > 0
    assert np.isnan(m["r2"])  # a reward known up to shift and scale has no r2 against the labels


def test_preference_reward_is_standardized_and_saved(linear_ds, tmp_path):
    prefs = make_preferences(linear_ds, linear_ds.label, 200, 10, "oracle", seed=1)
    model = train_reward_model([], TrainConfig(epochs=3, patience=0), preferences=[(prefs, linear_ds)],
                               model_config=ModelConfig(encoder=[32, 32]), progress=False).model
    val = set(model.meta["training"]["validation_episodes"]["Pendulum-v1/linear"])
    train = linear_ds.subset(~np.isin(linear_ds.episode, list(val)))
    pred = model.predict("Pendulum-v1/linear", train.obs, train.action, train.next_obs, train.terminated)
    assert abs(pred.mean()) < 1e-3 and abs(pred.std() - 1) < 1e-3
    loaded = rm.load(rm.save(model, tmp_path / "m.safetensors"))
    assert np.allclose(loaded.predict("Pendulum-v1/linear", train.obs, train.action, train.next_obs,
                                      train.terminated), pred, atol=1e-5)
    assert "standardized" in loaded.head_info("Pendulum-v1/linear").info


def test_validation_pairs_never_touch_training_episodes(linear_ds):
    from rlrm.model.network import RewardModel
    from rlrm.train import bradley_terry as bt

    prefs = make_preferences(linear_ds, linear_ds.label, 300, 10, "oracle", seed=2)
    model = RewardModel(ModelConfig(encoder=[16]))
    model.add_task(linear_ds.task, linear_ds.obs_space, linear_ds.action_space)
    val_eps = np.unique(linear_ds.episode)[:5]
    pd = bt.prepare(model, prefs, linear_ds, val_eps, 32)
    train_rows = np.concatenate([pd.train[0].numpy().ravel(), pd.train[1].numpy().ravel()])
    assert not np.isin(linear_ds.episode[train_rows], val_eps).any()
    assert pd.n_val > 0 and pd.n_train + pd.n_val == len(prefs)


def test_labels_and_preferences_share_one_encoder(pendulum_20k):
    labeled = _as(pendulum_20k.subset(slice(0, 5000)), "Pendulum-v1/labels", linear)
    pref_ds = _as(pendulum_20k.subset(slice(5000, 10_000)), "Pendulum-v1/prefs", lambda o, a, n, d: -linear(o, a, n, d))
    both_ds = _as(pendulum_20k.subset(slice(10_000, 15_000)), "Pendulum-v1/both", linear)
    prefs = make_preferences(pref_ds, pref_ds.label, 300, 10, "oracle", seed=3)
    both = make_preferences(both_ds, both_ds.label, 100, 10, "oracle", seed=4)
    result = train_reward_model([labeled, both_ds], TrainConfig(epochs=4, patience=0),
                                preferences=[(prefs, pref_ds), (both, both_ds)],
                                model_config=ModelConfig(encoder=[32, 32]), progress=False)
    m = result.metrics
    assert m["Pendulum-v1/labels"]["r2"] > 0.8
    assert m["Pendulum-v1/prefs"]["feedback"] == "preferences" and m["Pendulum-v1/prefs"]["pref_acc"] > 0.8
    assert m["Pendulum-v1/both"]["feedback"] == "labels+preferences" and np.isfinite(m["Pendulum-v1/both"]["r2"])
    assert len({h.group for h in result.model.tasks.values()}) == 1  # one stem, one encoder
    assert result.model.head_info("Pendulum-v1/both").label_std > 0  # labels set its scale, not standardization


def test_two_preference_sets_for_one_task_are_refused(linear_ds):
    prefs = make_preferences(linear_ds, linear_ds.label, 50, 5, "oracle", seed=0)
    with pytest.raises(ConfigError, match="two preference sets"):
        train_reward_model([], TrainConfig(epochs=1), preferences=[(prefs, linear_ds), (prefs, linear_ds)],
                           progress=False)
