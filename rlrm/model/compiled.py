"""A compiled (numba) forward pass of the default reward network, for the wrappers' hot path.

On a vector step of a few envs the NumPy path (:mod:`rlrm.model.numpy_fn`) costs about a dozen NumPy calls whose
fixed cost dwarfs the arithmetic; one compiled call replaces them all, and an ensemble's K members cost one
call too (benchmarks/RESULTS.md, "Wrapper overhead: a compiled kernel"). It covers the default network and
inputs only: a 1-D Box observation, a Discrete (start 0) or 1-D Box action, inputs ``obs, action, next_obs``
and optionally ``done``, Linear+ReLU hidden layers and a plain head, on batches of at most :data:`MAX_ROWS` rows.
Everything else, and any batch the kernel declines (a list, another dtype or shape, an action out of range),
takes the NumPy path, which gives the same numbers (within float rounding) and the same errors.

The kernel is compiled on first use for each combination of argument types (a few seconds) and cached on disk
by numba; without numba, or with ``NUMBA_DISABLE_JIT=1``, every call takes the NumPy path.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

from rlrm.model.features import InputGroup

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; a platform without its wheels keeps the NumPy path
    numba = None

_F32, _F64, _BOOL, _I64 = (np.dtype(t) for t in (np.float32, np.float64, bool, np.int64))

#: the kernel takes batches of at most this many rows (a VecEnv's step); larger ones (EPIC, relabelling a buffer)
#: go to the NumPy path, whose BLAS calls beat the kernel's row-by-row loops once their fixed cost is spread
#: (on this project's 2-core host the kernel costs ~0.7 us a row for the default network: benchmarks/RESULTS.md)
MAX_ROWS = 32


def available() -> bool:
    """Whether compiled kernels can be used (numba imports and its JIT is not disabled)."""
    return numba is not None and not numba.config.DISABLE_JIT


def default_layout(group: InputGroup) -> tuple[int, int, bool, bool] | None:
    """``(obs dim, action columns, discrete action, done input)`` when ``group`` has the default inputs on a 1-D
    Box observation and a Discrete (start 0) or 1-D Box action, else ``None``."""
    names = list(group.inputs)
    with_done = names[-1:] == ["done"]
    if names[:3] != ["obs", "action", "next_obs"] or len(names) != 3 + with_done:
        return None
    obs, action = group.obs.space, group.action.space
    if not (isinstance(obs, spaces.Box) and len(obs.shape) == 1):
        return None
    if isinstance(action, spaces.Discrete) and int(action.start) == 0 and int(action.n) > 0:
        return int(obs.shape[0]), int(action.n), True, with_done
    if isinstance(action, spaces.Box) and len(action.shape) == 1:
        return int(obs.shape[0]), int(action.shape[0]), False, with_done
    return None


def relu_mlp(group: InputGroup, members: list[list[np.ndarray]], bounds: list[tuple[np.ndarray, np.ndarray]],
             dtype: np.dtype) -> Callable[..., np.ndarray | None] | None:
    """A compiled ``run(obs, action, next_obs, done)`` for the members' Linear+ReLU paths, or ``None`` when the
    group's layout is not the default one or numba is unavailable.

    :param members: per member, its augmented weights as :attr:`NumpyRewardFn.layer_weights` gives them (hidden
        layers ``(in + 1, out + 1)`` with a bias row and a column carrying the ones, then the head's vector).
    :param bounds: per member, the (low, high) its raw features are clipped to.
    :param dtype: the hidden layers' dtype (the head and the members' mean and std are computed in float64).
    :return: ``run`` gives a fresh float32 ``(2, n)`` array (the members' mean, then their std with ddof 0) or
        ``None`` for a batch it declines (more than :data:`MAX_ROWS` rows among them).
    """
    layout = default_layout(group)
    if layout is None or not available():
        return None
    d, k, discrete, with_done = layout
    dt = np.dtype(dtype)
    hidden = tuple(np.ascontiguousarray(np.stack(ws), dtype=dt) for ws in zip(*(m[:-1] for m in members)))
    head = np.ascontiguousarray(np.stack([m[-1] for m in members]), dtype=np.float64)
    low = np.ascontiguousarray(np.stack([np.r_[lo, 1.0] for lo, _ in bounds]), dtype=dt)
    high = np.ascontiguousarray(np.stack([np.r_[hi, 1.0] for _, hi in bounds]), dtype=dt)
    if low.shape[1] != 2 * d + k + with_done + 1 or not hidden:
        return None
    kernel = _forward_discrete if discrete else _forward_box
    no_done = np.zeros(0, _BOOL)
    state = {"broken": False}

    def run(obs: Any, action: Any, next_obs: Any, done: Any) -> np.ndarray | None:
        # only the argument types the kernel is meant for (each new combination would be compiled)
        if (type(obs) is not np.ndarray or type(next_obs) is not np.ndarray or type(action) is not np.ndarray
                or obs.ndim != 2 or next_obs.ndim != 2 or len(obs) > MAX_ROWS
                or (obs.dtype is not _F32 and obs.dtype is not _F64) or next_obs.dtype is not obs.dtype
                or state["broken"]):
            return None
        if discrete:
            if action.ndim != 1 or action.dtype is not _I64:
                return None
        elif action.ndim != 2 or (action.dtype is not _F32 and action.dtype is not _F64):
            return None
        if not with_done:
            done = no_done
        elif type(done) is not np.ndarray or done.ndim != 1 or (
                done.dtype is not _BOOL and done.dtype is not _F32 and done.dtype is not _F64):
            return None
        try:
            y = kernel(obs, action, next_obs, done, k, with_done, low, high, hidden, head)
        except Exception as err:  # a compile or cache failure: keep the NumPy path from now on
            state["broken"] = True
            warnings.warn(f"rlrm: the compiled reward kernel failed ({type(err).__name__}: {err}); using the NumPy "
                          "path", RuntimeWarning, stacklevel=2)
            return None
        return y if y.shape[0] else None

    return run


def _mlp_rows(x: np.ndarray, low: np.ndarray, high: np.ndarray, hidden: tuple[np.ndarray, ...],
              head: np.ndarray) -> np.ndarray:
    """Clip each member's copy of the features ``x`` (``(n, d + 1)``, a ones column last), run its layers, and
    return float32 ``(2, n)``: the members' mean and std (ddof 0)."""
    n, m = x.shape
    kk = low.shape[0]
    nl = len(hidden)
    width = m
    for layer in range(nl):
        width = max(width, hidden[layer].shape[2])
    a = np.empty(width, x.dtype)
    h = np.empty((nl, width), x.dtype)  # each layer's output in its own row: no aliasing, the loops vectorize
    ys = np.empty(kk)
    out = np.empty((2, n), np.float32)
    for i in range(n):
        for j in range(kk):
            for c in range(m):
                v = x[i, c]
                lo = low[j, c]
                hi = high[j, c]
                a[c] = lo if v < lo else hi if v > hi else v
            for layer in range(nl):
                w = hidden[layer][j]
                rows, cols = w.shape
                src = a if layer == 0 else h[layer - 1]
                dst = h[layer]
                for q in range(cols):
                    dst[q] = 0.0
                for r in range(rows):
                    v = src[r]
                    if v != 0.0:  # ReLU zeros and one-hot columns: about half the rows
                        for q in range(cols):
                            dst[q] += v * w[r, q]
                for q in range(cols):
                    if dst[q] < 0.0:
                        dst[q] = 0.0
            last = h[nl - 1]
            hw = head[j]
            y = 0.0
            for q in range(hw.shape[0]):
                y += np.float64(last[q]) * hw[q]
            ys[j] = y
        mean = ys.sum() / kk
        var = 0.0
        for j in range(kk):
            var += (ys[j] - mean) ** 2
        out[0, i] = mean
        out[1, i] = np.sqrt(var / kk)
    return out


def _forward_discrete(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, done: np.ndarray, k: int,
                      with_done: bool, low: np.ndarray, high: np.ndarray, hidden: tuple[np.ndarray, ...],
                      head: np.ndarray) -> np.ndarray:
    """Features ``[obs, one_hot(action), next_obs(, done), 1]`` then :func:`_mlp_rows`; an empty array for a batch
    of mismatched shapes or an action outside ``[0, k)`` (made here: returning a global array would make numba
    type every result read-only, and SB3 adds to the rewards it gets in place)."""
    n, d = obs.shape
    m = 2 * d + k + (1 if with_done else 0)
    if (action.shape[0] != n or next_obs.shape[0] != n or next_obs.shape[1] != d or low.shape[1] != m + 1
            or (with_done and done.shape[0] != n)):
        return np.empty((0, 0), np.float32)
    x = np.zeros((n, m + 1), low.dtype)
    for i in range(n):
        a = action[i]
        if a < 0 or a >= k:
            return np.empty((0, 0), np.float32)
        for c in range(d):
            x[i, c] = obs[i, c]
            x[i, d + k + c] = next_obs[i, c]
        x[i, d + a] = 1.0
        if with_done:
            x[i, m - 1] = done[i]
        x[i, m] = 1.0
    return _mlp_rows(x, low, high, hidden, head)


def _forward_box(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, done: np.ndarray, k: int,
                 with_done: bool, low: np.ndarray, high: np.ndarray, hidden: tuple[np.ndarray, ...],
                 head: np.ndarray) -> np.ndarray:
    """:func:`_forward_discrete` for a Box action of ``k`` columns."""
    n, d = obs.shape
    m = 2 * d + k + (1 if with_done else 0)
    if (action.shape[0] != n or action.shape[1] != k or next_obs.shape[0] != n or next_obs.shape[1] != d
            or low.shape[1] != m + 1 or (with_done and done.shape[0] != n)):
        return np.empty((0, 0), np.float32)
    x = np.empty((n, m + 1), low.dtype)
    for i in range(n):
        for c in range(d):
            x[i, c] = obs[i, c]
            x[i, d + k + c] = next_obs[i, c]
        for c in range(k):
            x[i, d + c] = action[i, c]
        if with_done:
            x[i, m - 1] = done[i]
        x[i, m] = 1.0
    return _mlp_rows(x, low, high, hidden, head)


if numba is not None:  # compiled lazily per argument types, cached on disk; the plain functions stay testable
    _jit = numba.njit(cache=True, nogil=True, boundscheck=False)
    _mlp_rows = _jit(_mlp_rows)
    _forward_discrete = _jit(_forward_discrete)
    _forward_box = _jit(_forward_box)
