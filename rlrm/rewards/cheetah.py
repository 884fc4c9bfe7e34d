"""HalfCheetah velocity family (Finn et al. 2017, MAML's HalfCheetahVel): run at a target speed."""

from __future__ import annotations

from typing import Any

import numpy as np

from rlrm.rewards.transition import TransitionReward

#: index of the root's x velocity (qvel[0]) in HalfCheetah-v5's default observation (qpos[1:] has 8 entries)
VX_INDEX = 8


def velocity_reward(target: float, ctrl_cost: float = 0.05) -> TransitionReward:
    """``r = -|v - target| - ctrl_cost |a|^2`` with ``v`` the root's x velocity after the step.

    :param target: the wanted forward velocity (negative: run backwards).
    :param ctrl_cost: weight of the squared action norm.
    """

    def reward(obs: Any, action: Any, next_obs: Any, done: np.ndarray) -> np.ndarray:
        v = np.asarray(next_obs, dtype=np.float64)[:, VX_INDEX]
        a = np.asarray(action, dtype=np.float64).reshape(len(v), -1)
        return -np.abs(v - target) - ctrl_cost * np.sum(a**2, axis=1)

    return reward
