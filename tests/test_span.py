"""New heads as combinations of earlier heads (``span``): exact recovery of a task in the span from a few labels, the
leave-one-out penalty and prior, the automatic choice, and what is refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rlrm import metrics, train_reward
from rlrm import model as rm
from rlrm.data import labels
from rlrm.data.dataset import TransitionDataset
from rlrm.errors import ConfigError
from rlrm.model.network import ModelConfig
from rlrm.tasks import Task
from rlrm.train import TrainConfig, train_reward_model
from rlrm.train.fewshot import extend_model
from rlrm.train.heldout import predict_dataset
from rlrm.train.span import (
    LOO_MAX,
    PENALTIES,
    basis_rewards,
    fit_free,
    fit_nonneg,
    fit_span,
    span_basis,
    span_model,
)

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
    assert span["constraint"] in ("none", "nonneg")  # a nonnegative mix: both fits recover it
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
    three_labels = np.random.default_rng(3).normal(size=3)
    three = fit_free(rewards[:3], three_labels, basis)
    assert three.penalty > min(PENALTIES) and np.isfinite(three.coef).all()
    # the nonnegative fit scores each penalty by refitting without the label (no 0/0); on 3 labels of noise it takes
    # nothing it cannot justify: a constant, or next to one
    three = fit_span(rewards[:3], three_labels, basis)
    assert three.constraint == "nonneg" and np.isfinite(three.coef).all() and (three.coef >= 0).all()


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


def _bumps(n: int = 3000) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """A family on a 1-D state: "be near x*" rewards (tents of half-width 1.5) for five trained targets x*, as the
    earlier heads would pay them; the states and the basis rewards."""
    targets = (-1.5, -0.75, 0.0, 0.75, 1.5)
    x = np.random.default_rng(0).uniform(-2.4, 2.4, n)
    return x, np.stack([np.clip(1 - np.abs(x - t) / 1.5, 0, None) for t in targets], 1), tuple(map(str, targets))


def _test_r2(fit_fn, rewards, target, n, noise, draws) -> tuple[list[float], list]:
    """Test r2 (on the second half) of ``fit_fn`` fitted on ``n`` noisy labels from the first half, per draw."""
    half = len(target) // 2
    r2s, fits = [], []
    for seed in range(draws):
        i = np.random.default_rng(seed).choice(half, n, replace=False)
        y = target[i] + np.random.default_rng(100 + seed).normal(0, noise, n)
        fit = fit_fn(rewards[i], y, tuple(str(k) for k in range(rewards.shape[1])))
        r2s.append(metrics.r2(fit.offset + rewards[half:] @ fit.coef, target[half:]))
        fits.append(fit)
    return r2s, fits


def test_a_target_between_known_ones_is_a_nonnegative_mix_and_few_labels_fit_it_better():
    """A new target between two trained ones, 6 noisy labels: the constraint keeps the fit from putting large
    opposite weights on noise. Measured on these 20 draws: median test r2 0.938 with the rule (fit_span) against
    0.867 unconstrained (the fit before the rule); 0.90 is between them."""
    _, rewards, _ = _bumps()
    target = 0.5 * rewards[:, 2] + 0.5 * rewards[:, 3]
    ruled, fits = _test_r2(fit_span, rewards, target, 6, 0.05, 20)
    free, _ = _test_r2(fit_free, rewards, target, 6, 0.05, 20)
    assert np.median(ruled) > 0.90 > np.median(free)
    assert sum(f.constraint == "nonneg" for f in fits) >= 15
    assert all((f.coef >= 0).all() for f in fits if f.constraint == "nonneg")


def test_a_target_past_the_known_ones_gets_its_negative_weight():
    """A target past the last trained one is not a nonnegative mix (it needs a negative weight on a neighbour): on 24
    labels the rule drops the constraint and recovers it (the tents are collinear, so the weights are not unique; some
    weight is negative); constrained, the fit stalls."""
    _, rewards, _ = _bumps()
    target = 1.8 * rewards[:, 4] - 0.8 * rewards[:, 3]
    ruled, fits = _test_r2(fit_span, rewards, target, 24, 0.05, 5)
    constrained, _ = _test_r2(fit_nonneg, rewards, target, 24, 0.05, 5)
    assert all(f.constraint == "none" and f.coef.min() < -0.3 for f in fits)
    assert min(ruled) > 0.99 and max(constrained) < 0.95


def test_many_labels_choose_by_folds_not_one_label_at_a_time():
    """Above LOO_MAX labels the choices cross-validate over folds: the same answers, at a cost that grows with the
    labels, not with their square."""
    _, rewards, _ = _bumps()
    inside = 0.5 * rewards[:, 2] + 0.5 * rewards[:, 3]
    past = 1.8 * rewards[:, 4] - 0.8 * rewards[:, 3]
    n = 10 * LOO_MAX
    (r_in,), (fit_in,) = _test_r2(fit_span, rewards, inside, n, 0.05, 1)
    (r_past,), (fit_past,) = _test_r2(fit_span, rewards, past, n, 0.05, 1)
    assert (fit_in.coef >= 0).all() and r_in > 0.98
    assert fit_past.constraint == "none" and r_past > 0.99


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
