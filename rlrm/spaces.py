"""Space adapters: the one place that turns observations/actions into float feature vectors.

Box → flattened values, Discrete → one-hot, MultiDiscrete → concatenated one-hots, MultiBinary → 0/1,
Dict/Tuple → their parts concatenated (nested). Training and inference call the same adapter, so a
model gives the same reward for a transition in a dataset and inside a wrapper.

Batches are arrays with a leading batch axis (Dict batches: a dict of such arrays, Tuple: a tuple).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from rlrm.errors import SpaceError

Batch = Any  # np.ndarray | dict[str, Batch] | tuple[Batch, ...]


# --------------------------------------------------------------------------- JSON (de)serialization
def _enc_bound(a: np.ndarray) -> Any:
    a = np.asarray(a, dtype=np.float64)
    vals = a.reshape(-1)
    if vals.size and np.all(vals == vals[0]):
        return _enc_float(vals[0])
    return [_enc_float(v) for v in vals]


def _enc_float(v: float) -> float | str:
    return float(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def _dec_bound(v: Any, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(v, list):
        return np.array([float(x) for x in v], dtype=np.float64).reshape(shape)
    return np.full(shape, float(v), dtype=np.float64)


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """Describe a supported space as JSON-friendly data (see :func:`space_from_json`)."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": _enc_bound(space.low), "high": _enc_bound(space.high)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist(),
                "start": np.asarray(space.start).tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(s) for s in space.spaces]}
    raise SpaceError(f"unsupported space {space!r}: rlrm adapts Box, Discrete, MultiDiscrete, MultiBinary, "
                     "Dict and Tuple")


def space_from_json(d: Mapping[str, Any]) -> spaces.Space:
    """Rebuild a space from :func:`space_to_json` output."""
    try:
        kind = d["type"]
        if kind == "Box":
            shape = tuple(int(x) for x in d["shape"])
            dtype = np.dtype(d["dtype"])
            return spaces.Box(_dec_bound(d["low"], shape).astype(dtype), _dec_bound(d["high"], shape).astype(dtype),
                              shape=shape, dtype=dtype)
        if kind == "Discrete":
            return spaces.Discrete(int(d["n"]), start=int(d.get("start", 0)))
        if kind == "MultiDiscrete":
            return spaces.MultiDiscrete(np.array(d["nvec"]), start=np.array(d.get("start", 0)))
        if kind == "MultiBinary":
            return spaces.MultiBinary(d["n"])
        if kind == "Dict":
            return spaces.Dict({k: space_from_json(s) for k, s in d["spaces"].items()})
        if kind == "Tuple":
            return spaces.Tuple([space_from_json(s) for s in d["spaces"]])
    except (KeyError, TypeError, ValueError) as err:
        raise SpaceError(f"malformed space description {d!r}: {err}") from None
    raise SpaceError(f"unknown space type {d.get('type')!r}")


def space_signature(space: spaces.Space) -> str:
    """A canonical string: two spaces with the same signature share an adapter."""
    return json.dumps(space_to_json(space), sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- adapters
class SpaceAdapter:
    """Turns batches from one space into ``float32`` arrays of shape ``(n, dim)``.

    Internally each leaf yields a 2-D block (often a view of the input: no copy); the blocks of all
    inputs are joined by one ``np.concatenate``, which keeps the per-step cost in wrappers small.

    :param space: the observation or action space.
    :param name: what the batches are called in error messages (``"obs"``, ``"action"``).
    """

    def __init__(self, space: spaces.Space, name: str = "input") -> None:
        self.space = space
        self.name = name
        self.dim, self.blocks, continuous = _build(space, name)
        #: True for features that come from Box values (these get standardized), False for 0/1 codes.
        self.continuous = np.asarray(continuous, dtype=bool)

    def transform(self, batch: Batch) -> np.ndarray:
        """Return the ``(n, dim)`` float32 features of a batch; raise :class:`SpaceError` on a misfit."""
        blocks: list[np.ndarray] = []
        self.blocks(batch, blocks)
        out = np.empty((batch_len(batch), self.dim), dtype=np.float32)
        return join_blocks(blocks, out, self.name)

    def __repr__(self) -> str:
        return f"SpaceAdapter({self.space!r}, dim={self.dim})"


#: appends the 2-D feature blocks of a batch to a list
Blocks = Callable[[Batch, list], None]


def join_blocks(blocks: list[np.ndarray], out: np.ndarray, name: str = "inputs") -> np.ndarray:
    """Concatenate feature blocks column-wise into ``out``; a batch-size mismatch is a :class:`SpaceError`."""
    try:
        return np.concatenate(blocks, axis=1, out=out)
    except ValueError:
        sizes = sorted({len(b) for b in blocks})
        raise SpaceError(f"{name}: batches of different lengths {sizes} (expected {len(out)} each)") from None


def _build(space: spaces.Space, name: str) -> tuple[int, Blocks, list[bool]]:
    if isinstance(space, spaces.Box):
        return _box(space, name)
    if isinstance(space, spaces.Discrete):
        return _discrete(space, name)
    if isinstance(space, spaces.MultiDiscrete):
        return _multi_discrete(space, name)
    if isinstance(space, spaces.MultiBinary):
        shape = tuple(np.atleast_1d(np.asarray(space.n)).tolist())
        dim = int(np.prod(shape))

        def binary(x: Batch, acc: list) -> None:
            x = _array(x, name, shape)
            acc.append(x if x.ndim == 2 else x.reshape(len(x), dim))

        return dim, binary, [False] * dim
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        keys = list(space.spaces.keys()) if isinstance(space, spaces.Dict) else list(range(len(space.spaces)))
        parts = [_build(space.spaces[k], f"{name}[{k!r}]") for k in keys]
        children = [(k, p[1]) for k, p in zip(keys, parts)]
        continuous = [c for p in parts for c in p[2]]

        def composite(x: Batch, acc: list) -> None:
            for k, blocks in children:
                try:
                    part = x[k]
                except (KeyError, IndexError, TypeError):
                    raise SpaceError(f"{name}: expected a {type(space).__name__} batch with parts {keys}, "
                                     f"got {type(x).__name__}") from None
                blocks(part, acc)

        return sum(p[0] for p in parts), composite, continuous
    raise SpaceError(f"{name}: unsupported space {space!r}; rlrm adapts Box, Discrete, MultiDiscrete, "
                     "MultiBinary, Dict and Tuple")


def _array(x: Batch, name: str, shape: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x)
    if x.shape[1:] != shape:
        raise SpaceError(f"{name}: expected a batch of shape (n, {', '.join(map(str, shape))}), got {x.shape}")
    return x


def _box(space: spaces.Box, name: str) -> tuple[int, Blocks, list[bool]]:
    shape = tuple(space.shape)
    dim = int(np.prod(shape)) if shape else 1

    def box(x: Batch, acc: list) -> None:
        x = np.asarray(x)
        if x.shape[1:] != shape or x.dtype.kind not in "fiub":
            raise SpaceError(f"{name}: expected a numeric batch of shape (n, {', '.join(map(str, shape))}), "
                             f"got {x.dtype} {x.shape}")
        acc.append(x if x.ndim == 2 else x.reshape(len(x), dim))

    return dim, box, [True] * dim


def _discrete(space: spaces.Discrete, name: str) -> tuple[int, Blocks, list[bool]]:
    n, start = int(space.n), int(space.start)
    eye = np.eye(n, dtype=np.float32)

    def one_hot(x: Batch, acc: list) -> None:
        x = np.asarray(x)
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 1 or x.dtype.kind not in "iub":
            raise SpaceError(f"{name}: expected a batch of integers of shape (n,) for {space}, got {x.dtype} {x.shape}")
        idx = x - start if start else x
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise SpaceError(f"{name}: values outside {space}: min {x.min()}, max {x.max()}")
        acc.append(eye.take(idx, axis=0))  # ndarray.take: a fraction of fancy indexing's overhead

    return n, one_hot, [False] * n


def _multi_discrete(space: spaces.MultiDiscrete, name: str) -> tuple[int, Blocks, list[bool]]:
    nvec = np.asarray(space.nvec).reshape(-1).astype(np.int64)
    start = np.broadcast_to(np.asarray(space.start), space.nvec.shape).reshape(-1).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]]).astype(np.int64)
    dim = int(nvec.sum())
    shape = tuple(space.nvec.shape)

    def multi_one_hot(x: Batch, acc: list) -> None:
        x = _array(x, name, shape)
        idx = x.reshape(len(x), len(nvec)).astype(np.int64) - start
        if idx.size and (np.any(idx < 0) or np.any(idx >= nvec)):
            raise SpaceError(f"{name}: values outside {space}")
        out = np.zeros((len(x), dim), dtype=np.float32)
        np.put_along_axis(out, idx + offsets, 1.0, axis=1)
        acc.append(out)

    return dim, multi_one_hot, [False] * dim


# --------------------------------------------------------------------------- batches and leaves
def add_batch_dim(space: spaces.Space, x: Any) -> Batch:
    """Turn one sample into a batch of one (a copy). Where this runs per step, keep a :func:`one_batcher`."""
    return one_batcher(space)(x)


def one_batcher(space: spaces.Space) -> Callable[[Any], Batch]:
    """A function that copies one sample into a batch of one (a copy: envs may reuse their arrays)."""
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        keys = list(space.spaces) if isinstance(space, spaces.Dict) else range(len(space.spaces))
        parts = [(k, one_batcher(space.spaces[k])) for k in keys]
        if isinstance(space, spaces.Dict):
            return lambda x: {k: f(x[k]) for k, f in parts}
        return lambda x: tuple(f(x[k]) for k, f in parts)
    array = np.array

    def one(x: Any) -> np.ndarray:
        return array(x)[None]

    return one


def stack(space: spaces.Space, samples: Sequence[Any]) -> Batch:
    """Stack single samples into a batch."""
    if isinstance(space, spaces.Dict):
        return {k: stack(s, [x[k] for x in samples]) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(stack(s, [x[i] for x in samples]) for i, s in enumerate(space.spaces))
    return np.stack([np.asarray(x) for x in samples])


def leaves(space: spaces.Space, prefix: str) -> list[tuple[str, spaces.Space]]:
    """The non-composite parts of a space with dotted names (``obs``, ``obs.pos``, ``obs.0``)."""
    if isinstance(space, spaces.Dict):
        return [leaf for k, s in space.spaces.items() for leaf in leaves(s, f"{prefix}.{k}")]
    if isinstance(space, spaces.Tuple):
        return [leaf for i, s in enumerate(space.spaces) for leaf in leaves(s, f"{prefix}.{i}")]
    return [(prefix, space)]


def split(space: spaces.Space, batch: Batch, prefix: str) -> dict[str, np.ndarray]:
    """A batch as ``{leaf name: array}`` (inverse of :func:`join`)."""
    if isinstance(space, spaces.Dict):
        return {n: a for k, s in space.spaces.items() for n, a in split(s, batch[k], f"{prefix}.{k}").items()}
    if isinstance(space, spaces.Tuple):
        return {n: a for i, s in enumerate(space.spaces) for n, a in split(s, batch[i], f"{prefix}.{i}").items()}
    return {prefix: np.asarray(batch)}


def join(space: spaces.Space, arrays: Mapping[str, np.ndarray], prefix: str) -> Batch:
    """Rebuild a (nested) batch from leaf arrays."""
    if isinstance(space, spaces.Dict):
        return {k: join(s, arrays, f"{prefix}.{k}") for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(join(s, arrays, f"{prefix}.{i}") for i, s in enumerate(space.spaces))
    return arrays[prefix]


def leaf_shape(space: spaces.Space) -> tuple[int, ...]:
    """The per-sample array shape of a leaf space."""
    if isinstance(space, spaces.Discrete):
        return ()
    if isinstance(space, spaces.MultiBinary):
        return tuple(np.atleast_1d(np.asarray(space.n)).tolist())
    return tuple(space.shape)


def select(batch: Batch, index: Any) -> Batch:
    """Index every leaf of a batch (``index``: slice, mask or integer array)."""
    if isinstance(batch, dict):
        return {k: select(v, index) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(select(v, index) for v in batch)
    return batch[index]


def concat(batches: Sequence[Batch]) -> Batch:
    """Join batches of one space along the sample axis, leaf by leaf."""
    first = batches[0]
    if isinstance(first, dict):
        return {k: concat([b[k] for b in batches]) for k in first}
    if isinstance(first, tuple):
        return tuple(concat([b[i] for b in batches]) for i in range(len(first)))
    return np.concatenate(batches)


def batch_len(batch: Batch) -> int:
    """Number of samples in a batch."""
    if isinstance(batch, dict):
        return batch_len(next(iter(batch.values())))
    if isinstance(batch, tuple):
        return batch_len(batch[0])
    return len(batch)


def layout(space: spaces.Space) -> Any:
    """What an adapter depends on (structure, shapes, category counts) — not Box bounds or float width."""
    d = space_to_json(space)

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            if x.get("type") == "Box":
                return {"type": "Box", "shape": x["shape"]}
            return {k: strip(v) for k, v in x.items()}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(d)


def check_compatible(expected: spaces.Space, actual: spaces.Space, what: str) -> None:
    """Raise :class:`SpaceError` if batches from ``actual`` cannot go through an adapter for ``expected``."""
    if layout(expected) != layout(actual):
        raise SpaceError(f"{what}: the env has {actual}, but the reward model expects {expected}")
