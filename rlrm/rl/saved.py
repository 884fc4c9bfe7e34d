"""Saved agents put to use: an agent file loaded with what its run used (normalization statistics, reward
shaping, evaluation seed) for evaluation, and behaviour policies from saved agents for ``collect``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from rlrm import model as rm
from rlrm.data.rollout import Policy, random_policy
from rlrm.errors import ConfigError
from rlrm.reward_fn import RewardFn
from rlrm.rl.envs import load_vecnormalize, make_vec_env
from rlrm.rl.files import load_agent
from rlrm.rl.folder import RunFolder, learned_reward, normalize_options
from rlrm.tasks import Task


@dataclass
class LoadedAgent:
    """An agent ready to evaluate: the agent, its evaluation env (true reward inside, learned beside), and the
    settings used."""

    agent: BaseAlgorithm
    venv: VecEnv
    task: Task
    episodes: int
    seed: int


def load_agent_for_eval(agent_path: Path, folder: RunFolder | None, *, task: Task | None = None,
                        n_episodes: int | None = None, seed: int | None = None,
                        reward_model: rm.RewardModel | None = None) -> LoadedAgent:
    """Load an agent file with what its run used: normalization statistics, reward shaping, evaluation seed.

    :param folder: the agent's run folder (``None``: a bare agent file; then ``task`` is required).
    :param reward_model: report the learned return of this model (default: the run's model, if any).
    """
    spec = folder.spec() if folder is not None else None
    task = task or (spec.task if spec else None)
    if task is None:
        raise ConfigError(f"agent {agent_path}: no run config; the task must be given")
    episodes = n_episodes if n_episodes is not None else (spec.eval_episodes if spec else 10)
    if episodes < 1:
        raise ConfigError(f"episodes must be at least 1, got {episodes}")
    seed = seed if seed is not None else (spec.eval_seed if spec else 12345)
    same_task = spec is not None and spec.task.name == task.name
    if reward_model is not None:
        learned: RewardFn | None = reward_model.reward_fn(task.name)
    else:
        learned = learned_reward(spec) if spec is not None and same_task else None
    normalize = normalize_options(spec.agent) if spec is not None else None
    shaping = spec.shaping if spec is not None and same_task and spec.reward == "learned" else None
    venv = make_vec_env(task, min(episodes, 5), seed, learned, normalize, training=False, shaping=shaping)
    if isinstance(venv, VecNormalize) and folder is not None:
        stats = folder.normalization_for(agent_path)
        if not stats.exists():
            venv.close()
            raise ConfigError(f"agent {agent_path}: its run used VecNormalize but {stats} is missing; the agent "
                              "cannot be evaluated without its normalization statistics")
        load_vecnormalize(venv, stats)
    try:
        agent = load_agent(agent_path, env=venv, algo=spec.agent.algo if spec else None, env_name=task.name)
    except BaseException:
        venv.close()
        raise
    venv.seed(seed)  # loading with an env re-seeds it with the agent's training seed
    return LoadedAgent(agent, venv, task, episodes, seed)


def agent_policy(spec: str, action_space: spaces.Space, n_envs: int, seed: int) -> Policy:
    """A behaviour policy from a spec: ``random``, ``PATH.zip`` (a saved SB3 agent, deterministic=False) or
    ``mixture:PATH.zip:EPS`` (the agent, replaced by a random action with probability EPS per env step)."""
    if spec == "random":
        return random_policy(action_space, n_envs, seed)
    eps = 0.0
    path = spec
    if spec.startswith("mixture:"):
        path, _, eps_text = spec[len("mixture:"):].rpartition(":")
        try:
            eps = float(eps_text)
        except ValueError:
            eps = -1.0
        if not path or not 0.0 <= eps <= 1.0:
            raise ConfigError(f"policy {spec!r}: expected mixture:PATH.zip:EPS with EPS in [0, 1]")
    agent = load_agent(path)
    rand = random_policy(action_space, n_envs, seed)
    rng = np.random.default_rng(seed)

    def act(obs: object) -> np.ndarray:
        actions, _ = agent.predict(obs, deterministic=False)
        if eps > 0:
            mask = rng.random(n_envs) < eps
            if mask.any():
                actions = np.array(actions, copy=True)
                actions[mask] = rand(obs)[mask]
        return actions

    return act
