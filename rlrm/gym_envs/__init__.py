"""Gymnasium envs shipped with rlrm, registered under the ``rlrm`` namespace on import.

- ``rlrm/PointGoal-v0``: a point mass with Dict observations (see :mod:`rlrm.gym_envs.point_goal`).
"""

from __future__ import annotations

import gymnasium as gym

POINT_GOAL_ID = "rlrm/PointGoal-v0"

if POINT_GOAL_ID not in gym.registry:
    gym.register(id=POINT_GOAL_ID, entry_point="rlrm.gym_envs.point_goal:PointGoalEnv", max_episode_steps=100)

__all__ = ["POINT_GOAL_ID"]
