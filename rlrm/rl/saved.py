"""Saved agents put to use: an agent file loaded with what its run used (normalization statistics, reward
shaping, evaluation seed) for evaluation, and behaviour policies from saved agents for ``collect``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from rlrm import model as rm
from rlrm.data.rollout import Policy, random_policy
from rlrm.errors import ConfigError, TaskError
from rlrm.reward_fn import RewardFn
from rlrm.rl.envs import load_vecnormalize, make_vec_env
from rlrm.rl.files import load_agent
from rlrm.rl.folder import RunFolder, RunSpec, learned_reward, normalize_options
from rlrm.tasks import Task, ensure_registered


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
                        reward_model: rm.RewardModel | None = None, trust_agent_file: bool = False) -> LoadedAgent:
    """Load an agent file with what its run used: normalization statistics, reward shaping, evaluation seed.

    :param folder: the agent's run folder (``None``: a bare agent file; then ``task`` is required).
    :param reward_model: report the learned return of this model (default: the run's model, if any; for a run
        with an online feedback loop, the newest model of that loop).
    :param trust_agent_file: unpickle the agent file as SB3 does (see :func:`rlrm.rl.files.load_agent`).
    """
    spec = _run_spec(folder)
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
        learned = _run_reward(spec, folder) if spec is not None and folder is not None and same_task else None
    normalize = normalize_options(spec.agent) if spec is not None else None
    shaping = spec.shaping if spec is not None and same_task and spec.reward == "learned" else None
    venv = make_vec_env(task, min(episodes, 5), seed, learned, normalize, training=False,
                        shaping=shaping.for_evaluation() if shaping is not None else None)
    try:
        if isinstance(venv, VecNormalize) and folder is not None:
            load_vecnormalize(venv, _statistics(folder, agent_path))
        agent = load_agent(agent_path, env=venv, algo=spec.agent.algo if spec else None, env_name=task.name,
                           agent_spec=spec.agent if spec else None, trust_agent_file=trust_agent_file,
                           for_training=False)
    except BaseException:
        venv.close()
        raise
    venv.seed(seed)  # loading with an env re-seeds it with the agent's training seed
    return LoadedAgent(agent, venv, task, episodes, seed)


def _run_spec(folder: RunFolder | None) -> RunSpec | None:
    """The folder's run spec, its env id checked first: an id read from a file never imports a module."""
    if folder is None:
        return None
    spec = folder.spec()
    try:
        ensure_registered(spec.task.env_id)
    except TaskError as err:
        raise ConfigError(f"{folder.config_path}: field 'task.env_id': {err}") from None
    return spec


def _statistics(folder: RunFolder, agent_path: Path) -> Path:
    """The VecNormalize statistics saved with an agent of a normalized run (an error if they are missing)."""
    stats = folder.normalization_for(agent_path)
    if not stats.exists():
        raise ConfigError(f"agent {agent_path}: its run used VecNormalize but {stats} is missing; the agent "
                          "cannot be run without its normalization statistics")
    return stats


def agent_policy(spec: str, task: Task, n_envs: int, seed: int, *, trust_agent_file: bool = False) -> Policy:
    """A behaviour policy from a spec: ``random``, ``PATH.zip`` (a saved SB3 agent, deterministic=False) or
    ``mixture:PATH.zip:EPS`` (the agent, replaced by a random action with probability EPS per env step).

    An agent of an rlrm run that used VecNormalize sees observations normalized with its saved statistics.

    :param task: the task collected on (its env's spaces are the ones the agent must have).
    :param trust_agent_file: unpickle the agent file as SB3 does (see :func:`rlrm.rl.files.load_agent`).
    """
    env = task.make_env()
    env.close()
    action_space = env.action_space
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
    folder = RunFolder.of_agent(path)
    run = _run_spec(folder)
    normalizer = _normalizer(folder, run, Path(path), task) if run is not None and folder is not None else None
    agent = load_agent(path, algo=run.agent.algo if run else None, env_name=task.name,
                       agent_spec=run.agent if run else None, spaces=(env.observation_space, action_space),
                       trust_agent_file=trust_agent_file, for_training=False)
    rand = random_policy(action_space, n_envs, seed)
    rng = np.random.default_rng(seed)

    def act(obs: object) -> np.ndarray:
        seen = normalizer.normalize_obs(obs) if normalizer is not None else obs
        actions, _ = agent.predict(seen, deterministic=False)
        if eps > 0:
            mask = rng.random(n_envs) < eps
            if mask.any():
                actions = np.array(actions, copy=True)
                actions[mask] = rand(obs)[mask]
        return actions

    return act


def _normalizer(folder: RunFolder, run: RunSpec, agent_path: Path, task: Task) -> VecNormalize | None:
    """A VecNormalize holding the run's saved statistics (only its ``normalize_obs`` is used), if the run used one."""
    normalize = normalize_options(run.agent)
    if normalize is None:
        return None
    stats = _statistics(folder, agent_path)
    venv = make_vec_env(task, 1, 0, None, normalize, training=False)
    venv.close()
    if not isinstance(venv, VecNormalize):  # make_vec_env adds one whenever normalize is set
        raise ConfigError(f"agent {agent_path}: no VecNormalize for the run's normalization {normalize}")
    load_vecnormalize(venv, stats)
    return venv


def _run_reward(spec: RunSpec, folder: RunFolder) -> RewardFn | None:
    """The reward a run's agent was last paid: the newest model of its feedback loop (``feedback.json``), else the
    run's reward model."""
    state = folder.feedback_dir / "feedback.json"
    if spec.feedback is None or not state.is_file():
        return learned_reward(spec)
    try:
        name = json.loads(state.read_text())["model"]
        path = (folder.feedback_dir / name).resolve()
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{state}: expected the feedback loop's record with a 'model' path ({err})") from None
    if folder.feedback_dir.resolve() not in path.parents:
        raise ConfigError(f"{state}: field 'model': {name!r} is outside the run's feedback folder")
    return rm.load(path).reward_fn(spec.task.name)
