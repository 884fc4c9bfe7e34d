"""Roll out a behaviour policy in vectorized envs and record transitions (labeled by the task's labeler)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv
from tqdm.auto import tqdm

from rlrm import spaces as sp
from rlrm.data import labels as labelers
from rlrm.data.dataset import TransitionDataset
from rlrm.errors import ConfigError, SpaceError
from rlrm.tasks import Task

Policy = Callable[[sp.Batch], np.ndarray]


def random_policy(action_space: spaces.Space, n_envs: int, seed: int) -> Policy:
    """Uniformly random actions (one per env)."""
    action_space = _copy_space(action_space)
    action_space.seed(seed)
    return lambda obs: np.stack([np.asarray(action_space.sample()) for _ in range(n_envs)])


def _copy_space(space: spaces.Space) -> spaces.Space:
    return sp.space_from_json(sp.space_to_json(space))


def make_policy(spec: str, action_space: spaces.Space, n_envs: int, seed: int) -> Policy:
    """``random``, ``PATH.zip`` (a saved SB3 agent, deterministic=False) or ``mixture:PATH.zip:EPS``
    (the agent, replaced by a random action with probability EPS per env step)."""
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
            raise ConfigError(f"--policy {spec!r}: expected mixture:PATH.zip:EPS with EPS in [0, 1]")
    from rlrm.agents import load_agent  # SB3 agent loading lives with the agents

    agent = load_agent(path)
    rand = random_policy(action_space, n_envs, seed)
    rng = np.random.default_rng(seed)

    def act(obs: sp.Batch) -> np.ndarray:
        actions, _ = agent.predict(obs, deterministic=False)
        if eps > 0:
            mask = rng.random(n_envs) < eps
            if mask.any():
                actions = np.array(actions, copy=True)
                actions[mask] = rand(obs)[mask]
        return actions

    return act


def collect(task: Task, steps: int, policy: str | Policy = "random", n_envs: int = 8, seed: int = 0,
            labeler: str | None = None, progress: bool = True) -> TransitionDataset:
    """Collect ``steps`` transitions of ``task`` and label them.

    :param policy: a spec for :func:`make_policy` or a callable ``obs batch -> action batch``.
    :param labeler: overrides the task's labeler (``env``, ``python:...``, ``file:...``).
    :return: a dataset sorted by (episode, step); episodes cut by the step budget are kept, unfinished.
    """
    if steps <= 0 or n_envs <= 0:
        raise ConfigError(f"steps and n_envs must be positive, got steps={steps}, n_envs={n_envs}")
    try:
        venv = DummyVecEnv([lambda: task.make_env() for _ in range(n_envs)])
    except NotImplementedError as err:  # SB3 vector envs reject Dict/Tuple spaces nested in Dict/Tuple
        raise SpaceError(f"task {task.name!r}: cannot collect with SB3 vector envs: {err} Build the "
                         "dataset with TransitionDataset.from_arrays from your own rollouts instead.") from None
    try:
        obs_space, act_space = venv.observation_space, venv.action_space
        act = make_policy(policy, act_space, n_envs, seed) if isinstance(policy, str) else policy
        n_iter = -(-steps // n_envs)
        total = n_iter * n_envs
        buf: dict[str, np.ndarray] = {}

        def store(prefix: str, space: spaces.Space, batch: sp.Batch, rows: slice) -> None:
            for name, arr in sp.split(space, batch, prefix).items():
                if name not in buf:
                    buf[name] = np.empty((total, *arr.shape[1:]), dtype=arr.dtype)
                buf[name][rows] = arr

        scalars = {k: np.zeros(total, dt) for k, dt in (("terminated", bool), ("truncated", bool),
                                                        ("env_reward", np.float32), ("episode", np.int64),
                                                        ("step", np.int32))}
        venv.seed(seed)
        obs = venv.reset()
        episode = np.arange(n_envs, dtype=np.int64)
        next_episode = n_envs
        step = np.zeros(n_envs, dtype=np.int32)
        for t in tqdm(range(n_iter), desc=f"collect {task.name}", unit_scale=n_envs, unit="step",
                      disable=not progress, leave=False):
            actions = act(obs)
            next_obs, rewards, dones, infos = venv.step(actions)
            rows = slice(t * n_envs, (t + 1) * n_envs)
            store("obs", obs_space, obs, rows)
            store("action", act_space, np.asarray(actions), rows)
            store("next_obs", obs_space, next_obs, rows)
            truncated = np.array([bool(info.get("TimeLimit.truncated", False)) for info in infos])
            for i in np.flatnonzero(dones):
                store("next_obs", obs_space, sp.add_batch_dim(obs_space, infos[i]["terminal_observation"]),
                      slice(t * n_envs + i, t * n_envs + i + 1))
            scalars["terminated"][rows] = dones & ~truncated
            scalars["truncated"][rows] = dones & truncated
            scalars["env_reward"][rows] = rewards
            scalars["episode"][rows] = episode
            scalars["step"][rows] = step
            step += 1
            for i in np.flatnonzero(dones):
                episode[i] = next_episode
                next_episode += 1
                step[i] = 0
            obs = next_obs
    finally:
        venv.close()
    keep = slice(0, steps)
    arrays = {k: v[keep] for k, v in buf.items()}
    ds = TransitionDataset.from_arrays(
        task, obs_space, act_space, obs=sp.join(obs_space, arrays, "obs"),
        action=sp.join(act_space, arrays, "action"), next_obs=sp.join(obs_space, arrays, "next_obs"),
        **{k: v[keep] for k, v in scalars.items()}, label_source="env",
        info={"policy": policy if isinstance(policy, str) else "callable", "seed": seed, "n_envs": n_envs})
    return labelers.apply(ds, labeler or task.labeler)


def summary_row(ds: TransitionDataset) -> dict[str, Any]:
    """Per-task numbers for the end-of-run table."""
    return {"task": ds.task.name, "transitions": len(ds), "episodes": ds.n_episodes,
            "label_source": ds.label_source, "label_mean": float(ds.label.mean()) if len(ds) else float("nan"),
            "label_std": float(ds.label.std()) if len(ds) else float("nan")}
