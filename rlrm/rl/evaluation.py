"""Evaluate an agent on the TRUE reward (Monitor's episode return), with the learned return beside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from rlrm.errors import RewardError
from rlrm.tasks import Task


@dataclass
class EvalResult:
    """Per-episode true returns, learned returns (NaN without a learned reward) and lengths."""

    true_returns: list[float] = field(default_factory=list)
    learned_returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        t, learned = np.asarray(self.true_returns), np.asarray(self.learned_returns)
        has_learned = len(learned) and not np.isnan(learned).all()
        return {"episodes": len(t), "true_mean": float(t.mean()) if len(t) else float("nan"),
                "true_std": float(t.std()) if len(t) else float("nan"),
                "learned_mean": float(np.nanmean(learned)) if has_learned else float("nan"),
                "learned_std": float(np.nanstd(learned)) if has_learned else float("nan"),
                "length_mean": float(np.mean(self.lengths)) if self.lengths else float("nan")}


def evaluate_agent(agent: BaseAlgorithm, venv: VecEnv, n_episodes: int = 10, deterministic: bool = True) -> EvalResult:
    """Run ``n_episodes`` episodes spread evenly over the envs of ``venv`` (as SB3's ``evaluate_policy``).

    ``venv`` must have Monitor inside each env (see :func:`rlrm.rl.envs.make_vec_env`): the true return is
    Monitor's ``info["episode"]["r"]``; the learned one is ``info["learned_episode"]["r"]`` when a
    learned-reward wrapper is present.
    """
    n = venv.num_envs
    targets = np.array([(n_episodes + i) // n for i in range(n)])
    counts = np.zeros(n, dtype=int)
    result = EvalResult()
    obs = venv.reset()
    states = None
    starts = np.ones(n, dtype=bool)
    while (counts < targets).any():
        actions, states = agent.predict(obs, state=states, episode_start=starts, deterministic=deterministic)
        obs, _, dones, infos = venv.step(actions)
        starts = dones
        for i in np.flatnonzero(dones):
            if counts[i] >= targets[i]:
                continue
            episode = infos[i].get("episode")
            if episode is None:
                raise RewardError("the evaluation env has no Monitor inside: the true return cannot be read")
            result.true_returns.append(float(episode["r"]))
            result.lengths.append(int(episode["l"]))
            result.learned_returns.append(float(infos[i].get("learned_episode", {}).get("r", np.nan)))
            counts[i] += 1
    return result


def random_returns(task: Task, episodes: int = 10, seed: int = 0) -> np.ndarray:
    """True returns of uniformly random actions on ``task`` (its own reward: an ``rlrm:`` task's labeler), one per
    episode; the "random = 0" end of a normalized score."""
    env = task.make_env()
    env.action_space.seed(seed)
    returns = []
    try:
        for ep in range(episodes):
            env.reset(seed=seed + ep)
            total, done = 0.0, False
            while not done:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total, done = total + float(reward), terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return np.asarray(returns)
