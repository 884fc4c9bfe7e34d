"""The product claim, end to end through ``python -m rlrm.train_agent``: an agent trained on a LEARNED reward
does well on the TRUE one."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from rlrm.train_agent import entry

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"

pytestmark = pytest.mark.slow


def _random_policy_return(env_id: str, episodes: int = 10, seed: int = 0) -> float:
    env = gym.make(env_id)
    env.action_space.seed(seed)
    returns = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            _, r, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(r)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def test_ppo_on_a_learned_cartpole_reward_improves_the_true_return(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # 10k random-policy transitions with oracle labels -> the default reward model -> PPO (agents/ppo.yaml) on it
    rc = entry(["--env", "CartPole-v1", "-n", "50000", "--collect-steps", "10000", "--reward-epochs", "10",
                "--eval-episodes", "10", "--eval-freq", "1000000", "--no-progress"])
    assert rc == 0
    [result] = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert result["reward"] == "learned" and result["timesteps"] >= 50_000 and result["episodes"] == 10
    random_return = _random_policy_return("CartPole-v1")
    assert random_return < 40
    # deterministic true return over 10 episodes, far above a random policy's (~22); 500 is the maximum
    assert result["true_mean"] >= 150, result
    assert math.isfinite(result["learned_mean"])


def test_sac_on_a_learned_pendulum_reward_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc = entry(["--env", "Pendulum-v1", "--algo", "sac", "-n", "300", "--collect-steps", "2000",
                "--reward-epochs", "3", "--eval-episodes", "2", "--eval-freq", "150", "--no-progress",
                "--params", "learning_starts:50", "batch_size:32", "buffer_size:1000"])
    assert rc == 0
    [result] = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert result["algo"] == "sac" and result["timesteps"] == 300 and result["episodes"] == 2
    assert math.isfinite(result["true_mean"]) and -2000 < result["true_mean"] <= 0  # Pendulum returns are negative
    assert math.isfinite(result["learned_mean"])
    assert len(json.loads((tmp_path / "runs" / "sac" / "Pendulum-v1_1" / "evaluations.json").read_text())) == 2
