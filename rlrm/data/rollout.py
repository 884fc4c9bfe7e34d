"""Roll out a behaviour policy in vectorized envs and record transitions (labeled by the task's labeler).

A behaviour policy is any callable ``obs batch -> action batch`` (:data:`Policy`); building one from a saved
agent lives with the RL code (``rlrm.rl.files.agent_policy``).

Every episode starts from ``env.reset(seed=episode_seed(seed, episode))`` and the seed is stored per transition
(``TransitionDataset.episode_seed``), so an episode can be replayed from its seed and stored actions
(:func:`replay_episode`).
"""

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
from rlrm.errors import ConfigError, DatasetError, SpaceError
from rlrm.tasks import Task

Policy = Callable[[sp.Batch], np.ndarray]


def random_policy(action_space: spaces.Space, n_envs: int, seed: int) -> Policy:
    """Uniformly random actions (one per env)."""
    action_space = _copy_space(action_space)
    action_space.seed(seed)
    return lambda obs: np.stack([np.asarray(action_space.sample()) for _ in range(n_envs)])


def _copy_space(space: spaces.Space) -> spaces.Space:
    return sp.space_from_json(sp.space_to_json(space))


def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of episode ``episode`` of a collection run with ``seed``: a 32-bit number drawn from
    ``numpy.random.SeedSequence(seed, spawn_key=(episode,))``, so nearby seeds/episodes give unrelated streams."""
    return int(np.random.SeedSequence(seed, spawn_key=(episode,)).generate_state(1, np.uint32)[0])


def _reset_with_seed(venv: DummyVecEnv, i: int, seed: int, obs_space: spaces.Space, batch: sp.Batch) -> None:
    """Reset sub-env ``i`` with ``seed`` and write its first observation into row ``i`` of ``batch`` (in place);
    this replaces the unseeded auto-reset of SB3's ``DummyVecEnv``."""
    first, _ = venv.envs[i].reset(seed=seed)
    one = sp.split(obs_space, sp.add_batch_dim(obs_space, first), "obs")
    for name, arr in sp.split(obs_space, batch, "obs").items():
        arr[i] = one[name][0]


def collect(task: Task, steps: int, policy: Policy | None = None, n_envs: int = 8, seed: int = 0,
            labeler: str | None = None, progress: bool = True, policy_name: str | None = None) -> TransitionDataset:
    """Collect ``steps`` transitions of ``task`` and label them.

    :param policy: a callable ``obs batch -> action batch`` (``None``: uniformly random actions).
    :param policy_name: how the dataset's info records the policy (default ``random`` or ``callable``).
    :param labeler: overrides the task's labeler (``env``, ``python:...``, ``file:...``).
    :return: a dataset sorted by (episode, step); episodes cut by the step budget are kept, unfinished.
    """
    if steps <= 0 or n_envs <= 0:
        raise ConfigError(f"steps and n_envs must be positive, got steps={steps}, n_envs={n_envs}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative integer, got {seed!r}")
    if policy is not None and not callable(policy):
        raise ConfigError(f"policy: expected a callable (obs batch -> action batch) or None for random actions, got "
                          f"{type(policy).__name__} {policy!r}")
    try:
        venv = DummyVecEnv([lambda: task.make_env() for _ in range(n_envs)])
    except NotImplementedError as err:  # SB3 vector envs reject Dict/Tuple spaces nested in Dict/Tuple
        raise SpaceError(f"task {task.name!r}: cannot collect with SB3 vector envs: {err} Build the "
                         "dataset with TransitionDataset.from_arrays from your own rollouts instead.") from None
    try:
        obs_space, act_space = venv.observation_space, venv.action_space
        act = policy if policy is not None else random_policy(act_space, n_envs, seed)
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
                                                        ("step", np.int32), ("episode_seed", np.int64))}
        obs = venv.reset()
        episode = np.arange(n_envs, dtype=np.int64)
        seeds = np.array([episode_seed(seed, i) for i in range(n_envs)], dtype=np.int64)
        for i in range(n_envs):
            _reset_with_seed(venv, i, int(seeds[i]), obs_space, obs)
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
            scalars["episode_seed"][rows] = seeds
            step += 1
            for i in np.flatnonzero(dones):
                episode[i] = next_episode
                seeds[i] = episode_seed(seed, next_episode)
                _reset_with_seed(venv, i, int(seeds[i]), obs_space, next_obs)
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
        info={"policy": policy_name or ("random" if policy is None else "callable"), "seed": seed, "n_envs": n_envs})
    return labelers.apply(ds, labeler or task.labeler)


def summary_row(ds: TransitionDataset) -> dict[str, Any]:
    """Per-task numbers for the end-of-run table."""
    return {"task": ds.task.name, "transitions": len(ds), "episodes": ds.n_episodes,
            "label_source": ds.label_source, "label_mean": float(ds.label.mean()) if len(ds) else float("nan"),
            "label_std": float(ds.label.std()) if len(ds) else float("nan")}


def replay_episode(ds: TransitionDataset, episode: int, env: Any = None) -> tuple[sp.Batch, sp.Batch]:
    """Replay one stored episode: ``env.reset(seed=its episode_seed)``, then its stored actions in order.

    :param env: a Gymnasium env of the dataset's task (e.g. made with ``render_mode="rgb_array"`` to draw
        frames between steps is the caller's business); ``None``: ``ds.task.make_env()``, closed afterwards.
    :return: ``(obs, next_obs)`` batches row-aligned with the episode's rows of ``ds``.
    :raises DatasetError: the dataset has no episode seeds, or no such episode.
    """
    if ds.episode_seed is None:
        raise DatasetError(f"task {ds.task.name!r}: the dataset has no field 'episode_seed' (collected before rlrm "
                           "stored reset seeds, or built from arrays without them); its episodes cannot be replayed")
    rows = np.flatnonzero(ds.episode == episode)
    if not len(rows):
        raise DatasetError(f"task {ds.task.name!r}: episode {episode} not in the dataset (episodes "
                           f"{int(ds.episode.min()) if len(ds) else '-'}..{int(ds.episode.max()) if len(ds) else '-'})")
    own = env is None
    env = ds.task.make_env() if own else env
    try:
        actions = sp.select(ds.action, rows)
        first, _ = env.reset(seed=int(ds.episode_seed[rows[0]]))
        seen = [first]
        for k in range(len(rows)):
            action = actions[k] if isinstance(actions, np.ndarray) else sp.select(actions, k)
            obs, *_ = env.step(action)
            seen.append(obs)
    finally:
        if own:
            env.close()
    batch = sp.stack(ds.obs_space, seen)
    return sp.select(batch, slice(0, len(rows))), sp.select(batch, slice(1, len(rows) + 1))
