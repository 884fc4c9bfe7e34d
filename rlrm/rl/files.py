"""Agent files: saving atomically, telling the algorithm of a saved agent, loading it, and behaviour policies
(for ``collect``) made from saved agents."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from rlrm import atomic
from rlrm.errors import ConfigError
from rlrm.rl.hyperparams import ALGOS, algo_class


def detect_algo(path: str | os.PathLike) -> str:
    """The algorithm of a saved agent: from ``config.json`` beside it (rlrm run) or the zip's policy class."""
    path = Path(path)
    for cfg in (path.parent / "config.json", path.parent.parent / "config.json"):
        if cfg.exists():
            try:
                return str(json.loads(cfg.read_text())["agent"]["algo"])
            except (KeyError, TypeError, json.JSONDecodeError):
                pass
    try:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read("data"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: agent file not found") from None
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError):
        raise ConfigError(f"{path}: not a Stable-Baselines3 agent file (.zip)") from None
    module = str((data.get("policy_class") or {}).get("__module__", ""))
    if module.endswith("common.policies"):  # PPO and A2C share ActorCriticPolicy: tell them by their data
        return "ppo" if "clip_range" in data else "a2c"
    for name in ALGOS:
        if f".{name}." in module or module.endswith(f".{name}"):
            return name
    raise ConfigError(f"{path}: cannot tell the algorithm of this agent (policy module {module!r})")


def load_agent(path: str | os.PathLike, env: VecEnv | None = None, algo: str | None = None,
               env_name: str | None = None) -> BaseAlgorithm:
    """Load a saved SB3 agent; with ``env``, check that its spaces match (a clear error if not).

    :param env_name: what ``env`` is called in that error (a task name).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: agent file not found")
    cls = algo_class(algo or detect_algo(path))
    try:
        return cls.load(str(path), env=env, device="cpu")
    except ValueError as err:
        if "spaces do not match" in str(err).lower() or "space" in str(err).lower():
            than = f" than {env_name}" if env_name else ""
            raise ConfigError(f"{path}: the agent was trained on another env{than}: "
                              f"{str(err).splitlines()[0]}") from None
        raise ConfigError(f"{path}: cannot load agent: {str(err).splitlines()[0]}") from None
    except (zipfile.BadZipFile, KeyError, EOFError) as err:
        raise ConfigError(f"{path}: not a readable agent file ({type(err).__name__})") from None


def save_agent(agent: BaseAlgorithm, path: str | os.PathLike) -> None:
    """``agent.save`` into a temp file renamed into place (SB3 writes zips in place; a kill leaves the old one)."""
    with atomic.temp_path(path) as tmp:
        agent.save(str(tmp))
