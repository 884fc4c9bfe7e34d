"""Checks of training data against their tasks' envs: errors for data that cannot fit (spaces), warnings for data
that will train, but likely not into the reward the user wants (:func:`data_warnings`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np

from rlrm import spaces as sp
from rlrm.data.dataset import TransitionDataset
from rlrm.errors import DatasetError

#: random steps :func:`data_warnings` takes in an env to learn whether it can terminate
PROBE_STEPS = 1000


class DataWarning(UserWarning):
    """Training data that trains, but likely not into the intended reward (one line each; CLIs show them)."""


def check_env_spaces(datasets: Sequence[TransitionDataset], paths: Sequence[str | Path]) -> None:
    """Raise :class:`DatasetError` naming the dataset and both spaces when a dataset's spaces cannot be its task's
    env's (structure and shapes are compared, as the wrappers do; Box bounds and dtypes are not).

    :param paths: where each dataset was read from (for the message).
    """
    for ds, path in zip(datasets, paths):
        env = ds.task.make_env()
        try:
            obs_space, action_space = env.observation_space, env.action_space
        finally:
            env.close()
        for what, found, expected in (("observation", ds.obs_space, obs_space), ("action", ds.action_space,
                                                                                  action_space)):
            if sp.layout(found) != sp.layout(expected):
                raise DatasetError(f"{path}: {what} space {found} does not fit task {ds.task.name!r}: its env "
                                   f"{ds.task.env_id} has {expected}")


def data_warnings(datasets: Sequence[TransitionDataset]) -> list[str]:
    """One line per likely problem with a task's training data (an empty list when there is none).

    Three heuristics, each about one task:

    - **constant labels** (std at most 1e-8, as the model decides it): the learned reward is that constant.
    - **no terminated transition although the env can terminate**: the data hold none, and random actions in the
      env end an episode by termination within :data:`PROBE_STEPS` steps (CartPole, LunarLander do; Pendulum never
      does; MountainCar's goal is out of a random policy's reach, and then the next check speaks). The model then
      cannot learn what ending an episode is worth.
    - **rewarding states never reached** (env-reward labels, env with a ``reward_threshold`` in its spec): no
      episode could reach the threshold with the labels seen, i.e. even earning the largest label at every step
      of the longest episode (or at one step, when the largest label is negative) stays below it. MountainCar-
      Continuous from random steps: no goal bonus, labels at most ~0 against a threshold of 90, so the learned
      optimum is to stand still.
    """
    lines: list[str] = []
    for ds in datasets:
        lines += _task_warnings(ds)
    return lines


def _task_warnings(ds: TransitionDataset) -> list[str]:
    name, label = ds.task.name, np.asarray(ds.label, np.float64)
    if not len(label):
        return []
    lines = []
    if float(label.std()) <= 1e-8:
        lines.append(f"task {name!r}: labels are constant ({label[0]:g}): its learned reward is that constant, so "
                     "this task does not test reward learning")
    try:
        env = ds.task.make_env()
    except Exception:  # a warning check never fails the job; the space check reports the env
        return lines
    try:
        if not ds.terminated.any():
            steps = _steps_to_termination(env)
            if steps is not None:
                lines.append(f"task {name!r}: no transition in the data is terminated, but {ds.task.env_id} "
                             f"terminates (random actions ended an episode after {steps} steps): the model cannot "
                             "learn what ending an episode is worth; collect data that includes terminations")
        threshold = env.spec.reward_threshold if env.spec is not None else None
        if ds.label_source == "env" and threshold is not None:  # the threshold is about the env's own reward
            lines += _unreached(ds, label, float(threshold), env.spec.max_episode_steps)
    finally:
        env.close()
    return lines


def _steps_to_termination(env: gym.Env) -> int | None:
    """Steps of random actions until ``env`` terminates (not truncates), or None within :data:`PROBE_STEPS`."""
    env.action_space.seed(0)
    env.reset(seed=0)
    length = 0
    for _ in range(PROBE_STEPS):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        length += 1
        if terminated:
            return length
        if truncated:
            env.reset()
            length = 0
    return None


def _unreached(ds: TransitionDataset, label: np.ndarray, threshold: float, max_steps: int | None) -> list[str]:
    longest = int(np.max(np.unique(ds.episode, return_counts=True)[1]))
    horizon = max(ds.task.max_episode_steps or max_steps or 0, longest)
    top = float(label.max())
    best = top * horizon if top > 0 else top
    if best >= threshold:
        return []
    return [f"task {ds.task.name!r}: labels never exceed {top:g}, so no episode of at most {horizon} steps reaches "
            f"{ds.task.env_id}'s reward_threshold {threshold:g}: the behaviour policy likely never reached the "
            "rewarding states, and the learned reward's optimum may avoid them"]
