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
#: (measured crossover: 16-32 rows for one default network, ~16 for an ensemble of 3: benchmarks/RESULTS.md)
MAX_ROWS = 16


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


#: fields of a packed parameter array before the hidden layers' widths: members, hidden layers, obs dim, action
#: columns, done input (see :func:`_pack`)
_HEAD = 5


def _pack(layout: tuple[int, int, bool, bool], members: list[list[np.ndarray]],
          bounds: list[tuple[np.ndarray, np.ndarray]], dtype: np.dtype) -> np.ndarray | None:
    """Every number the kernel needs in one flat array (on a vector step each argument of a compiled call costs, a
    tuple of arrays most): the header (:data:`_HEAD` fields, then the widths), then per member its feature bounds
    ``low, high``, each hidden layer's weight ``(in, out)`` and bias, the head's weights and bias. ``None`` if the
    layers do not chain."""
    d, k, _, with_done = layout
    m = 2 * d + k + with_done
    widths = [w.shape[1] - 1 for w in members[0][:-1]]
    if not widths:
        return None
    parts: list[np.ndarray] = [np.array([len(members), len(widths), d, k, with_done, *widths], np.float64)]
    for ws, (lo, hi) in zip(members, bounds):
        if len(ws) != len(widths) + 1 or np.shape(lo) != (m,) or np.shape(hi) != (m,):
            return None
        parts += [np.asarray(lo, np.float64), np.asarray(hi, np.float64)]
        rows = m
        for w, cols in zip(ws[:-1], widths):
            if w.shape != (rows + 1, cols + 1):
                return None
            parts += [w[:-1, :-1].ravel(), w[-1, :-1]]  # an augmented weight: (in, out) above its bias row
            rows = cols
        if ws[-1].shape != (rows + 1,):
            return None
        parts.append(ws[-1])  # the head: weights, then the bias
    return np.ascontiguousarray(np.concatenate(parts), dtype=dtype)


def relu_mlp(group: InputGroup, members: list[list[np.ndarray]], bounds: list[tuple[np.ndarray, np.ndarray]],
             dtype: np.dtype, std: bool = False) -> Callable[..., np.ndarray | None] | None:
    """A compiled ``run(obs, action, next_obs, done)`` for the members' Linear+ReLU paths, or ``None`` when the
    group's layout is not the default one or numba is unavailable.

    :param members: per member, its augmented weights as :attr:`NumpyRewardFn.layer_weights` gives them (hidden
        layers ``(in + 1, out + 1)`` with a bias row and a column carrying the ones, then the head's vector).
    :param bounds: per member, the (low, high) its raw features are clipped to.
    :param dtype: the hidden layers' dtype (the head and the members' mean and std are computed in float64).
    :param std: ``run`` gives a fresh float32 ``(2, n)`` array, the members' mean then their std (ddof 0);
        otherwise a fresh float32 ``(n,)`` array, the mean. ``None`` for a batch it declines.
    """
    layout = default_layout(group)
    if layout is None or not available():
        return None
    params = _pack(layout, members, bounds, np.dtype(dtype))
    if params is None:
        return None
    discrete, with_done = layout[2], layout[3]
    kernels = {(False, True): _mean_discrete, (False, False): _mean_box, (True, True): _stats_discrete,
               (True, False): _stats_box}
    kernel = kernels[std, discrete]
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
            y = kernel(obs, action, next_obs, done, params)
        except Exception as err:  # a compile or cache failure: keep the NumPy path from now on
            state["broken"] = True
            warnings.warn(f"rlrm: the compiled reward kernel failed ({type(err).__name__}: {err}); using the NumPy "
                          "path", RuntimeWarning, stacklevel=2)
            return None
        return y if y.shape[-1] else None  # no rows: declined (or an empty batch, which NumPy answers)

    return run


def _net(x: np.ndarray, p: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    """Run the packed members (:func:`_pack`) on the raw features ``x`` (``(n, m)``): clip, Linear+ReLU layers,
    head (float64). Writes the members' mean into ``mean`` and, if ``std`` has ``n`` entries, their std (ddof 0).

    Hidden values are kept before their ReLU and rectified as the next layer reads them; a row of the weights is
    skipped where its input is zero (the one-hot columns, half the ReLU outputs)."""
    n, m = x.shape
    kk = int(p[0])
    nl = int(p[1])
    width = m
    for layer in range(nl):
        width = max(width, int(p[_HEAD + layer]))
    a = np.empty(m, p.dtype)
    h = np.empty((nl, width), p.dtype)  # each layer's output in its own row: no aliasing, the loops vectorize
    ys = np.empty(kk)
    with_std = std.shape[0] == n
    for i in range(n):
        off = _HEAD + nl
        for j in range(kk):
            for c in range(m):
                v = x[i, c]
                lo = p[off + c]
                hi = p[off + m + c]
                a[c] = lo if v < lo else hi if v > hi else v
            off += 2 * m
            rows = m
            for layer in range(nl):
                cols = int(p[_HEAD + layer])
                w = p[off:off + rows * cols].reshape((rows, cols))
                off += rows * cols
                dst = h[layer]
                for q in range(cols):
                    dst[q] = p[off + q]
                off += cols
                if layer == 0:
                    for r in range(rows):
                        v = a[r]
                        if v != 0.0:
                            for q in range(cols):
                                dst[q] += v * w[r, q]
                else:
                    src = h[layer - 1]
                    for r in range(rows):
                        v = src[r]
                        if not v <= 0.0:  # the previous layer's ReLU (a NaN passes, as through torch's)
                            for q in range(cols):
                                dst[q] += v * w[r, q]
                rows = cols
            last = h[nl - 1]
            y = 0.0
            for q in range(rows):
                v = last[q]
                if not v <= 0.0:
                    y += np.float64(v) * np.float64(p[off + q])
            ys[j] = y + np.float64(p[off + rows])
            off += rows + 1
        mu = ys.sum() / kk
        mean[i] = mu
        if with_std:
            var = 0.0
            for j in range(kk):
                var += (ys[j] - mu) ** 2
            std[i] = np.sqrt(var / kk)


def _features_discrete(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, done: np.ndarray,
                       p: np.ndarray) -> np.ndarray:
    """Raw features ``[obs, one_hot(action), next_obs(, done)]`` (``(n, m)``, in the parameters' dtype); no rows
    for a batch of mismatched shapes or an action outside ``[0, k)``."""
    n = obs.shape[0]
    d, k, with_done = int(p[2]), int(p[3]), p[4] != 0
    m = 2 * d + k + (1 if with_done else 0)
    if (obs.shape[1] != d or action.shape[0] != n or next_obs.shape[0] != n or next_obs.shape[1] != d
            or (with_done and done.shape[0] != n)):
        return np.empty((0, m), p.dtype)
    x = np.zeros((n, m), p.dtype)
    for i in range(n):
        a = action[i]
        if a < 0 or a >= k:
            return np.empty((0, m), p.dtype)
        for c in range(d):
            x[i, c] = obs[i, c]
            x[i, d + k + c] = next_obs[i, c]
        x[i, d + a] = 1.0
        if with_done:
            x[i, m - 1] = done[i]
    return x


def _features_box(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, done: np.ndarray,
                  p: np.ndarray) -> np.ndarray:
    """:func:`_features_discrete` for a Box action of ``k`` columns."""
    n = obs.shape[0]
    d, k, with_done = int(p[2]), int(p[3]), p[4] != 0
    m = 2 * d + k + (1 if with_done else 0)
    if (obs.shape[1] != d or action.shape[0] != n or action.shape[1] != k or next_obs.shape[0] != n
            or next_obs.shape[1] != d or (with_done and done.shape[0] != n)):
        return np.empty((0, m), p.dtype)
    x = np.empty((n, m), p.dtype)
    for i in range(n):
        for c in range(d):
            x[i, c] = obs[i, c]
            x[i, d + k + c] = next_obs[i, c]
        for c in range(k):
            x[i, d + c] = action[i, c]
        if with_done:
            x[i, m - 1] = done[i]
    return x


# The entry points: features, then the members; results are made here (returning a global array would make numba
# type every result read-only, and SB3 adds to the rewards it gets in place).

def _mean_discrete(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, done: np.ndarray,
                   p: np.ndarray) -> np.ndarray:
    x = _features_discrete(obs, action, next_obs, done, p)
    mean = np.empty(x.shape[0], np.float32)
    _net(x, p, mean, mean[:0])
    return mean


def _mean_box(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, done: np.ndarray,
              p: np.ndarray) -> np.ndarray:
    x = _features_box(obs, action, next_obs, done, p)
    mean = np.empty(x.shape[0], np.float32)
    _net(x, p, mean, mean[:0])
    return mean


def _stats_discrete(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, done: np.ndarray,
                    p: np.ndarray) -> np.ndarray:
    x = _features_discrete(obs, action, next_obs, done, p)
    out = np.empty((2, x.shape[0]), np.float32)
    _net(x, p, out[0], out[1])
    return out


def _stats_box(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, done: np.ndarray,
               p: np.ndarray) -> np.ndarray:
    x = _features_box(obs, action, next_obs, done, p)
    out = np.empty((2, x.shape[0]), np.float32)
    _net(x, p, out[0], out[1])
    return out


if numba is not None:  # compiled lazily per argument types, cached on disk; the plain functions stay testable
    _jit = numba.njit(cache=True, nogil=True, boundscheck=False)
    _net = _jit(_net)
    _features_discrete = _jit(_features_discrete)
    _features_box = _jit(_features_box)
    _mean_discrete = _jit(_mean_discrete)
    _mean_box = _jit(_mean_box)
    _stats_discrete = _jit(_stats_discrete)
    _stats_box = _jit(_stats_box)
