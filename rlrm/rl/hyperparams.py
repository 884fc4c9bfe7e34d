"""Agent specs: the algorithm registry and hyperparameters from ``agents/<algo>.yaml`` (RL Zoo layout: top-level
keys are env ids plus ``default``), overridable from the command line, validated before any long step."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv

from rlrm.errors import ConfigError
from rlrm.model.network import ACTIVATIONS
from rlrm.resources import data_dir
from rlrm.tasks import Task

ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC, "a2c": A2C, "td3": TD3, "dqn": DQN}
OFF_POLICY = {"sac", "td3", "dqn"}
RESERVED = {"self", "env", "_init_setup_model", "seed", "device", "verbose", "tensorboard_log"}  # set by rlrm
SPECIAL_KEYS = {"n_timesteps", "n_envs", "policy", "normalize", "policy_kwargs", "action_noise"}


@dataclass
class AgentSpec:
    """An algorithm with its hyperparameters for one task, as plain data (JSON-friendly).

    ``kwargs`` go to the algorithm's constructor after :func:`build_kwargs` turns schedule strings
    (``lin_0.001``), activation names and action-noise specs into objects.
    """

    algo: str
    n_timesteps: int
    n_envs: int = 1
    policy: str = "MlpPolicy"
    normalize: dict[str, Any] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"algo": self.algo, "n_timesteps": self.n_timesteps, "n_envs": self.n_envs, "policy": self.policy,
                "normalize": self.normalize, "kwargs": self.kwargs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentSpec:
        return cls(d["algo"], int(d["n_timesteps"]), int(d["n_envs"]), d["policy"], d.get("normalize"),
                   dict(d.get("kwargs") or {}))


def algo_class(algo: str) -> type[BaseAlgorithm]:
    """The SB3 class of an algorithm name (``ppo``, ``sac``, ...)."""
    try:
        return ALGOS[algo.lower()]
    except KeyError:
        raise ConfigError(f"unknown algorithm {algo!r}; expected one of {', '.join(ALGOS)}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: hyperparameter file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of env ids to hyperparameters")
    return doc


def default_algo(task: Task) -> str:
    """The algorithm ``agents/algos.yaml`` names for the task (by task name, then env id)."""
    table = _read_yaml(data_dir("agents") / "algos.yaml")
    return str(table.get(task.name, table.get(task.env_id, table.get("default", "ppo"))))


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["n_steps:64", "policy_kwargs:{net_arch: [32]}"]`` → a dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise ConfigError(f"params {item!r}: expected key:value")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"params {item!r}: the value is not valid YAML") from None
    return out


def load_spec(algo: str, task: Task, overrides: dict[str, Any] | None = None,
              hyperparams_dir: str | os.PathLike | None = None) -> AgentSpec:
    """Hyperparameters for ``algo`` on ``task``: ``default`` ← env id entry ← task-name entry ← overrides.

    Unknown keys (not constructor arguments of the algorithm) are a :class:`ConfigError`.
    """
    algo = algo.lower()
    cls = algo_class(algo)
    path = Path(hyperparams_dir or data_dir("agents")) / f"{algo}.yaml"
    table = _read_yaml(path)
    params: dict[str, Any] = {}
    for key in ("default", task.env_id, task.name):
        entry = table.get(key) or {}
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: entry {key!r}: expected a mapping")
        params.update(entry)
    params.update(overrides or {})
    signature = inspect.signature(cls.__init__).parameters
    allowed = set(signature) - RESERVED
    unknown = sorted(set(params) - allowed - SPECIAL_KEYS)
    if unknown:
        raise ConfigError(f"{algo} hyperparameters for {task.name}: unknown key(s) {unknown} "
                          f"(from {path} or the overrides); {algo.upper()} accepts {sorted(allowed | SPECIAL_KEYS)}")
    for key, value in params.items():
        default = signature[key].default if key in signature else None
        _check_type(f"{algo} hyperparameters for {task.name}: {key!r}", value, default)
    try:
        n_timesteps = int(float(params.pop("n_timesteps", 1e6)))
        n_envs = int(params.pop("n_envs", 1))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{algo} hyperparameters for {task.name}: n_timesteps/n_envs must be numbers "
                          f"({err})") from None
    if n_timesteps <= 0 or n_envs <= 0:
        raise ConfigError(f"{algo} hyperparameters for {task.name}: n_timesteps and n_envs must be positive")
    normalize = params.pop("normalize", False)
    if normalize is True:
        normalize = {}
    elif normalize is False or normalize is None:
        normalize = None
    elif not isinstance(normalize, dict):
        raise ConfigError(f"{algo} hyperparameters for {task.name}: 'normalize' must be true/false or a mapping")
    return AgentSpec(algo, n_timesteps, n_envs, str(params.pop("policy", "MlpPolicy")), normalize, params)


def _check_type(where: str, value: Any, default: Any) -> None:
    """Numbers where the algorithm's default is a number (schedules ``lin_x`` and ``auto`` allowed)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
    elif isinstance(default, (int, float)) and not isinstance(value, (int, float)):
        if isinstance(value, str) and (value.startswith("lin_") or value.startswith("auto")):
            return
        if isinstance(value, list) and isinstance(default, int):  # e.g. train_freq: [1, episode]
            return
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    elif isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) \
            and not value.is_integer():
        raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _schedule(value: Any, key: str) -> Any:
    if isinstance(value, str) and value.startswith("lin_"):
        try:
            start = float(value[4:])
        except ValueError:
            raise ConfigError(f"hyperparameter {key!r}: bad schedule {value!r}; expected lin_<float>") from None
        return LinearSchedule(start)
    return value


class LinearSchedule:
    """``progress_remaining * start`` (a picklable SB3 schedule)."""

    def __init__(self, start: float) -> None:
        self.start = start

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.start


def build_kwargs(spec: AgentSpec, n_actions: int | None = None) -> dict[str, Any]:
    """Constructor keyword arguments with schedules, activations and action noise made into objects."""
    kwargs = {k: _schedule(v, k) for k, v in spec.kwargs.items()}
    pk = dict(kwargs.pop("policy_kwargs", None) or {})
    if isinstance(pk.get("activation_fn"), str):
        name = pk["activation_fn"].lower().removeprefix("nn.")
        if name not in ACTIVATIONS:
            raise ConfigError(f"policy_kwargs.activation_fn {pk['activation_fn']!r}: expected one of "
                              f"{sorted(ACTIVATIONS)}")
        pk["activation_fn"] = ACTIVATIONS[name]
    if pk:
        kwargs["policy_kwargs"] = pk
    noise = kwargs.pop("action_noise", None)
    if noise:
        if not isinstance(noise, dict) or noise.get("type", "normal") != "normal" or n_actions is None:
            raise ConfigError(f"action_noise {noise!r}: expected {{type: normal, sigma: 0.1}} on a Box action space")
        sigma = float(noise.get("sigma", 0.1))
        kwargs["action_noise"] = NormalActionNoise(np.zeros(n_actions), sigma * np.ones(n_actions))
    return kwargs


def check_spec(task: Task, spec: AgentSpec) -> None:
    """Build the agent once on a plain env to catch bad hyperparameter values early (:class:`ConfigError`)."""
    venv = DummyVecEnv([task.make_env] * spec.n_envs)
    try:
        kwargs = build_kwargs(spec, int(np.prod(venv.action_space.shape)) if venv.action_space.shape else None)
        if "buffer_size" in kwargs:
            kwargs["buffer_size"] = 16  # the size is checked, not allocated
        try:
            algo_class(spec.algo)(spec.policy, venv, device="cpu", verbose=0, **kwargs)
        except (TypeError, ValueError, AssertionError, KeyError) as err:
            raise ConfigError(f"{spec.algo} hyperparameters for {task.name}: {str(err).splitlines()[0]}") from None
    finally:
        venv.close()
