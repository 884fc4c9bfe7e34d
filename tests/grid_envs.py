"""An env for grid tests: CartPole that raises inside ``step`` after ``crash_after`` steps (``None``: never)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class CrashingCartPole(CartPoleEnv):
    def __init__(self, crash_after: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.crash_after, self.steps = crash_after, 0

    def step(self, action: Any) -> Any:
        self.steps += 1
        if self.crash_after is not None and self.steps > self.crash_after:
            raise RuntimeError(f"simulator crashed after {self.crash_after} steps")
        return super().step(action)


gym.register("CrashingCartPole-v0", entry_point=CrashingCartPole, max_episode_steps=500)
