"""rlrm.train: learning quality, determinism, multi-task training, few-shot heads, the job's metrics.json."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlrm import model as rm
from rlrm.data.dataset import TransitionDataset
from rlrm.data.rollout import collect
from rlrm.errors import ConfigError
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.train.heldout import evaluate_model
from rlrm.train.job import train_job
from rlrm.train.loop import TrainConfig, TrainResult, train_reward_model

SMALL = ModelConfig(encoder=[16, 16])
METRIC_KEYS = {"n_train", "n_val", "mse", "r2", "spearman", "ranking_acc"}


def _same_weights(a: RewardModel, b: RewardModel, prefix: str = "") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if k.startswith(prefix)]
    assert keys, f"no weights under {prefix!r}"
    return all(k in sb and torch.equal(sa[k], sb[k]) for k in keys)


@pytest.fixture(scope="module")
def pendulum_result(pendulum_20k: TransitionDataset) -> TrainResult:
    return train_reward_model([pendulum_20k], TrainConfig(epochs=20), progress=False)


# --------------------------------------------------------------------------- quality (a product requirement)
def test_pendulum_oracle_reward_is_learned(pendulum_result: TrainResult, pendulum_20k: TransitionDataset) -> None:
    m = pendulum_result.metrics["Pendulum-v1"]
    assert m["n_train"] + m["n_val"] == 20_000
    assert 1000 <= m["n_val"] <= 3000  # ~10% of the 100 episodes
    assert m["r2"] >= 0.97, m
    assert m["spearman"] >= 0.97, m
    assert pendulum_result.best_epoch >= 1 and len(pendulum_result.history) <= 20


def test_pendulum_model_generalizes_to_freshly_collected_episodes(pendulum_result: TrainResult, catalog) -> None:
    fresh = collect(catalog.task("Pendulum-v1"), 2000, n_envs=4, seed=12345, progress=False)
    m = evaluate_model(pendulum_result.model, [fresh])["Pendulum-v1"]
    assert m["n"] == 2000 and m["r2"] >= 0.97, m
    assert m["ranking_acc"] >= 0.9, m


# --------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_weights(cartpole_ds: TransitionDataset, pendulum_ds: TransitionDataset) -> None:
    cfg = TrainConfig(epochs=3, batch_size=64, seed=5, patience=0)
    a, b = (train_reward_model([cartpole_ds, pendulum_ds], cfg, model_config=SMALL, progress=False) for _ in range(2))
    assert _same_weights(a.model, b.model) and _same_weights(b.model, a.model)
    assert a.history == b.history
    assert json.dumps(a.metrics, sort_keys=True) == json.dumps(b.metrics, sort_keys=True)
    c = train_reward_model([cartpole_ds, pendulum_ds], TrainConfig(epochs=3, batch_size=64, seed=6, patience=0),
                           model_config=SMALL, progress=False)
    assert not _same_weights(a.model, c.model)


# --------------------------------------------------------------------------- multi-task
def test_multi_task_training_reports_every_task(cartpole_ds: TransitionDataset, pendulum_ds: TransitionDataset) -> None:
    result = train_reward_model([cartpole_ds, pendulum_ds], TrainConfig(epochs=3, patience=0), model_config=SMALL,
                                progress=False)
    assert set(result.metrics) == {"CartPole-v1", "Pendulum-v1"}
    for name, ds in (("CartPole-v1", cartpole_ds), ("Pendulum-v1", pendulum_ds)):
        m = result.metrics[name]
        assert set(m) >= METRIC_KEYS
        assert m["n_train"] + m["n_val"] == len(ds) and m["n_val"] > 0
        assert math.isfinite(m["mse"])
    assert math.isnan(result.metrics["CartPole-v1"]["r2"])  # constant labels: R² undefined, mse tells the fit
    assert result.metrics["CartPole-v1"]["mse"] == 0.0  # constant labels are predicted exactly (below)
    assert len(result.history) == 3
    for epoch, row in enumerate(result.history, 1):
        assert row["epoch"] == epoch
        assert {"train/loss", "val/loss", "val/Pendulum-v1/loss"} <= set(row)
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]
    assert result.model.meta["training"]["epochs"] == 3  # the config is recorded with the model
    assert set(result.model.meta["metrics"]) == {"CartPole-v1", "Pendulum-v1"}


def test_constant_label_tasks_stay_out_of_the_loss(cartpole_ds: TransitionDataset,
                                                  pendulum_ds: TransitionDataset) -> None:
    """CartPole's labels are constant: its head is never used (label_std 0), so it takes no share of the batches and
    no part in early stopping, and still gets a head and held-out metrics."""
    result = train_reward_model([cartpole_ds, pendulum_ds], TrainConfig(epochs=3, patience=0), model_config=SMALL,
                                progress=False)
    for row in result.history:
        assert "val/CartPole-v1/loss" not in row
        assert row["val/loss"] == row["val/Pendulum-v1/loss"]
    assert result.model.meta["training"]["constant_labels"] == ["CartPole-v1"]
    assert set(result.metrics) == {"CartPole-v1", "Pendulum-v1"} and result.metrics["CartPole-v1"]["mse"] == 0.0
    alone = train_reward_model([cartpole_ds], TrainConfig(epochs=3), model_config=SMALL, progress=False)
    assert alone.history == [] and alone.best_epoch == 0  # nothing to fit: the head predicts the mean exactly
    assert alone.metrics["CartPole-v1"]["mse"] == 0.0


def test_validation_split_depends_on_task_name_and_seed_only(pendulum_ds: TransitionDataset,
                                                             acrobot_ds: TransitionDataset, tmp_path: Path) -> None:
    """Adding a task that sorts earlier (Acrobot before Pendulum) leaves Pendulum's held-out episodes where they
    were; they are stored per task in the model file."""
    cfg = TrainConfig(epochs=1, seed=3)
    alone = train_reward_model([pendulum_ds], cfg, model_config=SMALL, progress=False)
    both = train_reward_model([acrobot_ds, pendulum_ds], cfg, model_config=SMALL, progress=False)
    stored = [rm.load(rm.save(r.model, tmp_path / f"{i}.safetensors")).meta["training"]["validation_episodes"]
              for i, r in enumerate((alone, both))]
    assert stored[0]["Pendulum-v1"] == stored[1]["Pendulum-v1"] and stored[0]["Pendulum-v1"]
    assert set(stored[1]) == {"Acrobot-v1", "Pendulum-v1"}
    assert alone.metrics["Pendulum-v1"]["n_val"] == both.metrics["Pendulum-v1"]["n_val"]
    other_seed = train_reward_model([pendulum_ds], TrainConfig(epochs=1, seed=4), model_config=SMALL, progress=False)
    assert other_seed.model.meta["training"]["validation_episodes"]["Pendulum-v1"] != stored[0]["Pendulum-v1"]
    # extending a model keeps a known task's validation episodes, whatever the seed
    extended = train_reward_model([acrobot_ds, pendulum_ds], TrainConfig(epochs=1, seed=4),
                                  model=copy.deepcopy(alone.model), progress=False)
    assert extended.model.meta["training"]["validation_episodes"]["Pendulum-v1"] == stored[0]["Pendulum-v1"]


def test_proportional_sampling(cartpole_ds: TransitionDataset, pendulum_ds: TransitionDataset) -> None:
    small = pendulum_ds.subset(pendulum_ds.episode < 4)
    result = train_reward_model([cartpole_ds, small], TrainConfig(epochs=1, sampling="proportional"),
                                model_config=SMALL, progress=False)
    assert set(result.metrics) == {"CartPole-v1", "Pendulum-v1"}


# --------------------------------------------------------------------------- few-shot
def test_few_shot_head_leaves_the_encoder_bit_identical(pendulum_result: TrainResult,
                                                        pendulum_20k: TransitionDataset,
                                                        acrobot_ds: TransitionDataset) -> None:
    trained = copy.deepcopy(pendulum_result.model)
    batch = pendulum_20k.subset(slice(0, 300))
    before = trained.predict("Pendulum-v1", batch.obs, batch.action, batch.next_obs, batch.terminated)
    result = train_reward_model([acrobot_ds], TrainConfig(freeze_encoder=True, epochs=3), model=trained,
                                progress=False)
    extended = result.model
    assert list(extended.tasks) == ["Pendulum-v1", "Acrobot-v1"]
    # everything the Pendulum model had (encoder, its stem, head and normalization) is bit-identical
    original = pendulum_result.model.state_dict()
    for k, v in original.items():
        assert torch.equal(extended.state_dict()[k], v), k
    assert _same_weights(pendulum_result.model, extended, "encoder.")
    np.testing.assert_array_equal(
        extended.predict("Pendulum-v1", batch.obs, batch.action, batch.next_obs, batch.terminated), before)
    m = result.metrics["Acrobot-v1"]
    assert set(m) >= METRIC_KEYS and math.isfinite(m["mse"])
    assert set(result.metrics) == {"Acrobot-v1"}
    assert all(p.requires_grad for p in extended.parameters())  # nothing is left frozen afterwards


def test_extending_without_freezing_trains_the_encoder(pendulum_result: TrainResult,
                                                       acrobot_ds: TransitionDataset) -> None:
    trained = copy.deepcopy(pendulum_result.model)
    varied = acrobot_ds.with_labels(acrobot_ds.obs[:, 0], "cos(theta1)")  # Acrobot's own labels are a constant -1
    result = train_reward_model([varied], TrainConfig(epochs=1, patience=0), model=trained, progress=False)
    assert "Acrobot-v1" in result.model.tasks
    assert not _same_weights(pendulum_result.model, result.model, "encoder.")


def test_freezing_with_nothing_new_to_train(pendulum_result: TrainResult, pendulum_ds: TransitionDataset) -> None:
    with pytest.raises(ConfigError, match="nothing to train"):
        train_reward_model([pendulum_ds], TrainConfig(freeze_encoder=True, epochs=1),
                           model=copy.deepcopy(pendulum_result.model), progress=False)


# --------------------------------------------------------------------------- bad configuration
def test_no_datasets_and_duplicate_tasks(cartpole_ds: TransitionDataset) -> None:
    with pytest.raises(ConfigError, match="no datasets"):
        train_reward_model([], TrainConfig(epochs=1), progress=False)
    with pytest.raises(ConfigError, match="CartPole-v1"):
        train_reward_model([cartpole_ds, cartpole_ds], TrainConfig(epochs=1), progress=False)


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"val_frac": 1.0},
                                    {"val_frac": -0.1}, {"sampling": "uniform"}])
def test_bad_train_config(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


# --------------------------------------------------------------------------- the job: files on disk
@pytest.fixture
def data_dir(cartpole_ds: TransitionDataset, pendulum_ds: TransitionDataset, tmp_path: Path) -> Path:
    cartpole_ds.save(tmp_path / "data" / "CartPole-v1")
    pendulum_ds.save(tmp_path / "data" / "Pendulum-v1")
    return tmp_path / "data"


def test_job_writes_model_and_metrics_json(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "rm.safetensors"
    result = train_job([data_dir], out, TrainConfig(epochs=2, patience=0), SMALL, progress=False)
    report = json.loads((out.parent / "rm.metrics.json").read_text())
    assert report["model"] == str(out)
    assert report["epochs_run"] == 2 and 1 <= report["best_epoch"] <= 2
    assert set(report["tasks"]) == {"CartPole-v1", "Pendulum-v1"}
    for name, m in report["tasks"].items():
        assert set(m) >= METRIC_KEYS, name
        assert m["n_train"] == result.metrics[name]["n_train"] and m["n_val"] > 0
    loaded = rm.load(out)
    assert list(loaded.tasks) == ["CartPole-v1", "Pendulum-v1"]
    assert loaded.meta["training"]["epochs"] == 2
    assert rm.read_description(out)["rlrm_version"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["rm.metrics.json", "rm.safetensors"]


def test_job_trains_only_the_named_tasks(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = train_job([data_dir], out, TrainConfig(epochs=1), SMALL, tasks=["Pendulum-v1"], progress=False)
    assert set(result.metrics) == {"Pendulum-v1"}
    with pytest.raises(ConfigError, match="Acrobot-v1"):
        train_job([data_dir], out, TrainConfig(epochs=1), SMALL, tasks=["Acrobot-v1"], progress=False)


def test_job_out_must_be_a_file_path(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        train_job([data_dir], tmp_path, TrainConfig(epochs=1), SMALL, progress=False)


def test_constant_labels_are_predicted_exactly(cartpole_ds: TransitionDataset, pendulum_ds: TransitionDataset,
                                               tmp_path: Path) -> None:
    """CartPole's reward is +1 on every step: the model says exactly 1.0 on any input (torch and NumPy paths,
    after a save and load), so an agent on it follows the same path as on the true reward."""
    result = train_reward_model([cartpole_ds, pendulum_ds], TrainConfig(epochs=2, patience=0), model_config=SMALL,
                                progress=False)
    loaded = rm.load(rm.save(result.model, tmp_path / "m.safetensors"))
    assert loaded.tasks["CartPole-v1"].label_std == 0.0 and loaded.tasks["Pendulum-v1"].label_std > 0
    rng = np.random.default_rng(0)
    obs = (rng.normal(size=(64, 4)) * 3).astype(np.float32)  # far outside the data too
    nxt = (rng.normal(size=(64, 4)) * 3).astype(np.float32)
    act, done = rng.integers(0, 2, 64), np.zeros(64, bool)
    for m in (result.model, loaded):
        assert np.all(m.predict("CartPole-v1", obs, act, nxt, done) == 1.0)
        assert np.all(m.reward_fn("CartPole-v1")(obs, act, nxt, done) == 1.0)
    p = pendulum_ds.subset(slice(0, 64))
    assert np.std(loaded.predict("Pendulum-v1", p.obs, p.action, p.next_obs, p.terminated)) > 0.1  # untouched
