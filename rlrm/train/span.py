"""A new task's head as a combination of the heads a model already has: few labels fit a few coefficients.

The tasks of a family share dynamics and differ in what they reward. When a new task's reward is close to a linear
combination of rewards the model already knows (a target between known targets, a goal between known goals), its
labels only have to pin down ``K + 1`` numbers (one coefficient per earlier head of the same input group, and an
offset) instead of a new head's ``width + 1`` weights: from ~K labels instead of dozens. Measured on the families
(benchmarks/RESULTS.md, "label efficiency").

The combination is itself a linear head on the frozen encoder (every earlier head is linear in the shared
representation ``z``), so the result is an ordinary model file and every earlier head predicts bit-identically::

    r_new(z) = c0 + sum_k c_k r_k(z),   r_k(z) = (z . w_k + b_k) s_k + m_k
             = z . (sum_k c_k s_k w_k) + sum_k c_k (s_k b_k + m_k) + c0

The coefficients are a ridge regression of the labels on the earlier heads' rewards, shrunk toward their average
(the family's mean reward) or toward zero, the penalty and the prior chosen by leave-one-out error (closed form), and
constrained to be nonnegative (the new reward a mix of the old ones, Breiman's constraint for stacked regressions)
unless the labels clearly ask for a negative weight (a target past the known ones). Whether the new task is in that
span at all is for the caller's validation to say (:func:`rlrm.train.fewshot.extend_model` compares it with a
trained head by held-out error).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.optimize import nnls

from rlrm.data.dataset import TransitionDataset
from rlrm.errors import ConfigError
from rlrm.model.network import RewardModel, head_key
from rlrm.train.heldout import predict_dataset

#: ridge penalties tried, relative to the mean squared singular value of the (centered, scaled) basis
PENALTIES = tuple(float(x) for x in np.logspace(-6, 2, 17))
#: what the coefficients are shrunk toward: ``mean`` (every earlier head weighted 1/K: the family's average reward)
#: or ``zero`` (no combination: a constant)
PRIORS = ("mean", "zero")
#: ``none`` (any sign) or ``nonneg`` (every coefficient >= 0: the new reward a nonnegative mix of the old ones)
CONSTRAINTS = ("none", "nonneg")
#: up to this many labels the nonnegative fit's penalty and the choice between constraints leave one label out;
#: above, :data:`FOLDS` interleaved folds (nested leave-one-out costs labels^2 x penalties NNLS fits)
LOO_MAX = 16
FOLDS = 10


@dataclass(frozen=True)
class SpanFit:
    """A new task's reward as ``offset + coef . rewards of basis``, the penalty leave-one-out chose, the prior
    the coefficients were shrunk toward (:data:`PRIORS`) and their constraint (:data:`CONSTRAINTS`)."""

    basis: tuple[str, ...]
    coef: np.ndarray
    offset: float
    penalty: float
    prior: str = "mean"
    constraint: str = "none"


def span_basis(model: RewardModel, ds: TransitionDataset) -> tuple[str, ...]:
    """The earlier tasks whose heads can be combined for ``ds``'s task: same input group (the same spaces, so the
    same ``z``), labels in plain units (``label_transform`` none; a symlog head is not linear in ``z``) and not
    constant (``label_std`` > 0)."""
    group = model.group_for(ds.obs_space, ds.action_space)
    return tuple(name for name, h in model.tasks.items() if name != ds.task.name and h.group == group
                 and h.label_transform == "none" and h.label_std > 0)


def basis_rewards(model: RewardModel, ds: TransitionDataset, basis: tuple[str, ...]) -> np.ndarray:
    """The basis tasks' rewards (label units, float64) on ``ds``'s transitions: shape ``(len(ds), len(basis))``."""
    return np.stack([predict_dataset(model, _as(ds, name, model)) for name in basis], 1).astype(np.float64)


def fit_span(rewards: np.ndarray, labels: np.ndarray, basis: tuple[str, ...]) -> SpanFit:
    """The span fit of ``labels`` on the basis ``rewards``: nonnegative coefficients (:func:`fit_nonneg`) unless
    the unconstrained fit (:func:`fit_free`) predicts left-out labels better by more than one standard error of the
    paired difference, each label predicted by the whole procedure (penalty and prior chosen) fitted without it
    (:data:`FOLDS` folds above :data:`LOO_MAX` labels); below 4 labels, nonnegative.

    Why: a family's new target is usually between known ones (a position, a goal, a velocity between trained ones),
    a nonnegative mix of their rewards, and the constraint keeps 4-8 labels from fitting large opposite weights to
    noise; a target past the known ones needs a negative weight, and its labels say so once there are enough.
    Measured (``benchmarks/span_variants.py``, 20 seeds, mean test r2 span alone, unconstrained vs this rule):
    CartPole's held-out targets at 6 labels 0.941 vs 0.957, PointGoal's 0.705 vs 0.747 at 4; an extrapolated
    CartPole target 0.959 vs 0.946 at 12 (0.729 constrained always); benchmarks/RESULTS.md.
    """
    y = np.asarray(labels, np.float64)
    if rewards.shape[0] != y.size or y.size == 0:
        raise ConfigError(f"span: {y.size} labels for {rewards.shape[0]} rows; expected the same, at least one")
    nonneg = fit_nonneg(rewards, y, basis)
    if y.size < 4:
        return nonneg
    diff = np.zeros(y.size)
    for keep, out in _folds(y.size):
        free_k, nonneg_k = fit_free(rewards[keep], y[keep], basis), fit_nonneg(rewards[keep], y[keep], basis)
        diff[out] = (_residual(free_k, rewards[out], y[out]) ** 2 - _residual(nonneg_k, rewards[out], y[out]) ** 2)
    if diff.mean() + diff.std(ddof=1) / np.sqrt(diff.size) < 0:
        return fit_free(rewards, y, basis)
    return nonneg


def fit_free(rewards: np.ndarray, labels: np.ndarray, basis: tuple[str, ...]) -> SpanFit:
    """Ridge regression of ``labels`` on the basis ``rewards`` (columns centered and scaled), coefficients of any
    sign, its penalty chosen by leave-one-out mean squared error, shrunk toward one of two priors (see
    :data:`PRIORS`): the earlier heads' average (``mean``) unless shrinking toward no combination at all (``zero``)
    predicts the left-out labels better by more than one standard error of the paired difference. A family's new
    target is, before any label, most like the family's average reward, and that prior is what a handful of labels
    should correct; labels unrelated to the basis are told apart once there are enough of them. (Measured with
    ``benchmarks/span_prior.py``, span alone at 4 labels, test r2 against the zero prior: CartPole 0.931 vs
    0.917, PointGoal 0.682 vs 0.610, HalfCheetah 0.914 vs 0.924; benchmarks/RESULTS.md.)

    A penalty under which the fit interpolates (about as many labels as heads: every leverage ~1) has no
    leave-one-out estimate and is not chosen; with fewer than 3 labels, or none left, the penalty is the largest
    that still fits: the mean squared singular value (shrinking each direction by at most half on average), and the
    prior is ``mean``."""
    y = np.asarray(labels, np.float64)
    mean, scale = _center_scale(rewards)
    x = (rewards - mean) / scale
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    prior_coef = {"zero": np.zeros(rewards.shape[1]), "mean": np.full(rewards.shape[1], 1.0 / rewards.shape[1])}
    fits = {name: _ridge_loo(u, s, vt, y - rewards @ c0) for name, c0 in prior_coef.items()}
    prior = "mean"
    zero_sq, mean_sq = fits["zero"][2], fits["mean"][2]
    if zero_sq is not None and mean_sq is not None:
        diff = zero_sq - mean_sq
        if diff.mean() + diff.std(ddof=1) / np.sqrt(diff.size) < 0:
            prior = "zero"
    d, rel, _ = fits[prior]
    target_mean = float(np.mean(y - rewards @ prior_coef[prior]))
    coef = prior_coef[prior] + d / scale
    return SpanFit(basis, coef, float(target_mean - mean @ (d / scale)), rel, prior)


def fit_nonneg(rewards: np.ndarray, labels: np.ndarray, basis: tuple[str, ...]) -> SpanFit:
    """Nonnegative coefficients and a free offset: least squares with a ridge toward the earlier heads' average
    (every coefficient 1/K, in units of each column's std), its penalty chosen by leave-one-out error over
    :data:`PENALTIES` (:data:`FOLDS` folds above :data:`LOO_MAX` labels; refits: the constraint has no closed form).
    Each penalty is scored as the final fit will use it (its absolute value and the columns' scales from all
    labels). Below 3 labels the penalty is the mean squared singular value, as in :func:`fit_free`."""
    y = np.asarray(labels, np.float64)
    scale = _center_scale(rewards)[1]
    best = (np.inf, 1.0)
    if y.size >= 3:
        for rel in PENALTIES:
            lam = rel * y.size  # x the mean squared singular value of the centered, scaled basis
            sq = np.concatenate([_residual(_nonneg(rewards[keep], y[keep], lam, scale), rewards[out], y[out]) ** 2
                                 for keep, out in _folds(y.size)])
            err = float(np.mean(sq))
            if err < best[0] * (1.0 - 1e-12):  # ties (exact labels: all ~0) keep the weaker penalty
                best = (err, rel)
    fit = _nonneg(rewards, y, best[1] * y.size, scale)
    return replace(fit, basis=basis, penalty=best[1])


def _nonneg(rewards: np.ndarray, y: np.ndarray, lam: float, scale: np.ndarray) -> SpanFit:
    """The nonnegative fit with ridge ``lam * sum_k (scale_k (c_k - 1/K))^2``, shrunk toward 1/K each."""
    mean = rewards.mean(0)
    a = np.vstack([rewards - mean, np.sqrt(lam) * np.diag(scale)])
    coef, _ = nnls(a, np.concatenate([y - y.mean(), np.sqrt(lam) * scale / rewards.shape[1]]))
    return SpanFit((), coef, float(y.mean() - mean @ coef), lam, "mean", "nonneg")


def _center_scale(rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, scale = rewards.mean(0), rewards.std(0)
    return mean, np.where(scale > 1e-12, scale, 1.0)


def _residual(fit: SpanFit, rewards: np.ndarray, y: np.ndarray) -> np.ndarray:
    return y - fit.offset - rewards @ fit.coef


def _folds(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kept rows, left-out rows) per fold: one label per fold up to :data:`LOO_MAX` labels, else :data:`FOLDS`
    interleaved folds (row ``i`` in fold ``i % FOLDS``)."""
    k = n if n <= LOO_MAX else FOLDS
    fold = np.arange(n) % k
    return [(fold != f, fold == f) for f in range(k)]


def _ridge_loo(u: np.ndarray, s: np.ndarray, vt: np.ndarray,
               y: np.ndarray) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Ridge of ``y`` (with a fitted offset) on the centered, scaled basis ``u @ diag(s) @ vt``: the coefficients
    (scaled units), the relative penalty leave-one-out chose, and the chosen fit's left-out squared errors
    (``None`` without a leave-one-out estimate)."""
    ym = y.mean()
    uy = u.T @ (y - ym)
    unit = float(np.mean(s ** 2)) or 1.0
    n = y.size
    best: tuple[float, float, np.ndarray | None] = (np.inf, 1.0, None)
    if n >= 3:
        for rel in PENALTIES:
            shrink = s ** 2 / (s ** 2 + rel * unit)
            fitted = u @ (shrink * uy)
            leverage = (u ** 2) @ shrink + 1.0 / n  # the offset is fitted too
            if np.any(1.0 - leverage < 1e-6):  # interpolates (about as many labels as heads): 0/0, no estimate
                continue
            sq = ((y - ym - fitted) / (1.0 - leverage)) ** 2
            err = float(np.mean(sq))
            if err < best[0] * (1.0 - 1e-12):  # ties (exact labels: all ~0) keep the weaker penalty
                best = (err, rel, sq)
    rel = best[1]
    return vt.T @ (s / (s ** 2 + rel * unit) * uy), rel, best[2]


def span_model(base: RewardModel, ds: TransitionDataset, fit: SpanFit | None = None) -> RewardModel:
    """A copy of ``base`` with a head for ``ds``'s task that pays the span fit (fitted on ``ds`` if not given).

    :raise ConfigError: the task already has a head, or no earlier head can be combined (:func:`span_basis`).
    """
    if ds.task.name in base.tasks:
        raise ConfigError(f"task {ds.task.name!r} already has a head in the model; span adds new tasks")
    if fit is None:
        basis = span_basis(base, ds)
        if not basis:
            raise ConfigError(f"task {ds.task.name!r}: no earlier head to combine (span needs a trained task with the "
                              "same observation and action spaces and labels in plain units)")
        fit = fit_span(basis_rewards(base, ds, basis), ds.label, basis)
    model = copy.deepcopy(base)
    model.add_task(ds.task, ds.obs_space, ds.action_space)
    y = np.asarray(ds.label, np.float64)
    mean, std = float(y.mean()), float(y.std())
    model.set_label_scale(ds.task.name, mean, std)
    std = model.tasks[ds.task.name].label_std or 1.0
    w = np.zeros(base.config.encoder[-1], np.float64)
    b = fit.offset
    for c, name in zip(fit.coef.tolist(), fit.basis):
        info, head = base.tasks[name], base.heads[head_key(name)]
        w += c * info.label_std * head.weight.detach().double().numpy()[0]
        b += c * (info.label_std * float(head.bias.detach().double().numpy()[0]) + info.label_mean)
    new = model.heads[head_key(ds.task.name)]
    with torch.no_grad():
        new.weight.copy_(torch.from_numpy(w / std)[None, :].to(new.weight.dtype))
        new.bias.fill_((b - mean) / std)
    model.tasks[ds.task.name].info["span"] = {"basis": list(fit.basis), "coef": fit.coef.tolist(),
                                              "offset": fit.offset, "penalty": fit.penalty, "prior": fit.prior,
                                              "constraint": fit.constraint}
    return model


def _as(ds: TransitionDataset, name: str, model: RewardModel) -> TransitionDataset:
    return replace(ds, task=model.tasks[name].task)
