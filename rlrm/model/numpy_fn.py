"""A NumPy-only inference path for one task's reward, built from a reward model's layers (torch modules).

The wrapper calls the reward once per environment step, where a torch call (tensor conversion,
dispatch, autograd bookkeeping) costs more than the arithmetic of a small MLP on a few rows. This path
clips the raw features to the model's bounds in the features buffer (the clip cannot be folded), folds
input standardization into the first layer and the label scale into the head, computes in
float32 like the torch model (float64 when the folding would lose precision, see ``_choose_dtype``)
with preallocated buffers, and matches :meth:`RewardModel.predict` within 1e-5.

On a few rows each NumPy call costs far more than its arithmetic, so the number of calls is the cost
(benchmarks/RESULTS.md): for a batch size it has seen, a call is one features fill (view assignments into a
preallocated buffer), one clip (a maximum and a minimum), then a fixed
list of prebuilt operations (``np.dot`` into contiguous buffers, in-place activations), then the head's
matrix-vector ``np.dot``, whose fresh output is the result.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from gymnasium import spaces
from torch import nn

from rlrm import spaces as sp
from rlrm.model import compiled as _compiled
from rlrm.model.features import InputGroup

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
    if isinstance(module, nn.LeakyReLU):
        slope = float(module.negative_slope)
        return lambda x: np.copyto(x, np.where(x > 0, x, slope * x)) or x
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


def _filler(group: InputGroup, n: int, out: np.ndarray, dtype: np.dtype) -> Callable[..., bool]:
    """A features fill for batches of ``n`` rows into ``out`` (the buffer without its ones column).

    The usual inputs take a short path with cheap exact checks: a 1-D Box batch (ndarray of shape
    ``(n, d)``) is appended as it is; a Discrete batch (int ndarray of shape ``(n,)``, start 0, no
    negative value) becomes rows of an identity matrix (``ndarray.take``, which raises on a value past
    the end). Other spaces go through the group's own adapter blocks (same checks, same errors).
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
            plan.append((discrete, _ARG_INDEX[name], np.eye(int(space.n), dtype=dtype)))
        else:
            plan.append((other, _ARG_INDEX[name], adapter.blocks))
    f32, f64 = _FLOATS
    i64 = np.dtype(np.int64)
    shape_n = (n,)
    concatenate = np.concatenate
    kinds = [(k, i) for k, i, _ in plan]
    with_done = kinds[-1:] == [(done, 3)]
    if n > 0 and _compiled.default_layout(group) is not None:  # the layout the compiled kernel takes too
        # The default inputs (obs, action, next_obs[, done]) on a Box observation space, unrolled: each part is
        # copied into its columns with ``view[...] = part`` (np.concatenate costs several times more; see
        # benchmarks/RESULTS.md). Assignment would broadcast and cast anything, so shapes must match exactly and
        # dtypes be float32/float64 (bool too for done; others, like lists, take the general path); take() raises
        # on a Discrete value past the end or a float.
        obs_shape, eye = plan[0][2], plan[1][2] if plan[1][0] == discrete else None
        d, k = obs_shape[1], eye.shape[0] if eye is not None else plan[1][2][1]
        x_obs, x_act, x_next = out[:, :d], out[:, d:d + k], out[:, d + k:d + k + d]
        x_done = out[:, -1] if with_done else None
        act_shape = shape_n if eye is not None else plan[1][2]
        small = n <= 64  # min over a Python list is cheaper than ndarray.min() on a few values
        flag = np.dtype(bool)

        def fill3(obs: Any, action: Any, next_obs: Any, done: Any) -> bool:
            try:
                if (obs.shape != obs_shape or next_obs.shape != obs_shape or action.shape != act_shape
                        or (obs.dtype is not f32 and obs.dtype is not f64)
                        or (next_obs.dtype is not f32 and next_obs.dtype is not f64)):
                    return False
                if x_done is not None and (type(done) is not np.ndarray or done.shape != shape_n or (
                        done.dtype is not flag and done.dtype is not f32 and done.dtype is not f64)):
                    return False
                if eye is None:
                    if action.dtype is not f32 and action.dtype is not f64:
                        return False
                    x_act[...] = action
                elif (min(action.tolist()) if small else action.min()) < 0:  # take() would wrap it around
                    return False
                else:
                    x_act[...] = eye.take(action, 0)
            except (AttributeError, TypeError, IndexError):
                return False
            x_obs[...] = obs
            x_next[...] = next_obs
            if x_done is not None:
                x_done[...] = done
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


#: ``dtype="auto"`` computes in float32 when every continuous feature's ``|mean| / std`` is at most this
_F32_MAX_OFFSET = 8.0


def _choose_dtype(mean: np.ndarray, std: np.ndarray, dtype: str) -> np.dtype:
    """float32 like the torch model, unless the folded first layer would cancel large terms.

    Folding ``(x - mean) / std`` into the first layer computes ``x / std`` and ``mean / std`` separately;
    in float32 their rounding (~6e-8 of each) stays well inside 1e-5 of the torch result only while
    ``|mean| / std`` is moderate (measured in ``tests/test_model.py``). Past that (an almost constant
    feature with an offset, say), float64 keeps the folded sum exact, at a small cost per call.
    """
    if dtype not in ("auto", "float32", "float64"):
        raise ValueError(f"dtype must be 'auto', 'float32' or 'float64', got {dtype!r}")
    if dtype == "auto":
        offset = float(np.max(np.abs(mean) / std, initial=0.0))
        dtype = "float32" if offset <= _F32_MAX_OFFSET else "float64"
    return np.dtype(dtype)


class NumpyRewardFn:
    """``RewardFn`` for one task computed with NumPy (see module docstring).

    Every buffer carries a last column of ones, and every weight matrix a last row holding the bias
    (and, for hidden layers, a last column that carries the ones forward), so a layer is one ``np.dot``
    into a preallocated contiguous buffer plus its activation; ReLU keeps the ones column as it is,
    other activations and LayerNorm are applied to the view without it. The head is a matrix-vector
    ``np.dot`` that returns a fresh array (in float32 mode, already the result).

    Not thread-safe: calls share the preallocated buffers (each wrapper builds its own instance, and
    SubprocVecEnv workers have their own copies). The returned array is always fresh.
    """

    def __init__(self, group: InputGroup, layers: list[tuple[np.ndarray, list[Any], bool]],
                 bounds: tuple[np.ndarray, np.ndarray], task: str, dtype: np.dtype | str = "float64",
                 symexp_output: bool = False, compiled: bool = True) -> None:
        self.group = group
        self.symexp_output = symexp_output  # the head predicts symlog rewards (a ``symlog`` label transform)
        self.task = task
        self.observation_space = group.obs_space
        self.action_space = group.action_space
        self.dtype = np.dtype(dtype)
        # (augmented weight, post-ops, post-ops need the view without the ones column), in self.dtype
        self._layers = [(np.ascontiguousarray(w, dtype=self.dtype), post, on_view) for w, post, on_view in layers]
        self._bounds = bounds  # features are clipped to [low, high] before the first layer, as in RewardModel.embed
        self._n = -1  # the batch size the plan below is built for (a VecEnv steps with a fixed n)
        self._x = np.empty((0, 0), self.dtype)  # features (without the ones column): a view of the first buffer
        self._ops: tuple[Callable[[], Any], ...] = ()
        self._head: Callable[[], np.ndarray] = lambda: np.empty(0, np.float32)
        self._run: Callable[..., np.ndarray | None] = lambda *args: None
        relu_only = all(post == [_relu] for _, post, _ in self._layers[:-1])
        self._kernel = _compiled.relu_mlp(group, [self.layer_weights], [bounds], self.dtype) if (
            compiled and relu_only and not symexp_output) else None

    @property
    def compiled(self) -> bool:
        """Whether calls take the compiled kernel (:mod:`rlrm.model.compiled`) before the NumPy path."""
        return self._kernel is not None

    @classmethod
    def from_layers(cls, group: InputGroup, mean: np.ndarray, std: np.ndarray, low: np.ndarray, high: np.ndarray,
                    modules: list[nn.Module], head: nn.Linear, label_mean: float, label_std: float, task: str,
                    dtype: str = "auto", symexp_output: bool = False, compiled: bool = True) -> NumpyRewardFn:
        """Copy the weights of one task's path: input standardization ``(clip(x, low, high) - mean) / std``,
        then ``modules`` (Linear layers, activations, LayerNorms), then ``head`` scaled to label units.

        :param dtype: ``"float32"``, ``"float64"``, or ``"auto"`` (see :func:`_choose_dtype`).
        :param compiled: use the compiled kernel where it applies (False: the NumPy path only).
        """
        # a feature clipped to one value (constant in the data) is a constant term: fold it into the bias exactly
        const = low == high
        layers: list[tuple[np.ndarray, list[Any], bool]] = []
        for m in modules:
            if isinstance(m, nn.Linear):
                w = m.weight.detach().double().numpy().T  # (in, out)
                b = m.bias.detach().double().numpy()
                if not layers:  # fold (x - mean) / std into the first layer: x @ (w / std) + b - (mean / std) @ w
                    b = b + ((low - mean) / std)[const] @ w[const]
                    w = np.where(const[:, None], 0.0, w)
                    b = b - np.where(const, 0.0, mean / std) @ w
                    w = w / std[:, None]
                aug = np.zeros((w.shape[0] + 1, w.shape[1] + 1))
                aug[:-1, :-1], aug[-1, :-1], aug[-1, -1] = w, b, 1.0
                layers.append((aug, [], False))
            else:
                post, relu = layers[-1][1], isinstance(m, nn.ReLU)
                post.append(_layer_norm(m) if isinstance(m, nn.LayerNorm) else _activation(m))
                layers[-1] = (layers[-1][0], post, layers[-1][2] or not relu)
        w = head.weight.detach().double().numpy()[0] * label_std
        b = head.bias.detach().double().numpy() * label_std + label_mean
        layers.append((np.concatenate([w, b]), [], False))  # a vector: the head is a matrix-vector product
        return cls(group, layers, (low, high), task, _choose_dtype(np.where(const, 0.0, mean), std, dtype),
                   symexp_output, compiled)

    @property
    def layer_weights(self) -> list[np.ndarray]:
        """The augmented weights of each layer (folded standardization, bias row; the head's is a vector), in
        :attr:`dtype`: what :mod:`rlrm.model.numpy_ensemble` stacks across members."""
        return [w for w, _, _ in self._layers]

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The (low, high) bounds raw features are clipped to before the first layer."""
        return self._bounds

    def _plan(self, n: int) -> None:
        """Buffers for ``n`` rows and the operations of a call, bound to them once."""
        dt = self.dtype
        x = np.ones((n, self.group.dim + 1), dt)
        # bounds over the whole buffer (the ones column too, clipped to 1): one clip of a contiguous array
        low, high = (np.tile(np.r_[b, 1.0].astype(dt), (n, 1)) for b in self._bounds)
        # a clip as maximum then minimum with out= (cheaper than the clip ufunc; positional out is slow in NumPy 2.4)
        ops: list[Callable[[], Any]] = [partial(np.maximum, x, low, out=x), partial(np.minimum, x, high, out=x)]
        relu_layers: list[tuple[np.ndarray, ...]] | None = []  # (in, weight, out, zeros) while all are Linear+ReLU
        src = x
        for w, post, on_view in self._layers[:-1]:
            out = np.ones((n, w.shape[1]), dt)
            # a bound ndarray.dot into a contiguous buffer: cheaper per call than np.dot, far cheaper than matmul
            ops.append(partial(src.dot, w, out))
            view = out[:, :-1] if on_view else out
            for op in post:
                ops.append(partial(np.maximum, view, np.zeros(view.shape, dt), out=view) if op is _relu
                           else partial(op, view))
            if relu_layers is not None and [op is _relu for op in post] == [True]:
                relu_layers.append((src.dot, w, out, ops[-1].args[1]))
            else:
                relu_layers = None
            src = out
        head = partial(_head, src.dot, self._layers[-1][0], dt != np.float32)
        if self.symexp_output:  # only then (the general runner: the ReLU one inlines the plain head)
            head, relu_layers = partial(_symexp_head, head), None
        self._x = x[:, :-1]
        self._ops = tuple(ops)
        self._head = head
        fill = _filler(self.group, n, self._x, dt)
        self._run = (_runner(fill, self._ops, head) if relu_layers is None
                     else _relu_runner(fill, (x, low, high), relu_layers, head))
        self._n = n

    def __call__(self, obs: Any, action: Any, next_obs: Any, done: Any) -> np.ndarray:
        if self._kernel is not None:
            y = self._kernel(obs, action, next_obs, done)  # None for a batch the kernel declines
            if y is not None:
                return y
        y = self._run(obs, action, next_obs, done)  # None unless the batch fits the current plan's short path
        if y is not None:
            return y
        feats = self.group.features(obs, action, next_obs, done)  # any batch predict accepts, or its SpaceError
        if len(feats) != self._n:
            self._plan(len(feats))
            y = self._run(obs, action, next_obs, done)
            if y is not None:
                return y
        self._x[...] = feats
        for op in self._ops:
            op()
        return self._head()


def _head(h_dot: Callable[[np.ndarray], np.ndarray], w: np.ndarray, cast: bool) -> np.ndarray:
    """The head: a matrix-vector product, whose output is a fresh array (float32 unless computed in float64)."""
    y = h_dot(w)
    return y.astype(np.float32) if cast else y


def _symexp_head(head: Callable[[], np.ndarray]) -> np.ndarray:
    """The head's output mapped back from symlog units (a ``symlog`` label transform), float32."""
    y = head()
    return (np.sign(y) * np.expm1(np.abs(y))).astype(np.float32, copy=False)


def _runner(fill: Callable[..., bool], ops: tuple[Callable[[], Any], ...],
            head: Callable[[], np.ndarray]) -> Callable[..., np.ndarray | None]:
    """One call on the short path: fill the features, run the layers, return the head's output (or None
    when ``fill`` declines the batch)."""

    def run(obs: Any, action: Any, next_obs: Any, done: Any) -> np.ndarray | None:
        if not fill(obs, action, next_obs, done):
            return None
        for op in ops:
            op()
        return head()

    return run


def _relu_runner(fill: Callable[..., bool], bounds: tuple[np.ndarray, np.ndarray, np.ndarray],
                 layers: list[tuple[np.ndarray, ...]],
                 head: partial) -> Callable[..., np.ndarray | None]:
    """:func:`_runner` for an MLP of Linear+ReLU layers (the default): a plain loop of ``np.dot`` and
    ``np.maximum`` calls, cheaper per layer than calling prebuilt partials."""
    h_dot, wh, cast = head.args
    x, low, high = bounds
    maximum, minimum, f32 = np.maximum, np.minimum, np.float32
    steps = tuple(layers)

    def run(obs: Any, action: Any, next_obs: Any, done: Any) -> np.ndarray | None:
        if not fill(obs, action, next_obs, done):
            return None
        maximum(x, low, out=x)
        minimum(x, high, out=x)
        for dot, w, o, z in steps:
            dot(w, o)
            maximum(o, z, out=o)
        return h_dot(wh).astype(f32) if cast else h_dot(wh)

    return run
