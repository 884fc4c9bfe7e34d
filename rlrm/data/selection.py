"""Which segment pairs to ask a person about: uniform sampling, or the pairs a reward-model ensemble is least sure
of (pure NumPy); and which transitions to label (:func:`spread_index`).

Scores follow PEBBLE / B-Pref: each of ``K`` members predicts the probability that the left segment is preferred,
``p_k = sigmoid(R_k(left) - R_k(right))`` (Bradley-Terry on segment returns);

- ``disagreement``: the variance of ``p_k`` across members (needs ``K >= 2``);
- ``entropy``: the binary entropy of the members' mean ``p`` (highest where the model says 50/50).

The ``n`` highest-scoring candidates are chosen; ties are broken at random.
"""

from __future__ import annotations

import numpy as np

from rlrm.errors import ConfigError

METHODS = ("uniform", "disagreement", "entropy")


def preference_probability(member_returns: np.ndarray) -> np.ndarray:
    """Each member's probability that the left segment is preferred.

    :param member_returns: predicted segment returns, shape ``(K, n_candidates, 2)`` (left, right).
    :return: ``sigmoid(R_left - R_right)``, float64 of shape ``(K, n_candidates)``.
    """
    diff = member_returns[..., 0] - member_returns[..., 1]
    return 0.5 * (1.0 + np.tanh(0.5 * diff))  # a sigmoid that never overflows


def selection_scores(method: str, member_returns: np.ndarray) -> np.ndarray:
    """How informative each candidate is under ``method`` (``disagreement`` or ``entropy``), shape ``(n,)``."""
    p = preference_probability(member_returns)
    if method == "disagreement":
        return p.var(axis=0)
    mean = np.clip(p.mean(axis=0), 1e-12, 1 - 1e-12)
    return -(mean * np.log(mean) + (1 - mean) * np.log(1 - mean))


def select_pairs(n: int, method: str, member_returns: np.ndarray | None = None,
                 rng: np.random.Generator | None = None, n_candidates: int | None = None) -> np.ndarray:
    """Choose ``n`` of the candidate pairs.

    :param method: ``uniform``, ``disagreement`` or ``entropy`` (see the module doc).
    :param member_returns: the ensemble's predicted segment returns, shape ``(K, n_candidates, 2)``; required by
        ``disagreement`` (``K >= 2``) and ``entropy``; ``uniform`` uses only its length.
    :param rng: draws the uniform choice and breaks ties (default: a fresh unseeded generator).
    :param n_candidates: the number of candidates for ``uniform`` without ``member_returns``.
    :return: int64 indices into the candidates, ``n`` distinct ones, most informative first (uniform: random order).
    :raises ConfigError: an unknown method, missing or malformed returns, ``K < 2`` for disagreement, or ``n``
        outside ``1..n_candidates``.
    """
    rng = rng if rng is not None else np.random.default_rng()
    if method not in METHODS:
        raise ConfigError(f"select: unknown selection method {method!r}; expected one of {', '.join(METHODS)}")
    returns = None if member_returns is None else _check_returns(member_returns)
    if returns is None and method != "uniform":
        raise ConfigError(f"select: {method!r} selection needs a reward model's predicted segment returns; expected "
                          "a model (or use uniform selection)")
    total = returns.shape[1] if returns is not None else n_candidates
    if total is None:
        raise ConfigError("select: uniform selection needs member_returns or n_candidates")
    if not 1 <= n <= total:
        raise ConfigError(f"n: asked for {n} pairs out of {total} candidates; expected 1 <= n <= the number of "
                          "candidates")
    if method == "uniform":
        return rng.choice(total, size=n, replace=False).astype(np.int64)
    if method == "disagreement" and returns.shape[0] < 2:
        raise ConfigError(f"select: disagreement selection needs an ensemble of K >= 2 members, the model has "
                          f"K={returns.shape[0]}; train the reward model with --ensemble K (or use --select entropy)")
    scores = selection_scores(method, returns)
    order = rng.permutation(total)  # random tie-breaking: a stable sort of a shuffled order
    ranked = order[np.argsort(-scores[order], kind="stable")]
    return ranked[:n].astype(np.int64)


def _check_returns(member_returns: np.ndarray) -> np.ndarray:
    arr = np.asarray(member_returns, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != 2 or arr.shape[0] < 1:
        raise ConfigError(f"member_returns: expected shape (K members, n_candidates, 2), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError("member_returns: the model predicted non-finite segment returns; expected finite numbers")
    return arr


def spread_index(points: np.ndarray, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Choose ``n`` rows of ``points`` spread out (greedy k-center): from a random first row, each next row is the
    one farthest from every row chosen so far, in z-scored columns (a constant column counts for nothing).

    Which transitions to label for a new task: a handful of uniform draws can land on near-duplicates or all
    miss the region where the new reward differs; spread-out rows cannot (benchmarks/RESULTS.md, issue #9).

    :param points: shape ``(n_candidates, d)``, finite.
    :param rng: draws the first row (default: a fresh unseeded generator).
    :return: int64 indices into ``points``, ``n`` distinct ones, in the order chosen.
    :raises ConfigError: ``points`` not a finite 2-D array, or ``n`` outside ``1..n_candidates``.
    """
    rng = rng if rng is not None else np.random.default_rng()
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or not np.isfinite(pts).all():
        raise ConfigError(f"points: expected a finite 2-D array of candidates, got shape {pts.shape}")
    if not 1 <= n <= len(pts):
        raise ConfigError(f"n: asked for {n} rows out of {len(pts)} candidates; expected 1 <= n <= the number of "
                          "candidates")
    std = pts.std(axis=0)
    z = (pts - pts.mean(axis=0)) / np.where(std > 0, std, 1.0)
    chosen = [int(rng.integers(len(z)))]
    dist = ((z - z[chosen[0]]) ** 2).sum(axis=1)
    dist[chosen[0]] = -1.0  # chosen rows stay below every candidate (duplicates of them are still candidates)
    for _ in range(n - 1):
        i = int(dist.argmax())
        chosen.append(i)
        np.minimum(dist, ((z - z[i]) ** 2).sum(axis=1), out=dist)
        dist[i] = -1.0
    return np.asarray(chosen, np.int64)
