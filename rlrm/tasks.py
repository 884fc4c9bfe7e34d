"""Tasks (what a reward head predicts) and suites (named lists of tasks), read from ``envs/*.yaml``.

A task file looks like::

    tasks:
      Pendulum-v1: {}                              # name = env id, oracle labels
      Pendulum-v1/upright:                         # another task on the same env, labeled by your function
        env_id: Pendulum-v1
        labeler: python:my_pkg.rewards:upright     # (see examples/label_your_own_transitions.py)
    CartPole-v1/x=0.5:                           # a shipped reward function (rlrm.rewards), applied online too
        env_id: CartPole-v1
        labeler: rlrm:cartpole_position(target=0.5)
    suites:
      classic: [CartPole-v1, Pendulum-v1]
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml

import rlrm.gym_envs  # noqa: F401  (registers the rlrm/ envs, so gym.make("rlrm/PointGoal-v0") works)
from rlrm import rewards
from rlrm.errors import LabelError, TaskError
from rlrm.resources import data_dir

TASK_KEYS = {"env_id", "env_kwargs", "labeler", "max_episode_steps", "description"}


@dataclass(frozen=True)
class Task:
    """What one reward head predicts: an env (id + kwargs) and how its transitions are labeled.

    :param name: unique name; defaults to the env id.
    :param env_id: a registered Gymnasium id (``module:Id`` imports ``module`` first).
    :param env_kwargs: keyword arguments for ``gymnasium.make``.
    :param labeler: ``env`` (the env's own reward), ``rlrm:NAME(key=value, ...)`` (a reward function shipped in
        :mod:`rlrm.rewards`), ``python:pkg.mod:func`` or ``file:PATH``.
    :param max_episode_steps: optional time limit override.
    """

    name: str
    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    labeler: str = "env"
    max_episode_steps: int | None = None
    description: str = ""

    def make_env(self, **kwargs: Any) -> gym.Env:
        """Create the env (``render_mode`` etc. may be passed through ``kwargs``).

        For an ``rlrm:`` labeler the env's reward is replaced by the labeler applied online
        (:class:`rlrm.rewards.online.TaskReward`; the env's own reward goes to ``info["env_reward"]``), so a
        Monitor around it records the task's true return."""
        ensure_registered(self.env_id)
        _route_mujoco_warnings(self.env_id)
        options = {**self.env_kwargs, **kwargs}
        if self.max_episode_steps is not None:
            options["max_episode_steps"] = self.max_episode_steps
        env = gym.make(self.env_id, **options)
        if self.labeler.startswith(rewards.PREFIX):
            from rlrm.rewards.online import TaskReward

            env = TaskReward(env, rewards.reward_function(self.labeler), self.labeler)
        return env

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description (stored in datasets, models and run folders)."""
        out: dict[str, Any] = {"name": self.name, "env_id": self.env_id, "env_kwargs": copy.deepcopy(self.env_kwargs),
                               "labeler": self.labeler}
        if self.max_episode_steps is not None:
            out["max_episode_steps"] = self.max_episode_steps
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "task") -> Task:
        """Inverse of :meth:`to_dict`; ``where`` names the source in error messages."""
        if not isinstance(d, dict) or "name" not in d:
            raise TaskError(f"{where}: expected a mapping with a 'name', got {d!r}")
        return _parse_task(d["name"], {k: v for k, v in d.items() if k != "name"}, where)


_MUJOCO_ROUTED = False


def _route_mujoco_warnings(env_id: str) -> None:
    """MuJoCo writes warnings to ./MUJOCO_LOG.TXT (into whatever folder you run from); send them to Python's
    ``warnings`` instead, once, before the first MuJoCo env is built."""
    global _MUJOCO_ROUTED
    if _MUJOCO_ROUTED:
        return
    try:
        entry = str(gym.spec(env_id.split(":", 1)[-1]).entry_point)
    except gym.error.Error:
        return
    if "mujoco" not in entry:
        return
    import warnings

    import mujoco

    mujoco.set_mju_user_warning(lambda msg: warnings.warn(f"MuJoCo: {msg}", RuntimeWarning, stacklevel=2))
    _MUJOCO_ROUTED = True


#: modules that ``module:EnvId`` ids may import: only those the user named on the command line
_ALLOWED_ENV_MODULES: set[str] = set()


def env_module_of(env_id: str) -> str | None:
    """The module of a ``module:EnvId`` id (``None`` for a plain id)."""
    module, sep, _ = env_id.partition(":")
    return module if sep else None


def allow_env_modules(names: Iterable[str]) -> None:
    """Let ``module:EnvId`` ids import these modules. CLIs call it with what the user typed (``--env-module``, and
    the module of an id typed as ``--task module:EnvId``); an id read back from a file (a run's ``config.json``, a
    dataset or model file) never imports any other module, as importing runs the module's code.

    :param names: dotted module names.
    """
    for name in names:
        if not name or not all(part.isidentifier() for part in name.split(".")):
            raise TaskError(f"env module {name!r}: expected a dotted Python module name like mypkg.envs")
        _ALLOWED_ENV_MODULES.add(name)


def _import_env_module(module: str, env_id: str) -> None:
    # A module already imported runs no code when named again; any other one must be allowed explicitly.
    if module not in sys.modules and module not in _ALLOWED_ENV_MODULES:
        raise TaskError(f"env id {env_id!r}: rlrm imports module {module!r} only when it is named on the command "
                        f"line; if you trust it, add --env-module {module}")
    try:
        __import__(module)
    except ImportError as err:
        raise TaskError(f"env id {env_id!r}: cannot import module {module!r}: {err}") from None


def ensure_registered(env_id: str) -> None:
    """Raise :class:`TaskError` if ``env_id`` is not a known Gymnasium id (with Gymnasium's reason: unknown,
    deprecated, which versions exist). A ``module:EnvId`` id imports its module only if it is already imported or
    allowed by :func:`allow_env_modules`. The ``rlrm/`` ids (:mod:`rlrm.gym_envs`) are registered when this
    module is imported."""
    module = env_module_of(env_id)
    if module is not None:
        _import_env_module(module, env_id)
    try:
        gym.spec(env_id.split(":", 1)[1] if module is not None else env_id)
    except gym.error.Error as err:
        raise TaskError(f"unknown env id {env_id!r}: {str(err).splitlines()[0]}") from None


def _parse_task(name: str, body: Any, where: str) -> Task:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise TaskError(f"{where}: task {name!r}: expected a mapping, got {type(body).__name__}")
    unknown = set(body) - TASK_KEYS
    if unknown:
        raise TaskError(f"{where}: task {name!r}: unknown field(s) {sorted(unknown)}; expected {sorted(TASK_KEYS)}")
    env_kwargs = body.get("env_kwargs") or {}
    if not isinstance(env_kwargs, dict):
        raise TaskError(f"{where}: task {name!r}: field 'env_kwargs' must be a mapping")
    labeler = str(body.get("labeler", "env"))
    if not (labeler == "env" or labeler.startswith(("python:", "file:", rewards.PREFIX))):
        raise TaskError(f"{where}: task {name!r}: field 'labeler' must be 'env', 'rlrm:NAME(key=value, ...)', "
                        f"'python:module:function' or 'file:PATH', got {labeler!r}")
    if labeler.startswith(rewards.PREFIX):
        try:
            rewards.reward_function(labeler)
        except LabelError as err:
            raise TaskError(f"{where}: task {name!r}: field 'labeler': {err}") from None
    mes = body.get("max_episode_steps")
    return Task(name=str(name), env_id=str(body.get("env_id", name)), env_kwargs=dict(env_kwargs),
                labeler=labeler, max_episode_steps=int(mes) if mes is not None else None,
                description=str(body.get("description", "")))


@dataclass
class Catalog:
    """All known tasks and suites."""

    tasks: dict[str, Task] = field(default_factory=dict)
    suites: dict[str, list[str]] = field(default_factory=dict)

    def add_file(self, path: str | os.PathLike) -> None:
        """Merge a task/suite yaml file (later files override earlier names)."""
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise TaskError(f"{path}: task file not found") from None
        except yaml.YAMLError as err:
            raise TaskError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(doc, dict) or set(doc) - {"tasks", "suites"}:
            raise TaskError(f"{path}: expected top-level keys 'tasks' and/or 'suites', got {sorted(doc)}")
        for name, body in (doc.get("tasks") or {}).items():
            self.tasks[str(name)] = _parse_task(str(name), body, str(path))
        for name, members in (doc.get("suites") or {}).items():
            if not isinstance(members, list) or not members:
                raise TaskError(f"{path}: suite {name!r}: expected a non-empty list of task names")
            self.suites[str(name)] = [str(m) for m in members]

    def task(self, name: str) -> Task:
        """Look up a task by name; a plain registered env id works as an oracle task.

        An unknown name says why Gymnasium does not know it (e.g. a deprecated version and its successor)."""
        if name in self.tasks:
            return self.tasks[name]
        try:
            ensure_registered(name)
        except TaskError as err:
            if not str(err).startswith("unknown env id"):  # a module rlrm may not import: that is the message
                raise
            reason = str(err).split(": ", 1)[1]
            raise TaskError(f"unknown task or env id {name!r}: {reason} (known tasks: "
                            f"{', '.join(sorted(self.tasks))})") from None
        return Task(name=name, env_id=name)

    def suite(self, name: str) -> list[Task]:
        """The tasks of a suite."""
        if name not in self.suites:
            raise TaskError(f"unknown suite {name!r}; known suites: {', '.join(sorted(self.suites))}")
        return [self.task(t) for t in self.suites[name]]

    def resolve(self, tasks: Iterable[str] = (), suites: Iterable[str] = ()) -> list[Task]:
        """Tasks named directly plus the members of the named suites, without duplicates, in order."""
        out: dict[str, Task] = {}
        for s in suites:
            for t in self.suite(s):
                out.setdefault(t.name, t)
        for name in tasks:
            t = self.task(name)
            out.setdefault(t.name, t)
        return list(out.values())


def load_catalog(extra_files: Sequence[str | os.PathLike] = ()) -> Catalog:
    """The shipped ``envs/*.yaml`` plus ``extra_files`` and the files in ``$RLRM_TASKS`` (``:``-separated)."""
    cat = Catalog()
    for path in sorted(data_dir("envs").glob("*.yaml")):
        cat.add_file(path)
    env_files = [p for p in os.environ.get("RLRM_TASKS", "").split(os.pathsep) if p]
    for path in [*env_files, *extra_files]:
        cat.add_file(path)
    return cat
