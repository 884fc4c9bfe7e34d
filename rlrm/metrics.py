"""Reward-model quality metrics: MSE, R², Spearman correlation, return-ranking accuracy."""

from __future__ import annotations

import numpy as np


def mse(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean squared error."""
    if not len(target):
        return float("nan")
    return float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination; NaN when the target is constant (R² is undefined there: see mse)."""
    target = np.asarray(target, np.float64)
    if not len(target):
        return float("nan")
    ss_res = float(np.sum((np.asarray(pred, np.float64) - target) ** 2))
    ss_tot = float(np.sum((target - target.mean()) ** 2))
    if ss_tot <= 1e-12 * len(target):
        return float("nan")
    return 1.0 - ss_res / ss_tot


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]


def spearman(pred: np.ndarray, target: np.ndarray) -> float:
    """Spearman rank correlation; NaN when either side is constant."""
    if len(target) < 2:
        return float("nan")
    a, b = _ranks(np.asarray(pred, np.float64)), _ranks(np.asarray(target, np.float64))
    a -= a.mean()
    b -= b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def ranking_accuracy(pred_returns: np.ndarray, true_returns: np.ndarray, tol: float = 1e-6,
                     max_episodes: int = 2000) -> float:
    """Fraction of episode pairs with different true returns that the predicted returns order the same way.

    NaN when fewer than two episodes have different true returns. Above ``max_episodes`` episodes a
    fixed random subset is used (the pair count grows quadratically).
    """
    p, t = np.asarray(pred_returns, np.float64), np.asarray(true_returns, np.float64)
    if len(t) > max_episodes:
        keep_eps = np.random.default_rng(0).choice(len(t), max_episodes, replace=False)
        p, t = p[keep_eps], t[keep_eps]
    i, j = np.triu_indices(len(t), k=1)
    dt = t[i] - t[j]
    keep = np.abs(dt) > tol * max(1.0, float(np.abs(t).max(initial=0.0)))
    if not keep.any():
        return float("nan")
    return float(np.mean(np.sign(p[i] - p[j])[keep] == np.sign(dt)[keep]))
