"""Point-mass goal family for ``rlrm/PointGoal-v0`` (Dict observations)."""

from __future__ import annotations

from typing import Any

import numpy as np

from rlrm.rewards.transition import TransitionReward


def goal_reward(x: float, y: float, ctrl_cost: float = 0.0) -> TransitionReward:
    """``r = -||position' - (x, y)|| - ctrl_cost |a|^2``, with the position after the step.

    :param x: goal x.
    :param y: goal y.
    :param ctrl_cost: weight of the squared action norm.
    """
    goal = np.array([x, y], dtype=np.float64)

    def reward(obs: Any, action: Any, next_obs: Any, done: np.ndarray) -> np.ndarray:
        pos = np.asarray(next_obs["position"], dtype=np.float64)
        r = -np.linalg.norm(pos - goal, axis=1)
        if ctrl_cost:
            r = r - ctrl_cost * np.sum(np.asarray(action, dtype=np.float64).reshape(len(r), -1) ** 2, axis=1)
        return r

    return reward
