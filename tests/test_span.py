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


def _twins(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Basis rewards and labels of 4 states, each labeled twice (neighbouring steps: nearly the same rewards and
    label), the labels unrelated to the basis; and each label's episode."""
    rng = np.random.default_rng(seed)
    states, labels_ = rng.normal(size=(4, 5)), rng.normal(size=4)
    rewards = np.repeat(states, 2, axis=0) + 1e-3 * rng.normal(size=(8, 5))
    return rewards, np.repeat(labels_, 2) + 1e-3 * rng.normal(size=8), np.repeat(np.arange(4), 2)


def test_twin_labels_of_one_episode_are_left_out_together():
    """Leave-one-out over single labels keeps each label's twin in: a weak penalty that reproduces every twin
    pair looks perfect (the near-duplicate draw that gave span r2 -2.4 on CartPole). Leaving each episode out
    as a whole sees that the basis does not predict these labels, and shrinks to the prior."""
    basis = tuple("abcde")
    excess, penalties = {"rows": [], "episodes": []}, {"rows": [], "episodes": []}
    for seed in range(20):
        rewards, y, episodes = _twins(seed)
        for name, fit in (("rows", fit_span(rewards, y, basis)),
                          ("episodes", fit_span(rewards, y, basis, groups=episodes))):
            # fresh states with labels independent of the basis (unit variance): the excess test error over the
            # best constant (0) is offset^2 + |coef|^2
            excess[name].append(fit.offset ** 2 + fit.coef @ fit.coef)
            penalties[name].append(fit.penalty)
    assert np.median(penalties["rows"]) < 1e-3 < np.median(penalties["episodes"])
    assert np.mean(excess["episodes"]) < 0.5 * np.mean(excess["rows"])
    # one label per episode: the same fit as without groups; fewer than 3 episodes: single labels are left out
    rewards, y, _ = _twins(0)
    for groups in (np.arange(8), np.array([0, 0, 0, 0, 1, 1, 1, 1])):
        fit = fit_span(rewards, y, basis, groups=groups)
        assert fit.penalty == fit_span(rewards, y, basis).penalty and np.array_equal(fit.coef, fit_span(
            rewards, y, basis).coef)
    with pytest.raises(ConfigError, match="3 group ids for 8 labels"):
        fit_span(rewards, y, basis, groups=np.arange(3))


def test_leaving_an_episode_out_in_closed_form_equals_refitting_without_it():
    from rlrm.train import span

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 4)), rng.normal(size=12)
    groups = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 8])
    u, s, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)
    lam = 0.3
    shrink = s ** 2 / (s ** 2 + lam)
    resid = y - y.mean() - u @ (shrink * (u.T @ (y - y.mean())))
    sq = (resid / (1.0 - (u ** 2) @ shrink - 1.0 / 12)) ** 2
    assert span._leave_blocks_out(u, shrink, 12, resid, span._groups(groups, 12), sq)
    for g in np.unique(groups):  # penalized least squares on the other episodes, offset unpenalized
        keep = groups != g
        z = np.hstack([np.ones((keep.sum(), 1)), x[keep] - x.mean(0)])
        theta = np.linalg.solve(z.T @ z + np.diag([0.0] + [lam] * 4), z.T @ y[keep])
        left_out = y[~keep] - theta[0] - (x[~keep] - x.mean(0)) @ theta[1:]
        assert sq[~keep] == pytest.approx(left_out ** 2, rel=1e-9, abs=1e-12)


def test_span_model_leaves_episodes_out(base, pendulum_20k):
    """Five pairs of neighbouring steps, each pair from its own episode and labeled alike (labels unrelated to the
    basis): span_model's fit is the one that leaves episodes out, which differs from leaving single labels out."""
    ep = pendulum_20k.episode
    starts = [int(np.flatnonzero(ep == e)[10]) for e in np.unique(ep)[:5]]
    idx = np.sort(np.concatenate([starts, np.add(starts, 1)]))
    y = np.repeat(np.random.default_rng(6).normal(size=5), 2)
    few = _as(pendulum_20k.subset(idx), "Pendulum-v1/pairs", y)
    basis = span_basis(base, few)
    rewards = basis_rewards(base, few, basis)
    info = span_model(base, few).tasks["Pendulum-v1/pairs"].info["span"]
    grouped = fit_span(rewards, few.label, basis, groups=few.episode)
    assert info["coef"] == grouped.coef.tolist()
    assert grouped.penalty != fit_span(rewards, few.label, basis).penalty


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
