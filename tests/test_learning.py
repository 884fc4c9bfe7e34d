"""The product claim, end to end through ``python -m rlrm.train_agent``: an agent trained on a LEARNED reward
does well on the TRUE one.

The claim is tested on Pendulum-v1, whose learned reward is a fitted function that differs from the true one.
CartPole-v1's labels are the constant +1, so its learned reward IS the true reward: that test checks the
pipeline (discrete actions, the constant head), not reward learning, and says so."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from rlrm import model as rm
from rlrm.data.rollout import collect
from rlrm.rl.evaluation import random_returns
from rlrm.tasks import Task
from rlrm.train_agent import entry

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"

pytestmark = pytest.mark.slow
PENDULUM_STEPS = 60_000


def _random_policy_return(env_id: str, episodes: int = 10, seed: int = 0) -> float:
    return float(random_returns(Task(env_id, env_id), episodes, seed).mean())


def test_ppo_on_a_learned_pendulum_reward_beats_random_on_the_true_reward(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # 10k random-policy transitions with oracle labels -> the default reward model -> PPO (agents/ppo.yaml) on it
    rc = entry(["--env", "Pendulum-v1", "-n", str(PENDULUM_STEPS), "--collect-steps", "10000",
                "--reward-epochs", "10", "--eval-episodes", "10", "--eval-freq", "1000000", "--no-progress"])
    assert rc == 0
    [result] = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert result["reward"] == "learned" and result["episodes"] == 10

    # the learned reward is NOT the true one: fresh transitions, learned vs env reward
    model = rm.load(tmp_path / "runs" / "reward" / "reward_model.safetensors")
    assert model.head_info("Pendulum-v1").label_std > 0
    fresh = collect(Task("Pendulum-v1", "Pendulum-v1"), 2000, n_envs=4, seed=99, progress=False)
    learned = model.predict("Pendulum-v1", fresh.obs, fresh.action, fresh.next_obs, fresh.terminated)
    gap = np.abs(learned - fresh.env_reward)
    assert gap.mean() > 1e-3 and gap.max() > 1e-2, gap.mean()

    # evaluated on the TRUE reward: a random policy scores about -1200 here; the agent must beat it by 600+
    random_return = _random_policy_return("Pendulum-v1")
    assert random_return < -900
    assert result["true_mean"] >= random_return + 600, (result, random_return)
    assert math.isfinite(result["learned_mean"])


def test_ppo_pipeline_on_cartpole_whose_learned_reward_is_the_constant_true_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a reward-learning test: CartPole's labels are constant, so its head predicts +1 exactly. It checks
    the discrete-action pipeline end to end."""
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
    model = rm.load(tmp_path / "runs" / "reward" / "reward_model.safetensors")
    assert model.head_info("CartPole-v1").label_std == 0  # the claim above: constant head


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
