"""CartPole rewards: the env's own (1 per step alive) and the cart-position family."""

from __future__ import annotations

from typing import Any

import numpy as np

from rlrm.rewards.transition import TransitionReward


def alive_reward() -> TransitionReward:
    """CartPole-v1's own reward: 1.0 for every transition (the episode ends when the pole falls)."""

    def reward(obs: Any, action: Any, next_obs: Any, done: np.ndarray) -> np.ndarray:
        return np.ones(len(np.asarray(done)), dtype=np.float64)

    return reward


def position_reward(target: float, width: float = 0.75) -> TransitionReward:
    """Keep the pole up and the cart near ``target``: ``r = 0.5 + 0.5 exp(-((x' - target) / width)^2 / 2)``.

    Every step alive earns at least 0.5 (so falling is bad), and up to 1.0 at the target; the bump is wide enough
    that a cart starting at 0 feels the pull of any target in [-1.5, 1.5].

    :param target: where the cart should be held (x*, in the env's units; the track is [-2.4, 2.4]).
    :param width: the bump's standard deviation.
    """
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")

    def reward(obs: Any, action: Any, next_obs: Any, done: np.ndarray) -> np.ndarray:
        x = np.asarray(next_obs, dtype=np.float64)[:, 0]
        return 0.5 + 0.5 * np.exp(-0.5 * ((x - target) / width) ** 2)

    return reward
