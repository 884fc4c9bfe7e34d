"""Reward-model quality metrics: MSE, R², Spearman correlation, return-ranking accuracy, EPIC distance."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rlrm.errors import RewardError


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


# --------------------------------------------------------------------------- EPIC reward distance
#: a batched reward ``(obs, action, next_obs, done) -> (n,) array``, as :class:`rlrm.reward_fn.RewardFn`
BatchedReward = Callable[[Any, Any, Any, np.ndarray], np.ndarray]


def pearson_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``sqrt((1 - ρ) / 2)`` for the Pearson correlation ρ of ``a`` and ``b``: 0 for rewards equal up to a positive
    affine map, 1 for opposite ones, about ``sqrt(1/2)`` for unrelated ones; NaN when either side is constant (or
    has fewer than two values)."""
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if len(a) != len(b):
        raise ValueError(f"pearson_distance: expected arrays of one length, got {len(a)} and {len(b)}")
    if len(a) < 2:
        return float("nan")
    scale_a, scale_b = float((a * a).mean()), float((b * b).mean())
    a, b = a - a.mean(), b - b.mean()
    va, vb = float((a * a).mean()), float((b * b).mean())
    # constant up to rounding (a constant reward's canonical form is a constant plus float noise)
    if va <= 1e-12 * scale_a or vb <= 1e-12 * scale_b:
        return float("nan")
    rho = float((a * b).mean() / np.sqrt(va * vb))
    return float(np.sqrt(max(0.0, (1.0 - min(rho, 1.0)) / 2.0)))


def _take(batch: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of a batch: an array, or a dict/tuple/list of batches (Dict/Tuple spaces)."""
    if isinstance(batch, Mapping):
        return {k: _take(v, index) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return tuple(_take(v, index) for v in batch)
    return np.asarray(batch)[index]


def _n_rows(batch: Any) -> int:
    if isinstance(batch, Mapping):
        return _n_rows(next(iter(batch.values())))
    if isinstance(batch, (tuple, list)):
        return _n_rows(batch[0])
    return len(batch)


def _call(reward: BatchedReward, name: str, obs: Any, action: Any, next_obs: Any, done: np.ndarray) -> np.ndarray:
    out = np.asarray(reward(obs, action, next_obs, done), np.float64)
    if out.shape != done.shape:
        raise RewardError(f"{name}: expected rewards of shape {done.shape}, got {out.shape}")
    return out


def _mean_over_samples(reward: BatchedReward, name: str, states: Any, rows: np.ndarray, action: Any,
                       next_obs: Any, done: np.ndarray, a_idx: np.ndarray, n_idx: np.ndarray,
                       chunk: int) -> np.ndarray:
    """``mean_j R(states[i], action[a_idx[j]], next_obs[n_idx[j]], done[n_idx[j]])`` for each ``i`` in ``rows``:
    one call per chunk of states, each repeated against all samples. Chunks are of one size (up to ``chunk`` rows)
    as a model's NumPy reward function sets up its buffers again whenever the batch size changes."""
    m = len(a_idx)
    n_calls = -(-len(rows) * m // chunk)
    per_call = max(1, -(-len(rows) // max(1, n_calls)))
    out = np.empty(len(rows), np.float64)
    for lo in range(0, len(rows), per_call):
        k = len(rows[lo:lo + per_call])
        s = np.repeat(rows[lo:lo + k], m)
        a, n = np.tile(a_idx, k), np.tile(n_idx, k)
        r = _call(reward, name, _take(states, s), _take(action, a), _take(next_obs, n), done[n])
        out[lo:lo + k] = r.reshape(k, m).mean(axis=1)
    return out


def canonicalize(reward: BatchedReward, obs: Any, action: Any, next_obs: Any, done: np.ndarray, rows: np.ndarray,
                 samples: tuple[np.ndarray, np.ndarray, np.ndarray], *, gamma: float = 0.99, chunk: int = 1 << 16,
                 name: str = "reward") -> np.ndarray:
    """EPIC's canonically shaped reward ``C(R)(s, a, s') = R(s, a, s') + γ E[R(s', A, S')] - E[R(s, A, S')]
    - γ E[R(S, A, S')]`` on the transitions ``rows`` of the coverage data (see :func:`epic_distance`).

    :param samples: indices into the data of the sampled states S (``obs``), actions A (``action``) and next states
        S' (``next_obs`` with its ``done`` flag), three arrays of one length; the expectations are means over them.
    :param name: how errors name the reward (e.g. a bad output shape).
    :return: float64 array of shape ``(len(rows),)``.
    """
    s_idx, a_idx, n_idx = samples
    r = _call(reward, name, _take(obs, rows), _take(action, rows), _take(next_obs, rows), done[rows])
    after = _mean_over_samples(reward, name, next_obs, rows, action, next_obs, done, a_idx, n_idx, chunk)
    before = _mean_over_samples(reward, name, obs, rows, action, next_obs, done, a_idx, n_idx, chunk)
    overall = float(_call(reward, name, _take(obs, s_idx), _take(action, a_idx), _take(next_obs, n_idx),
                          done[n_idx]).mean())
    return r + gamma * after - before - gamma * overall


def epic_distance(reward_a: BatchedReward, reward_b: BatchedReward, obs: Any, action: Any, next_obs: Any,
                  done: np.ndarray | None = None, *, gamma: float = 0.99, n_samples: int = 64,
                  max_transitions: int = 1000, seed: int = 0) -> float:
    """EPIC distance (Gleave et al. 2020, "Quantifying Differences in Reward Functions") between two rewards over
    the coverage distribution given by a batch of transitions: the Pearson distance (:func:`pearson_distance`) of
    their canonically shaped forms (:func:`canonicalize`) on the transitions. 0 for rewards that differ only by
    potential shaping and positive scaling, 1 for opposite ones, about ``sqrt(1/2)`` for unrelated ones.

    Sampling choices:

    - The expectations use ``n_samples`` draws (with replacement, seeded) of S from ``obs``, of A from ``action``
      and of S' from ``next_obs``, independently of each other, so A and S' follow the data's marginals, not its
      dynamics. ``done`` belongs to the next state: it is drawn with S' (the same row).
    - The distance is measured on at most ``max_transitions`` transitions (a seeded subset without replacement);
      the samples are drawn from all of them.
    - Both rewards see the same samples, so shaping ``γΦ(s') - Φ(s)`` cancels exactly up to a constant (which the
      Pearson distance ignores), not only in expectation.
    - Each reward is evaluated on ``2 · max_transitions · n_samples`` stacked rows, in calls of ``2**16`` rows.

    :param reward_a: batched reward ``(obs, action, next_obs, done) -> (n,)``, as :class:`rlrm.reward_fn.RewardFn`;
        batches are arrays with a leading axis, or dicts/tuples of them for Dict/Tuple spaces.
    :param reward_b: the other reward, same convention.
    :param done: ``terminated`` flags of the transitions (default: none terminated).
    :return: the distance in [0, 1]; NaN when either canonicalized reward is constant or there are under two
        transitions.
    :raise RewardError: a reward returned an array of the wrong shape.
    """
    if n_samples < 1 or max_transitions < 2:
        raise ValueError(f"n_samples must be >= 1 and max_transitions >= 2, got {n_samples} and {max_transitions}")
    n = _n_rows(obs)
    if n < 2:
        return float("nan")
    done = np.zeros(n, bool) if done is None else np.asarray(done, bool).reshape(-1)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, max_transitions, replace=False)) if n > max_transitions else np.arange(n)
    samples = (rng.integers(0, n, n_samples), rng.integers(0, n, n_samples), rng.integers(0, n, n_samples))
    ca, cb = (canonicalize(fn, obs, action, next_obs, done, rows, samples, gamma=gamma, name=name)
              for fn, name in ((reward_a, "reward_a"), (reward_b, "reward_b")))
    return pearson_distance(ca, cb)
