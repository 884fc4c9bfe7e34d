"""A NumPy-only inference path for one task's reward, built from a ``RewardModel``'s weights.

The wrapper calls the reward once per environment step, where a torch call (tensor conversion,
dispatch, autograd bookkeeping) costs more than the arithmetic of a small MLP on a few rows. This path
folds input standardization into the first layer and the label scale into the head, computes in
float64 with preallocated buffers, and matches :meth:`RewardModel.predict` within 1e-5.

At ~1 us per NumPy call on a few rows, the number of calls is the cost: for a batch size it has seen,
a call is one features fill (one ``np.concatenate`` into a preallocated buffer), then a fixed list of
prebuilt operations (``np.dot`` into contiguous buffers, in-place activations), then one copy out.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from gymnasium import spaces
from torch import nn

from rlrm import spaces as sp
from rlrm.model.network import InputGroup, RewardModel, head_key

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_ARG_INDEX = {"obs": 0, "action": 1, "next_obs": 2, "done": 3}


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


def _activation(module: nn.Module) -> Callable[[np.ndarray], Any]:
    if isinstance(module, nn.ReLU):
        return _relu  # recognized by the plan, which gives it a preallocated zero operand
    if isinstance(module, nn.Tanh):
        return lambda x: np.tanh(x, out=x)
    if isinstance(module, nn.SiLU):
        return lambda x: np.multiply(x, 1.0 / (1.0 + np.exp(-x)), out=x)
    if isinstance(module, nn.ELU):
        return lambda x: np.copyto(x, np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))) or x
    if isinstance(module, nn.GELU):
        from math import erf, sqrt

        verf = np.vectorize(erf, otypes=[np.float64])
        return lambda x: np.multiply(x, 0.5 * (1.0 + verf(x / sqrt(2.0))), out=x)
    raise TypeError(f"no NumPy version of {module}")


def _layer_norm(module: nn.LayerNorm) -> Callable[[np.ndarray], np.ndarray]:
    g = module.weight.detach().double().numpy() if module.weight is not None else 1.0
    b = module.bias.detach().double().numpy() if module.bias is not None else 0.0
    eps = module.eps

    def ln(x: np.ndarray) -> np.ndarray:
        mu = x.mean(axis=1, keepdims=True)
        var = x.var(axis=1, keepdims=True)
        x -= mu
        x *= g / np.sqrt(var + eps)
        x += b
        return x

    return ln


def _filler(group: InputGroup, n: int, out: np.ndarray) -> Callable[..., bool]:
    """A features fill for batches of ``n`` rows into ``out`` (the buffer without its ones column).

    The usual inputs take a short path with cheap exact checks: a 1-D Box batch (ndarray of shape
    ``(n, d)``, float32/float64) is appended as it is; a Discrete batch (int64 ndarray of shape ``(n,)``,
    start 0, no negative value) becomes rows of an identity matrix (``ndarray.take``, which raises on a
    value past the end). Other spaces go through the group's own adapter blocks (same checks, same errors).
    When a short-path check fails the fill returns False and the caller runs the general
    :meth:`InputGroup.features`, which accepts or rejects the batch exactly as :meth:`RewardModel.predict`.
    """
    box, discrete, other, done = 0, 1, 2, 3
    plan: list[tuple[int, int, Any]] = []
    for name in group.inputs:
        if name == "done":
            plan.append((done, _ARG_INDEX[name], None))
            continue
        adapter: sp.SpaceAdapter = getattr(group, name)
        space = adapter.space
        if isinstance(space, spaces.Box) and len(space.shape) == 1:
            plan.append((box, _ARG_INDEX[name], (n, int(space.shape[0]))))
        elif isinstance(space, spaces.Discrete) and int(space.start) == 0 and n > 0:
            plan.append((discrete, _ARG_INDEX[name], np.eye(int(space.n), dtype=np.float32)))
        else:
            plan.append((other, _ARG_INDEX[name], adapter.blocks))
    f32, f64 = _FLOATS
    i64 = np.dtype(np.int64)
    shape_n = (n,)
    concatenate = np.concatenate
    if [(k, i) for k, i, _ in plan] in ([(box, 0), (box, 1), (box, 2)], [(box, 0), (discrete, 1), (box, 2)]):
        # The default inputs (obs, action, next_obs) on a Box observation space: the same checks, unrolled.
        obs_shape, eye = plan[0][2], plan[1][2] if plan[1][0] == discrete else None
        act_shape = shape_n if eye is not None else plan[1][2]
        ndarray = np.ndarray

        def fill3(obs: Any, action: Any, next_obs: Any, done: Any) -> bool:
            if not (type(obs) is ndarray and type(next_obs) is ndarray and type(action) is ndarray
                    and obs.shape == obs_shape and next_obs.shape == obs_shape and action.shape == act_shape
                    and (obs.dtype is f32 or obs.dtype is f64) and (next_obs.dtype is f32 or next_obs.dtype is f64)):
                return False
            if eye is None:
                if action.dtype is not f32 and action.dtype is not f64:
                    return False
                concatenate((obs, action, next_obs), axis=1, out=out)
                return True
            if action.dtype is not i64 or (min(action.tolist()) if n <= 64 else action.min()) < 0:
                return False
            try:
                concatenate((obs, eye.take(action, axis=0), next_obs), axis=1, out=out)
            except IndexError:
                return False
            return True

        return fill3

    def fill(*args: Any) -> bool:
        blocks: list[np.ndarray] = []
        for kind, i, arg in plan:
            x = args[i]
            if kind == box:
                if type(x) is not np.ndarray or x.shape != arg or (x.dtype is not f32 and x.dtype is not f64):
                    return False
                blocks.append(x)
            elif kind == discrete:
                if type(x) is not np.ndarray or x.shape != shape_n or x.dtype is not i64 or (
                        min(x.tolist()) if n <= 64 else x.min()) < 0:
                    return False
                try:
                    blocks.append(arg.take(x, axis=0))
                except IndexError:  # a value past the end: the general path raises the adapter's error
                    return False
            elif kind == other:
                arg(x, blocks)
            else:  # done, as InputGroup.features makes it
                d = np.asarray(x)
                blocks.append(d.reshape(len(d), 1))
        try:
            concatenate(blocks, axis=1, out=out)
        except ValueError:  # rows of different lengths: the general path raises its error
            return False
        return True

    return fill


class NumpyRewardFn:
    """``RewardFn`` for one task computed with NumPy (see module docstring).

    Every buffer carries a last column of ones, and every weight matrix a last row holding the bias
    (and, for hidden layers, a last column that carries the ones forward), so a layer is one ``np.dot``
    into a preallocated contiguous buffer plus its activation; ReLU keeps the ones column as it is,
    other activations and LayerNorm are applied to the view without it.
    """

    def __init__(self, group: InputGroup, layers: list[tuple[np.ndarray, list[Any], bool]], task: str) -> None:
        self.group = group
        self.task = task
        self.observation_space = group.obs_space
        self.action_space = group.action_space
        self._layers = layers  # (augmented weight, post-ops, post-ops need the view without the ones column)
        self._n = -1  # the batch size the plan below is built for (a VecEnv steps with a fixed n)
        self._x = np.empty((0, 0))  # features (without the ones column): a view of the first buffer
        self._fill: Callable[..., bool] = lambda *args: False
        self._ops: tuple[Callable[[], Any], ...] = ()
        self._y = np.empty(0)  # the head's output, (n,)

    @classmethod
    def from_model(cls, model: RewardModel, task: str) -> NumpyRewardFn:
        """Extract the weights of ``task``'s path through ``model`` (a snapshot: later training is not seen)."""
        info = model.head_info(task)
        group = model.groups[info.group]
        mean, std = (t.detach().double().numpy() for t in model.normalization(info.group))
        modules = [*model.stems[info.group], *model.encoder]
        layers: list[tuple[np.ndarray, list[Any], bool]] = []
        for m in modules:
            if isinstance(m, nn.Linear):
                w = m.weight.detach().double().numpy().T  # (in, out)
                b = m.bias.detach().double().numpy()
                if not layers:  # fold (x - mean) / std into the first layer: x @ (w / std) + b - (mean / std) @ w
                    b = b - (mean / std) @ w
                    w = w / std[:, None]
                aug = np.zeros((w.shape[0] + 1, w.shape[1] + 1))
                aug[:-1, :-1], aug[-1, :-1], aug[-1, -1] = w, b, 1.0
                layers.append((aug, [], False))
            else:
                post, relu = layers[-1][1], isinstance(m, nn.ReLU)
                post.append(_layer_norm(m) if isinstance(m, nn.LayerNorm) else _activation(m))
                layers[-1] = (layers[-1][0], post, layers[-1][2] or not relu)
        head = model.heads[head_key(task)]
        w = head.weight.detach().double().numpy().T * info.label_std
        b = head.bias.detach().double().numpy() * info.label_std + info.label_mean
        layers.append((np.ascontiguousarray(np.vstack([w, b[None]])), [], False))
        return cls(group, layers, task)

    def _plan(self, n: int) -> None:
        """Buffers for ``n`` rows and the operations of a call, bound to them once."""
        x = np.ones((n, self.group.dim + 1))
        ops: list[Callable[[], Any]] = []
        src = x
        for w, post, on_view in self._layers:
            out = np.ones((n, w.shape[1]))
            ops.append(partial(np.dot, src, w, out))  # np.dot into a contiguous buffer: far less overhead than matmul
            view = out[:, :-1] if on_view else out
            for op in post:
                ops.append(partial(np.maximum, view, np.zeros(view.shape), out=view) if op is _relu
                           else partial(op, view))
            src = out
        self._x = x[:, :-1]
        self._fill = _filler(self.group, n, self._x)
        self._ops = tuple(ops)
        self._y = src.reshape(n)
        self._n = n

    def __call__(self, obs: Any, action: Any, next_obs: Any, done: Any) -> np.ndarray:
        n = len(action) if type(action) is np.ndarray else sp.batch_len(action)
        if n != self._n:
            self._plan(n)
        if not self._fill(obs, action, next_obs, done):
            self.group.features(obs, action, next_obs, done, out=self._x)
        for op in self._ops:
            op()
        return self._y.astype(np.float32)
