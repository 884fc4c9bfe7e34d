"""New heads as combinations of earlier heads (``span``): exact recovery of a task in the span from a few labels, the
leave-one-out penalty and prior, the automatic choice, and what is refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rlrm import model as rm
from rlrm import train_reward
from rlrm.data import labels
from rlrm.data.dataset import TransitionDataset
from rlrm.errors import ConfigError
from rlrm.model.network import ModelConfig
from rlrm.tasks import Task
from rlrm.train import TrainConfig, train_reward_model
from rlrm.train.fewshot import extend_model
from rlrm.train.heldout import predict_dataset
from rlrm.train.span import PENALTIES, basis_rewards, fit_span, span_basis, span_model

SMALL = ModelConfig(encoder=[32, 32])


def _as(ds: TransitionDataset, name: str, labels_: np.ndarray | None = None) -> TransitionDataset:
    out = replace(ds, task=Task(name, "Pendulum-v1"))
    if labels_ is not None:
        out = labels.label_with(out, lambda _d: labels_, f"python:test:{name.split('/')[-1]}")
    return out


@pytest.fixture(scope="module")
def base(pendulum_20k: TransitionDataset) -> rm.RewardModel:
    """A Pendulum family model: the swing-up reward and "keep still" (-theta_dot^2)."""
    still = _as(pendulum_20k, "Pendulum-v1/still", -np.square(pendulum_20k.next_obs[:, 2]).astype(np.float64))
    return train_reward_model([pendulum_20k, still], TrainConfig(epochs=4, patience=0, lr=3e-3),
                              model_config=SMALL, progress=False).model


@pytest.fixture(scope="module")
def mixed(base: rm.RewardModel, pendulum_20k: TransitionDataset) -> TransitionDataset:
    """A new task exactly in the span: 0.3 x swing-up + 0.7 x still + 2, as the base model pays them."""
    r = basis_rewards(base, pendulum_20k, ("Pendulum-v1", "Pendulum-v1/still"))
    return _as(pendulum_20k, "Pendulum-v1/mixed", 0.3 * r[:, 0] + 0.7 * r[:, 1] + 2.0)


def _few(ds: TransitionDataset, n: int, seed: int = 0) -> TransitionDataset:
    rng = np.random.default_rng(seed)
    return ds.subset(np.sort(rng.choice(len(ds) // 2, n, replace=False)))


def test_a_task_in_the_span_is_recovered_from_six_labels(base, mixed, tmp_path):
    few, test = _few(mixed, 6), mixed.subset(np.arange(len(mixed) // 2, len(mixed)))
    assert span_basis(base, few) == ("Pendulum-v1", "Pendulum-v1/still")
    model = span_model(base, few)
    pred = predict_dataset(model, test)
    assert np.max(np.abs(pred - test.label)) < 1e-3 * np.std(test.label)
    span = model.tasks["Pendulum-v1/mixed"].info["span"]
    assert span["coef"] == pytest.approx([0.3, 0.7], abs=1e-4) and span["offset"] == pytest.approx(2.0, abs=1e-3)
    for name in base.tasks:  # earlier heads: bit-identical
        assert np.array_equal(predict_dataset(model, _as(test, name)), predict_dataset(base, _as(test, name)))
    assert "Pendulum-v1/mixed" not in base.tasks
    # an ordinary head: the NumPy fast path and a saved file pay the same reward
    fn = model.reward_fn("Pendulum-v1/mixed", dtype="float64")
    assert np.allclose(fn(test.obs, test.action, test.next_obs, test.terminated), pred, atol=1e-4)
    loaded = rm.load(rm.save(model, tmp_path / "span.safetensors"))
    assert np.array_equal(predict_dataset(loaded, test), pred)


def test_the_fit_recovers_exact_coefficients_and_finds_nothing_in_noise(base, mixed):
    few = _few(mixed, 40, seed=1)
    basis = span_basis(base, few)
    rewards = basis_rewards(base, few, basis)
    exact = fit_span(rewards, few.label, basis)
    assert exact.penalty <= 1e-4 and exact.coef == pytest.approx([0.3, 0.7], abs=1e-4)
    noise = fit_span(rewards, np.random.default_rng(2).normal(size=len(few)), basis)
    assert np.abs(noise.coef).max() < 0.2  # labels unrelated to the basis: next to nothing is taken from it
    few_two = fit_span(rewards[:2], few.label[:2], basis)  # too few for leave-one-out: a middle penalty
    assert few_two.penalty == 1.0
    # as many labels as unknowns (2 coefficients + offset): a weak penalty interpolates, and leave-one-out is 0/0
    # there; such penalties are skipped (an interpolating fit of noise had been chosen: r2 0.02 on PointGoal)
    three = fit_span(rewards[:3], np.random.default_rng(3).normal(size=3), basis)
    assert three.penalty > min(PENALTIES) and np.isfinite(three.coef).all()


def test_few_labels_of_the_family_average_are_shrunk_toward_it(base, pendulum_20k):
    """Three labels of the heads' average reward (plus an offset): the prior already is that average, so the fit
    keeps it; shrinking toward zero (the prior before) would pull both coefficients well below 0.5."""
    basis = ("Pendulum-v1", "Pendulum-v1/still")
    rewards = basis_rewards(base, pendulum_20k, basis)
    idx = np.sort(np.random.default_rng(4).choice(len(pendulum_20k), 3, replace=False))
    target = rewards[idx].mean(1) + 1.0
    fit = fit_span(rewards[idx], target, basis)
    assert fit.prior == "mean"
    assert fit.coef == pytest.approx([0.5, 0.5], abs=0.02)
    pred = fit.offset + rewards @ fit.coef
    assert np.max(np.abs(pred - (rewards.mean(1) + 1.0))) < 0.02 * np.std(rewards.mean(1))


def test_auto_scores_span_beside_the_trained_modes_and_takes_it_for_a_task_in_the_span(base, mixed):
    few, test = _few(mixed, 24), mixed.subset(np.arange(len(mixed) // 2, len(mixed)))
    result = extend_model(base, [few], TrainConfig(epochs=4, min_epoch_steps=10, patience=0), "auto", progress=False)
    adaptation = result.model.meta["adaptation"]
    assert set(adaptation["scores"]) == {"frozen", "finetune", "span"}
    assert adaptation["mode"] == "span" == min(adaptation["scores"], key=adaptation["scores"].get)
    assert result.metrics["Pendulum-v1/mixed"]["n_val"] == 24  # out-of-fold metrics, as for the trained modes
    assert np.max(np.abs(predict_dataset(result.model, test) - test.label)) < 1e-3 * np.std(test.label)


def test_span_is_refused_where_there_is_nothing_to_combine(base, mixed, cartpole_ds):
    cart = train_reward_model([cartpole_ds], TrainConfig(epochs=1, patience=0), model_config=SMALL,
                              progress=False).model
    few = _few(mixed, 8)
    assert span_basis(cart, few) == ()  # CartPole's head takes other spaces: another z
    with pytest.raises(ConfigError, match="no earlier head to combine"):
        extend_model(cart, [few], TrainConfig(epochs=1), "span", progress=False)
    with pytest.raises(ConfigError, match="not linear in the earlier heads"):
        extend_model(base, [few], TrainConfig(epochs=1, label_transform="symlog"), "span", progress=False)


def _save(ds: TransitionDataset, root: Path) -> Path:
    return ds.save(root / ds.task.name.replace("/", "_"))


def test_cli_span_flag_writes_the_combination_and_bad_uses_are_one_line_errors(workdir, base, mixed, capsys):
    model = rm.save(base, workdir / "base.safetensors")
    data = _save(_few(mixed, 12), workdir / "data")
    rc = train_reward.entry(["--init", str(model), "--span", "--data", str(data), "--out", str(workdir / "m.st"),
                             "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((workdir / "m.metrics.json").read_text())
    assert report["adaptation"]["mode"] == "span" and report["adaptation"]["requested"] == "span"
    assert "span" in rm.load(workdir / "m.st").tasks["Pendulum-v1/mixed"].info
    capsys.readouterr()
    assert train_reward.entry(["--span", "--data", str(data), "--out", str(workdir / "x.st"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'span': a frozen encoder, fine-tuning or a span of earlier heads needs" in err[0]
    assert not (workdir / "x.st").exists()
