"""Apply a shipped reward function online: the env's reward becomes the task's labeler."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from rlrm.rewards import TransitionReward


def _batch(x: Any) -> Any:
    """Add a leading batch axis of one (dicts of arrays stay dicts)."""
    if isinstance(x, dict):
        return {k: _batch(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_batch(v) for v in x)
    return np.asarray(x)[None]


class TaskReward(gym.Wrapper):
    """Replace the env's reward by ``fn(obs before, action, obs after, terminated)``; the env's own reward is kept
    in ``info["env_reward"]``.

    :param env: the env to wrap.
    :param fn: a batched :data:`rlrm.rewards.TransitionReward` (called with a batch of one).
    :param labeler: the labeler spec, for ``repr``.
    """

    def __init__(self, env: gym.Env, fn: TransitionReward, labeler: str = "") -> None:
        super().__init__(env)
        self.fn, self.labeler = fn, labeler
        self._obs: Any = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, env_reward, terminated, truncated, info = self.env.step(action)
        r = self.fn(_batch(self._obs), _batch(action), _batch(obs), np.array([terminated]))
        self._obs = obs
        info["env_reward"] = env_reward
        return obs, float(np.asarray(r)[0]), terminated, truncated, info

    def __repr__(self) -> str:
        return f"<TaskReward {self.labeler}{self.env}>"
