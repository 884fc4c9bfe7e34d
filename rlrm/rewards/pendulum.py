"""Pendulum-v1's own reward, as a function of the transition."""

from __future__ import annotations

from typing import Any

import numpy as np

from rlrm.rewards.transition import TransitionReward

MAX_TORQUE = 2.0


def env_reward() -> TransitionReward:
    """``-(angle_normalize(theta)^2 + 0.1 thetadot^2 + 0.001 u^2)``, with theta and thetadot from the observation
    before the step (``[cos theta, sin theta, thetadot]``) and the torque ``u`` clipped to [-2, 2]."""

    def reward(obs: Any, action: Any, next_obs: Any, done: np.ndarray) -> np.ndarray:
        o = np.asarray(obs, dtype=np.float64)
        theta = np.arctan2(o[:, 1], o[:, 0])  # already in [-pi, pi]: angle_normalize is the identity
        u = np.clip(np.asarray(action, dtype=np.float64).reshape(len(o), -1)[:, 0], -MAX_TORQUE, MAX_TORQUE)
        return -(theta**2 + 0.1 * o[:, 2] ** 2 + 0.001 * u**2)

    return reward
