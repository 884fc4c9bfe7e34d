"""A NumPy-only inference path for one task's reward, built from a ``RewardModel``'s weights.

The wrapper calls the reward once per environment step, where a torch call (tensor conversion,
dispatch, autograd bookkeeping) costs more than the arithmetic of a small MLP on a few rows. This path
folds input standardization into the first layer and the label scale into the head, computes in
float64 with preallocated buffers, and matches :meth:`RewardModel.predict` within 1e-5.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from rlrm.model.network import InputGroup, RewardModel, head_key


def _activation(module: nn.Module):
    if isinstance(module, nn.ReLU):
        return lambda x: np.maximum(x, 0.0, out=x)
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


def _layer_norm(module: nn.LayerNorm):
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


class NumpyRewardFn:
    """``RewardFn`` for one task computed with NumPy (see module docstring)."""

    def __init__(self, group: InputGroup, ops: list[tuple[str, Any]], task: str) -> None:
        self.group = group
        self.task = task
        self.observation_space = group.obs_space
        self.action_space = group.action_space
        self._ops = ops
        self._widths = [op[0].shape[1] for kind, op in ops if kind == "linear"]
        self._buffers: tuple[int, list[np.ndarray]] = (-1, [])

    @classmethod
    def from_model(cls, model: RewardModel, task: str) -> NumpyRewardFn:
        """Extract the weights of ``task``'s path through ``model`` (a snapshot: later training is not seen)."""
        info = model.head_info(task)
        group = model.groups[info.group]
        mean, std = (t.detach().double().numpy() for t in model.normalization(info.group))
        modules = [*model.stems[info.group], *model.encoder]
        ops: list[tuple[str, Any]] = []
        first = True
        for m in modules:
            if isinstance(m, nn.Linear):
                w = m.weight.detach().double().numpy().T.copy()  # (in, out)
                b = m.bias.detach().double().numpy().copy()
                if first:  # fold (x - mean) / std into the first layer
                    w = w / std[:, None]
                    b = b - (mean / std) @ (w * std[:, None])
                    first = False
                ops.append(("linear", (w, b)))
            elif isinstance(m, nn.LayerNorm):
                ops.append(("fn", _layer_norm(m)))
            else:
                ops.append(("fn", _activation(m)))
        head = model.heads[head_key(task)]
        w = head.weight.detach().double().numpy().T * info.label_std
        b = head.bias.detach().double().numpy() * info.label_std + info.label_mean
        ops.append(("linear", (w, b)))
        return cls(group, ops, task)

    def _bufs(self, n: int) -> list[np.ndarray]:
        if self._buffers[0] != n:  # one cached batch size: a VecEnv steps with a fixed n
            self._buffers = (n, [np.empty((n, w)) for w in self._widths])
        return self._buffers[1]

    def __call__(self, obs: Any, action: Any, next_obs: Any, done: Any) -> np.ndarray:
        x: np.ndarray = self.group.features(obs, action, next_obs, done)
        bufs = self._bufs(len(x))
        i = 0
        for kind, op in self._ops:
            if kind == "linear":
                w, b = op
                x = np.matmul(x, w, out=bufs[i])
                x += b
                i += 1
            else:
                x = op(x)
        return x[:, 0].astype(np.float32)
