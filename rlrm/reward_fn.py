"""The reward-function protocol: all that wrappers and agents know of a reward model."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from gymnasium import spaces


@runtime_checkable
class RewardFn(Protocol):
    """A batched reward ``r(obs, action, next_obs, done) -> (n,) float array`` for one task.

    ``obs``/``next_obs``/``action`` are batches with a leading axis (dicts/tuples of arrays for
    Dict/Tuple spaces); ``done`` is the ``terminated`` flag per transition. ``observation_space`` and
    ``action_space`` say what the function accepts, so a wrapper can check an env before stepping it.
    """

    observation_space: spaces.Space
    action_space: spaces.Space

    def __call__(self, obs: Any, action: Any, next_obs: Any, done: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class RewardFnWithStd(RewardFn, Protocol):
    """A :class:`RewardFn` that also says how uncertain it is (an ensemble's): ``with_std`` returns the same
    ``(n,)`` rewards as ``__call__`` and their std across members, from one evaluation. Wrappers find it with
    :func:`std_method`; a plain RewardFn is certain (std 0)."""

    def with_std(self, obs: Any, action: Any, next_obs: Any, done: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def std_method(fn: RewardFn) -> Any:
    """``fn.with_std`` when ``fn`` is a :class:`RewardFnWithStd`, else ``None``."""
    method = getattr(fn, "with_std", None)
    return method if callable(method) else None


class RewardSource(Protocol):
    """Anything that gives a task's :class:`RewardFn`, such as :class:`rlrm.model.RewardModel`."""

    def reward_fn(self, task: str) -> RewardFn: ...


def as_reward_fn(source: RewardFn | RewardSource, task: str | None = None) -> RewardFn:
    """Turn ``source`` into a :class:`RewardFn`: a RewardFn as-is, or anything with ``reward_fn(task)``
    (such as :class:`rlrm.model.RewardModel`)."""
    if hasattr(source, "reward_fn"):
        if task is None:
            raise TypeError("a task name is needed to pick the reward head")
        return source.reward_fn(task)  # type: ignore[union-attr]
    if isinstance(source, RewardFn):
        return source
    raise TypeError(f"expected a RewardFn or a reward model, got {type(source).__name__}")
