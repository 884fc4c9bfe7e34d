"""``rlrm/PointGoal-v0``: a point mass on a plane with Dict observations (position, velocity).

Damped double integrator: ``v' = (1 - damping dt) v + dt * force * a``, ``p' = clip(p + dt v', -size, size)``
(hitting a wall stops the motion along that axis). Starts are uniform over the arena, so random actions cover it.
The env's own reward is minus the distance from the new position to the origin.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class PointGoalEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """A point mass pushed by a 2-D force in ``[-1, 1]^2``, in the square ``[-size, size]^2``.

    :param size: half-width of the arena.
    :param dt: time step.
    :param damping: velocity damping per unit time.
    :param force: acceleration for a unit action.
    :param max_speed: speed limit per axis.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, size: float = 2.0, dt: float = 0.1, damping: float = 1.0, force: float = 2.0,
                 max_speed: float = 2.0) -> None:
        self.size, self.dt, self.damping, self.force, self.max_speed = size, dt, damping, force, max_speed
        self.observation_space = spaces.Dict({
            "position": spaces.Box(-size, size, (2,), np.float32),
            "velocity": spaces.Box(-max_speed, max_speed, (2,), np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._pos = np.zeros(2)
        self._vel = np.zeros(2)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"position": self._pos.astype(np.float32), "velocity": self._vel.astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-self.size, self.size, 2)
        self._vel = np.zeros(2)
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        vel = (1.0 - self.damping * self.dt) * self._vel + self.dt * self.force * a
        vel = np.clip(vel, -self.max_speed, self.max_speed)
        pos = self._pos + self.dt * vel
        wall = np.abs(pos) > self.size
        self._pos = np.clip(pos, -self.size, self.size)
        self._vel = np.where(wall, 0.0, vel)
        obs = self._obs()
        # from the float32 observation, so that the reward is exactly a function of the recorded transition
        reward = -float(np.linalg.norm(obs["position"].astype(np.float64)))
        return obs, reward, False, False, {}
