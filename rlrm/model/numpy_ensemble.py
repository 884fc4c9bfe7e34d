"""The NumPy reward path of an ensemble: all K members in one batched computation per call.

Each member's path is first folded as :class:`~rlrm.model.numpy_fn.NumpyRewardFn` folds one model (input
standardization into the first layer, label scale into the head, ones column carrying the biases); the K
augmented weight matrices of a layer are then stacked as ``(K, in + 1, out + 1)``. A call is:

- one features fill, shared by every member (the raw features do not depend on the member);
- one copy into a ``(K, n, d + 1)`` buffer and a clip against per-member bounds (each member has its own
  statistics; a copy then same-shape ufuncs cost less than a broadcasting ``np.maximum``);
- per layer, one ``np.matmul`` over the K stacked matrices plus its activation (a plain loop for Linear+ReLU
  MLPs, as :func:`rlrm.model.numpy_fn._relu_runner`);
- the heads folded with the mean over members into one matrix-vector dot: the last hidden layer is written in an
  ``(n, K, h + 1)`` layout (its matmul writes through a transposed view), so its rows are the members' hidden
  units side by side and ``mean = H @ mean(block-diagonal heads)``. :meth:`NumpyEnsembleRewardFn.with_std` gets
  the mean and every member's deviation from it in one dot (the centering is linear, so it is folded into the
  weights in float64: no cancellation of large label means), then the std (ddof 0) in three calls.

So the number of NumPy calls per step is about that of one model (benchmarks/RESULTS.md, issue #10).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from torch import nn

from rlrm.errors import ConfigError
from rlrm.model.compiled import relu_mlp
from rlrm.model.numpy_fn import NumpyRewardFn, _activation, _filler, _relu

_F32 = np.dtype(np.float32)


def _stacked_layer_norm(modules: list[nn.LayerNorm]) -> Callable[[np.ndarray], np.ndarray]:
    """LayerNorm over the last axis of a ``(K, n, w)`` view, with each member's own gain and bias."""
    def param(m: nn.LayerNorm, name: str, default: float) -> np.ndarray:
        p = getattr(m, name)
        return p.detach().double().numpy() if p is not None else np.full(m.normalized_shape, default)

    g = np.stack([param(m, "weight", 1.0) for m in modules])[:, None, :]
    b = np.stack([param(m, "bias", 0.0) for m in modules])[:, None, :]
    eps = modules[0].eps

    def ln(x: np.ndarray) -> np.ndarray:
        mu = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True)
        x -= mu
        x *= g / np.sqrt(var + eps)
        x += b
        return x

    return ln


class NumpyEnsembleRewardFn:
    """``RewardFn`` of an ensemble's mean, with :meth:`with_std` for mean and std from one evaluation.

    Not thread-safe (shared preallocated buffers, as :class:`NumpyRewardFn`); returned arrays are fresh.
    """

    def __init__(self, template: NumpyRewardFn, weights: list[np.ndarray], posts: list[tuple[list[Any], bool]],
                 bounds: tuple[np.ndarray, np.ndarray], compiled: bool = True) -> None:
        """
        :param template: member 0's function: its group, task, spaces and dtype.
        :param weights: per layer, the members' augmented weights stacked ``(K, in + 1, out + 1)``; the head's
            ``(K, h + 1, 1)``.
        :param posts: per hidden layer, (ops on a ``(K, n, w)`` array, whether they need the view without the
            ones column).
        :param bounds: (low, high) of the raw features per member, ``(K, d)`` each.
        :param compiled: use the compiled kernel (:mod:`rlrm.model.compiled`) where it applies.
        """
        self.group = template.group
        self.task = template.task
        self.observation_space = template.observation_space
        self.action_space = template.action_space
        self.dtype = template.dtype
        self.k = len(bounds[0])
        self._weights = [np.ascontiguousarray(w, dtype=self.dtype) for w in weights[:-1]]
        self._posts = posts
        self._bounds = bounds
        k, dt = self.k, self.dtype
        heads = np.asarray(weights[-1], np.float64).reshape(k, -1)
        h1 = heads.shape[1]
        block = np.zeros((k * h1, k))  # member j's head in rows j*h1..(j+1)*h1 of column j
        for j in range(k):
            block[j * h1:(j + 1) * h1, j] = heads[j]
        mean = block.mean(axis=1)
        self._head_members = block.astype(dt)
        self._head_mean = mean.astype(dt)
        # rows 0..K-1: each member's deviation from the mean; row K: the mean
        self._head_dev_mean = np.ascontiguousarray(np.hstack([block - mean[:, None], mean[:, None]]).T.astype(dt))
        self._var_w = np.full(k, 1.0 / k, dt)
        self._n = -1
        self._x = np.empty((0, 0), dt)
        self._h = np.empty((0, k * h1), dt)  # the last hidden layer, (n, K * (h + 1))
        self._h_dot, self._ht = self._h.dot, self._h.T
        self._fill: Callable[..., bool] = lambda *args: False
        self._layers: Callable[[], None] = lambda: None
        relu_only = all(post == [_relu] for post, _ in posts)
        members = [[w[j] for w in weights[:-1]] + [np.asarray(weights[-1][j]).ravel()] for j in range(k)]
        kernel = compiled and relu_only
        self._kernel = relu_mlp(self.group, members, list(zip(*bounds)), dt) if kernel else None
        self._kernel_std = relu_mlp(self.group, members, list(zip(*bounds)), dt, std=True) if kernel else None

    @property
    def compiled(self) -> bool:
        """Whether ``__call__`` and :meth:`with_std` take the compiled kernel before the NumPy path."""
        return self._kernel is not None

    @classmethod
    def from_members(cls, fns: list[NumpyRewardFn], modules: list[list[nn.Module]],
                     compiled: bool = True) -> NumpyEnsembleRewardFn:
        """Stack the folded paths of K members of one structure.

        :param fns: each member's :class:`NumpyRewardFn` for the task, all of one dtype.
        :param modules: each member's modules of that path (stem, then encoder), to rebuild the activations and
            the LayerNorms with every member's own parameters.
        :param compiled: use the compiled kernel where it applies.
        """
        if any(f.symexp_output for f in fns):
            raise ConfigError(f"task {fns[0].task!r}: an ensemble of models with a symlog label transform has no "
                              "fast path yet; train its members without --label-transform")
        per_layer = list(zip(*(f.layer_weights for f in fns)))
        weights = [np.stack(ws) for ws in per_layer[:-1]] + [np.stack(per_layer[-1])[:, :, None]]
        posts: list[tuple[list[Any], bool]] = []
        for i, m in enumerate(modules[0]):
            if isinstance(m, nn.Linear):
                posts.append(([], False))
                continue
            ops, on_view = posts[-1]
            if isinstance(m, nn.LayerNorm):
                ops.append(_stacked_layer_norm([mods[i] for mods in modules]))
            else:
                ops.append(_activation(m))
            posts[-1] = (ops, on_view or not isinstance(m, nn.ReLU))
        bounds = (np.stack([f.bounds[0] for f in fns]), np.stack([f.bounds[1] for f in fns]))
        return cls(fns[0], weights, posts, bounds, compiled)

    def _plan(self, n: int) -> None:
        """Buffers for ``n`` rows and the layer operations, bound to them once."""
        dt, k = self.dtype, self.k
        x = np.ones((n, self.group.dim + 1), dt)
        xk = np.ones((k, n, self.group.dim + 1), dt)
        ones = np.ones((k, 1), dt)
        low, high = (np.ascontiguousarray(np.broadcast_to(np.hstack([b, ones])[:, None, :].astype(dt), xk.shape))
                     for b in self._bounds)
        # matmul with a positional out: less argument parsing than out= (unlike clip, see numpy_fn)
        ops: list[Callable[[], Any]] = []
        # (in, weight, out, out as a contiguous array, zeros) while all layers are Linear+ReLU
        relu_layers: list[tuple[np.ndarray, ...]] | None = []
        src = xk
        for i, (w, (post, on_view)) in enumerate(zip(self._weights, self._posts)):
            last = i == len(self._weights) - 1
            # the last hidden layer as (n, K, w): its (K, n, w) view is what matmul writes (rows of stride K * w,
            # which BLAS takes as they are), the (n, K * w) matrix what the folded heads read
            buf = np.ones((n, k, w.shape[2]), dt) if last else None
            out = buf.transpose(1, 0, 2) if buf is not None else np.ones((k, n, w.shape[2]), dt)
            ops.append(partial(np.matmul, src, w, out))
            # activations on the contiguous buffer where they can (a ufunc on the transposed view costs 3x)
            view = out[:, :, :-1] if on_view else buf if buf is not None else out
            for op in post:
                ops.append(partial(np.maximum, view, np.zeros(view.shape, dt), out=view) if op is _relu
                           else partial(op, view))
            if relu_layers is not None and [op is _relu for op in post] == [True]:
                relu_layers.append((src, w, out, view, ops[-1].args[1]))
            else:
                relu_layers = None
            src = out
            if buf is not None:
                self._h = buf.reshape(n, -1)
        layers = _layers(x, xk, low, high, tuple(ops)) if relu_layers is None else \
            _relu_layers(x, xk, low, high, tuple(relu_layers))
        self._h_dot, self._ht = self._h.dot, self._h.T
        self._x = x[:, :-1]
        self._fill = _filler(self.group, n, self._x, dt)
        self._layers = layers
        self._n = n

    def _evaluate(self, obs: Any, action: Any, next_obs: Any, done: Any) -> None:
        """Fill the features and run the layers up to the last hidden one (``self._h``)."""
        if not self._fill(obs, action, next_obs, done):
            feats = self.group.features(obs, action, next_obs, done)  # any batch predict accepts, or its SpaceError
            if len(feats) != self._n:
                self._plan(len(feats))
            self._x[...] = feats
        self._layers()

    def __call__(self, obs: Any, action: Any, next_obs: Any, done: Any) -> np.ndarray:
        """The members' mean reward, float32 ``(n,)``."""
        if self._kernel is not None:
            mean = self._kernel(obs, action, next_obs, done)
            if mean is not None:
                return mean
        self._evaluate(obs, action, next_obs, done)
        mean = self._h_dot(self._head_mean)
        return mean if self.dtype is _F32 else mean.astype(np.float32)

    def with_std(self, obs: Any, action: Any, next_obs: Any, done: Any) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std across members) of one evaluation, float32 ``(n,)`` each; std with ddof 0."""
        if self._kernel_std is not None:
            both = self._kernel_std(obs, action, next_obs, done)
            if both is not None:
                return both[0], both[1]
        self._evaluate(obs, action, next_obs, done)
        out = self._head_dev_mean.dot(self._ht)  # (K + 1, n), fresh: deviations, then the mean
        dev = out[:-1]
        np.multiply(dev, dev, out=dev)
        std = self._var_w.dot(dev)
        np.sqrt(std, out=std)
        if self.dtype is _F32:
            return out[-1], std
        return out[-1].astype(np.float32), std.astype(np.float32)

    def members(self, obs: Any, action: Any, next_obs: Any, done: Any) -> np.ndarray:
        """Every member's reward, a fresh float32 ``(K, n)`` array."""
        self._evaluate(obs, action, next_obs, done)
        return np.ascontiguousarray(self._h_dot(self._head_members).T, dtype=np.float32)


def _layers(x: np.ndarray, xk: np.ndarray, low: np.ndarray, high: np.ndarray,
            ops: tuple[Callable[[], Any], ...]) -> Callable[[], None]:
    """The clip and the hidden layers (prebuilt operations), on buffers bound once."""
    copyto, maximum, minimum = np.copyto, np.maximum, np.minimum

    def run() -> None:
        copyto(xk, x)
        maximum(xk, low, out=xk)
        minimum(xk, high, out=xk)
        for op in ops:
            op()

    return run


def _relu_layers(x: np.ndarray, xk: np.ndarray, low: np.ndarray, high: np.ndarray,
                 layers: tuple[tuple[np.ndarray, ...], ...]) -> Callable[[], None]:
    """:func:`_layers` for Linear+ReLU MLPs (the default): a plain loop of ``matmul`` and ``maximum``."""
    copyto, maximum, minimum, matmul = np.copyto, np.maximum, np.minimum, np.matmul

    def run() -> None:
        copyto(xk, x)
        maximum(xk, low, out=xk)
        minimum(xk, high, out=xk)
        for src, w, out, act, zeros in layers:
            matmul(src, w, out)
            maximum(act, zeros, out=act)

    return run
