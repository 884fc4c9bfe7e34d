"""Agent files: saving atomically, telling the algorithm of a saved agent, and loading it without running code
stored in it.

An SB3 agent file is a zip: a ``data`` JSON whose non-JSON entries (policy class, spaces, schedules, buffers of
recent episodes) are cloudpickled, and the network weights as ``.pth`` files, which SB3 reads with
``torch.load(weights_only=True)``. Unpickling runs whatever code the pickle names, so :func:`load_agent` never
unpickles: it rebuilds every pickled entry from the run's config (or the file's plain JSON values) and the env's
spaces, checks it against the readable description SB3 writes beside each pickle, and hands the rebuilt objects to
SB3 as ``custom_objects`` (SB3 then skips those pickles). A file with an entry that cannot be rebuilt is refused,
unless the caller trusts the file. An agent loaded only to act (evaluate, collect) needs just its policy class,
policy kwargs and spaces to match; its training settings (schedules, noise, buffers) are then SB3's defaults.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import VectorizedActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.save_util import is_json_serializable
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from rlrm import atomic
from rlrm.errors import ConfigError
from rlrm.rl.hyperparams import ALGOS, AgentSpec, algo_class, build_kwargs

#: pickled entries that are run-time state, not configuration: ``learn`` recreates them (from the env), and
#: ``predict`` does not use them; the rebuilt agent starts them empty
RUNTIME_STATE = frozenset({"_last_obs", "_last_original_obs", "_last_episode_starts", "ep_info_buffer",
                           "ep_success_buffer"})
#: pickled entries rebuilt from the run's config and the env's spaces (and checked against the file)
REBUILT = frozenset({"policy_class", "policy_kwargs", "observation_space", "action_space", "learning_rate",
                     "lr_schedule", "clip_range", "clip_range_vf", "exploration_schedule", "train_freq",
                     "action_noise", "rollout_buffer_class", "rollout_buffer_kwargs", "replay_buffer_class",
                     "replay_buffer_kwargs", "ent_coef", "target_entropy"})
#: what an agent acts with; the other rebuilt entries are used only by ``learn``
ACTING = frozenset({"policy_class", "policy_kwargs", "observation_space", "action_space"})
_CLASSES = {"policy_class", "rollout_buffer_class", "replay_buffer_class"}
_SPACES = ("observation_space", "action_space")
# constructor arguments that rlrm sets itself, or that the template agent must not take from the file
_NOT_KWARGS = {"self", "policy", "env", "device", "seed", "verbose", "_init_setup_model", "tensorboard_log",
               "buffer_size"}
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class UntrustedAgentFile(ConfigError):
    """An agent file that cannot be loaded without unpickling (which runs code the file may hold).

    :param path: the file.
    :param reason: what could not be rebuilt.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(self.message("trust_agent_file=True"))

    def message(self, opt_in: str) -> str:
        """The error, naming how the caller opts in (a parameter, or a CLI flag)."""
        return (f"agent {self.path}: {self.reason}; loading it means unpickling, which runs any code the file "
                f"holds: use {opt_in} only if you trust where the file comes from")


def run_config(path: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The ``config.json`` (path, content) of the rlrm run an agent file belongs to (beside it, or above a
    checkpoint), if any."""
    path = Path(path)
    for cfg in (path.parent / "config.json", path.parent.parent / "config.json"):
        if cfg.is_file():
            try:
                doc = json.loads(cfg.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("agent"), dict):
                return cfg, doc
    return None


def _read_data(path: Path) -> dict[str, Any]:
    """The zip's ``data`` JSON as it is (nothing unpickled)."""
    try:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read("data"))
    except FileNotFoundError:
        raise ConfigError(f"agent {path}: file not found") from None
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"agent {path}: not a Stable-Baselines3 agent file (.zip)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"agent {path}: not a Stable-Baselines3 agent file (its 'data' is not a JSON object)")
    return data


def _pickled(item: Any) -> bool:
    return isinstance(item, dict) and ":serialized:" in item


def detect_algo(path: str | os.PathLike) -> str:
    """The algorithm of a saved agent: from ``config.json`` beside it (rlrm run) or the zip's policy class."""
    path = Path(path)
    found = run_config(path)
    if found is not None and "algo" in found[1]["agent"]:
        return str(found[1]["agent"]["algo"])
    data = _read_data(path)
    policy = data.get("policy_class")
    module = str(policy.get("__module__", "")) if isinstance(policy, dict) else ""
    if module.endswith("common.policies"):  # PPO and A2C share ActorCriticPolicy: tell them by their data
        return "ppo" if "clip_range" in data else "a2c"
    for name in ALGOS:
        if f".{name}." in module or module.endswith(f".{name}"):
            return name
    raise ConfigError(f"agent {path}: cannot tell the algorithm of this agent (policy module {module!r})")


def load_agent(path: str | os.PathLike, env: VecEnv | None = None, algo: str | None = None,
               env_name: str | None = None, *, agent_spec: AgentSpec | None = None,
               spaces: tuple[gym.Space, gym.Space] | None = None, trust_agent_file: bool = False,
               for_training: bool = True) -> BaseAlgorithm:
    """Load a saved SB3 agent without unpickling anything from it (see the module docstring); with ``env``, check
    that its spaces match (a clear error if not).

    :param env: the env to bind the agent to (its spaces are the ones the agent must have).
    :param algo: the algorithm (default: :func:`detect_algo`).
    :param env_name: what ``env`` is called in that error (a task name).
    :param agent_spec: the run's agent spec (default: from the run's ``config.json``; else the file's plain values).
    :param spaces: (observation, action) space, when there is no ``env`` (an agent used only to act).
    :param trust_agent_file: unpickle the file's entries as SB3 does (runs any code they hold).
    :param for_training: the agent may learn, so its training settings must be rebuilt exactly; with ``False``
        (an agent that only acts) only what it acts with must be, and the rest are SB3's defaults.
    :raise UntrustedAgentFile: a pickled entry cannot be rebuilt (without ``trust_agent_file``).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"agent {path}: file not found")
    cls = algo_class(algo or detect_algo(path))
    custom: dict[str, Any] | None = None
    if not trust_agent_file:
        if env is not None:
            spaces = (env.observation_space, env.action_space)
        if spaces is None:
            raise ConfigError(f"agent {path}: loading an agent without unpickling needs its env (or its spaces)")
        if agent_spec is None and (found := run_config(path)) is not None:
            agent_spec = _spec_from_config(*found)
        custom = rebuilt_objects(path, cls, spaces, agent_spec, env_name, for_training)
    try:
        return cls.load(str(path), env=env, device="cpu", custom_objects=custom)
    except ValueError as err:
        if "space" in str(err).lower():
            than = f" than {env_name}" if env_name else ""
            raise ConfigError(f"agent {path}: the agent was trained on another env{than}: "
                              f"{str(err).splitlines()[0]}") from None
        raise ConfigError(f"agent {path}: cannot load agent: {str(err).splitlines()[0]}") from None
    except pickle.UnpicklingError as err:  # a .pth that is not plain tensors (torch.load weights_only=True)
        raise ConfigError(f"agent {path}: its weights (.pth) hold more than tensors; refused without loading "
                          f"({str(err).splitlines()[0][:120]})") from None
    except (zipfile.BadZipFile, KeyError, EOFError, AssertionError, RuntimeError, TypeError) as err:
        raise ConfigError(f"agent {path}: not a readable agent file ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200] if str(err) else 'truncated or inconsistent'})") from None


def _spec_from_config(path: Path, cfg: dict[str, Any]) -> AgentSpec:
    try:
        return AgentSpec.from_dict(cfg["agent"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: field 'agent' is not an agent spec ({type(err).__name__}: {err})") from None


def rebuilt_objects(path: Path, cls: type[BaseAlgorithm], spaces: tuple[gym.Space, gym.Space],
                    agent_spec: AgentSpec | None, env_name: str | None = None,
                    for_training: bool = True) -> dict[str, Any]:
    """SB3 ``custom_objects`` for every pickled entry of an agent file (and the spaces and policy class always),
    rebuilt by constructing the same algorithm on the same spaces, and checked against the file's descriptions
    (only what the agent acts with, unless ``for_training``).

    :raise UntrustedAgentFile: an entry that rlrm cannot rebuild, or that differs from the rebuilt one.
    :raise ConfigError: the spaces differ from the env's (the agent was trained on another env).
    """
    data = _read_data(path)
    pickled = {k for k, v in data.items() if _pickled(v)}
    unknown = sorted(pickled - REBUILT - RUNTIME_STATE)
    if unknown:
        raise UntrustedAgentFile(path, f"its entries {unknown} are pickled objects that rlrm cannot rebuild")
    if _pickled(data.get("action_space")):  # first: an algorithm cannot even be built on another action space
        _check_same(path, "action_space", data["action_space"], spaces[1], env_name)
    template = _template(path, cls, spaces, data, agent_spec)
    custom: dict[str, Any] = {}
    for key in sorted(pickled | {"policy_class", *_SPACES}):
        if key == "action_noise" and "VectorizedActionNoise" in str(data[key].get(":type:")) \
                and template.action_noise is not None:
            # learn() wraps the noise of a multi-env run; the rebuilt agent wraps it again when it learns
            template.action_noise = VectorizedActionNoise(template.action_noise, _n_envs(data))
        value = getattr(template, key, None)
        if key in pickled and (key in ACTING or (for_training and key not in RUNTIME_STATE)):
            _check_same(path, key, data[key], value, env_name)
        custom[key] = value
    return custom


def _template(path: Path, cls: type[BaseAlgorithm], spaces: tuple[gym.Space, gym.Space], data: dict[str, Any],
              agent_spec: AgentSpec | None) -> BaseAlgorithm:
    """The algorithm built as the file's run built it (config, or the file's plain values), on the same spaces."""
    signature = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in data.items() if k in signature and k not in _NOT_KWARGS and not _pickled(v)}
    if agent_spec is not None:
        n_actions = int(np.prod(spaces[1].shape)) if spaces[1].shape else None
        kwargs.update({k: v for k, v in build_kwargs(agent_spec, n_actions).items() if k not in _NOT_KWARGS})
        policy = agent_spec.policy
    else:
        policy = _policy_alias(cls, data.get("policy_class")) or "MlpPolicy"
    if policy not in cls.policy_aliases:
        raise UntrustedAgentFile(path, f"its policy {policy!r} is not one of {cls.__name__}'s "
                                       f"{sorted(cls.policy_aliases)}")
    if issubclass(cls, OffPolicyAlgorithm):
        kwargs["buffer_size"] = 16  # never filled: the template only supplies objects
    venv = DummyVecEnv([lambda: _SpacesEnv(*spaces)] * _n_envs(data))
    try:
        # its own RNG stream: building the template must not change what the caller's seed gives
        with th.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(policy, venv, device="cpu", verbose=0, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as err:
        raise UntrustedAgentFile(path, f"rlrm cannot rebuild its settings ({type(err).__name__}: "
                                       f"{str(err).splitlines()[0][:200]})") from None
    finally:
        venv.close()


def _n_envs(data: dict[str, Any]) -> int:
    """The file's number of envs, as a template needs it (a plain value: anything odd counts as one)."""
    n = data.get("n_envs")
    return min(n, 64) if isinstance(n, int) and n > 0 else 1


def _policy_alias(cls: type[BaseAlgorithm], described: Any) -> str | None:
    """The policy alias whose class matches the file's description of its policy class."""
    if not isinstance(described, dict):
        return None
    for alias, policy_cls in cls.policy_aliases.items():
        if _class_identity(_summary(policy_cls)) == _class_identity(_normalized(described)):
            return alias
    return None


class _SpacesEnv(gym.Env):
    """An env with given spaces that is never stepped: what an algorithm needs to be built."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        raise RuntimeError("a template env is never stepped")


# --------------------------------------------------------------------------- checking rebuilt objects
def _summary(item: Any) -> dict[str, Any]:
    """What SB3's ``data_to_json`` writes beside a pickled object: its type and first-level attributes."""
    out: dict[str, Any] = {":type:": str(type(item))}
    if hasattr(item, "__dict__") or isinstance(item, dict):
        pairs = item.items() if isinstance(item, dict) else vars(item).items()
        for name, value in pairs:
            out[name] = json.loads(json.dumps(value)) if is_json_serializable(value) else str(value)
    return _normalized(out)


def _normalized(described: dict[str, Any]) -> dict[str, Any]:
    """A description without the pickle, the RNG state and memory addresses (which differ between processes)."""
    return {k: _ADDRESS.sub("", v) if isinstance(v, str) else v for k, v in described.items()
            if k not in (":serialized:", "_np_random")}


def _class_identity(described: dict[str, Any]) -> tuple[Any, ...]:
    # module and the class that defines __init__ tell SB3's classes apart (docstrings change between versions)
    return described.get(":type:"), described.get("__module__"), described.get("__init__", described.get("__doc__"))


def _brief(described: dict[str, Any]) -> str:
    kind = str(described.get(":type:", "")).rsplit(".", 1)[-1].rstrip("'>")
    details = [f"{name} {described[k]}" for k, name in (("_shape", "shape"), ("n", "n"), ("dtype", "dtype"))
               if k in described]
    return f"{kind}({', '.join(details)})"


def _check_same(path: Path, key: str, in_file: dict[str, Any], value: Any, env_name: str | None) -> None:
    described, rebuilt = _normalized(in_file), _summary(value)
    if key in _CLASSES:
        described, rebuilt = dict(enumerate(_class_identity(described))), dict(enumerate(_class_identity(rebuilt)))
    if described == rebuilt:
        return
    if key in _SPACES:
        than = f" than {env_name}" if env_name else ""
        raise ConfigError(f"agent {path}: the agent was trained on another env{than}: its {key} is "
                          f"{_brief(described)}, the env's is {_brief(rebuilt)}")
    field = next(k for k in sorted(set(described) | set(rebuilt), key=str) if described.get(k) != rebuilt.get(k))
    raise UntrustedAgentFile(path, f"its pickled entry {key!r} differs from the one rlrm rebuilds from the run's "
                                   f"settings ({field}: {str(described.get(field))[:80]!r} in the file, "
                                   f"{str(rebuilt.get(field))[:80]!r} rebuilt)")


def save_agent(agent: BaseAlgorithm, path: str | os.PathLike) -> None:
    """``agent.save`` into a temp file renamed into place (SB3 writes zips in place; a kill leaves the old one)."""
    with atomic.temp_path(path) as tmp:
        agent.save(str(tmp))
