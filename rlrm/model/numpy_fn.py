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

from rlrm import spaces as sp
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
        self._buffers: tuple[int, np.ndarray, np.ndarray, list[np.ndarray]] = (-1, np.empty(0), np.empty(0), [])

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
                if not layers:  # fold (x - mean) / std into the first layer
                    b = b - (mean / std) @ (w / std[:, None])
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
        layers.append((np.vstack([w, b[None]]), [], False))
        return cls(group, layers, task)

    def _bufs(self, n: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        if self._buffers[0] != n:  # one cached batch size: a VecEnv steps with a fixed n
            self._buffers = (n, np.empty((n, self.group.dim + 1)), np.ones((n, 1)),
                             [np.ones((n, w.shape[1])) for w, _, _ in self._layers])
        return self._buffers[1], self._buffers[2], self._buffers[3]

    def __call__(self, obs: Any, action: Any, next_obs: Any, done: Any) -> np.ndarray:
        n = len(action) if type(action) is np.ndarray else sp.batch_len(action)
        if self._buffers[0] != n:
            self._bufs(n)
        _, x, ones, bufs = self._buffers
        self.group.features(obs, action, next_obs, done, out=x, extra=ones)
        for (w, post, on_view), out in zip(self._layers, bufs):
            x = np.dot(x, w, out=out)  # np.dot into a contiguous buffer: far less overhead than matmul
            if post:
                v = x[:, :-1] if on_view else x
                for op in post:
                    op(v)
        return x[:, 0].astype(np.float32)
