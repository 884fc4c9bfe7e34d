"""The env stack an agent trains and is evaluated in, and VecNormalize statistics as JSON (no pickle).

Inside out::

    gym env → Monitor (records the TRUE return: SB3's rollout/ep_rew_mean) → DummyVecEnv
            → VecLearnedReward (the learned reward; learned return in info["learned_episode"])
            → VecNormalize (optional; normalizes what the agent sees, saved with the agent)
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from rlrm import atomic
from rlrm.errors import ConfigError
from rlrm.reward_fn import RewardFn
from rlrm.tasks import Task
from rlrm.wrappers import RewardShaping, VecLearnedReward


def make_vec_env(task: Task, n_envs: int, seed: int, reward: RewardFn | None = None,
                 normalize: dict[str, Any] | None = None, monitor_dir: str | os.PathLike | None = None,
                 training: bool = True, shaping: RewardShaping | None = None) -> VecEnv:
    """The env stack of the module docstring.

    :param reward: a learned reward (``None``: the env's own reward).
    :param normalize: VecNormalize keyword arguments (``None``: no VecNormalize).
    :param training: for VecNormalize: update statistics (False for evaluation; reward then unnormalized).
    :param shaping: scale/clip/mix of the learned reward (default: the learned reward as it is).
    """
    def factory(rank: int) -> Callable[[], Monitor]:
        def make() -> Monitor:
            env = task.make_env()
            filename = None
            if monitor_dir is not None:
                Path(monitor_dir).mkdir(parents=True, exist_ok=True)
                filename = str(Path(monitor_dir) / f"env{rank}")
            return Monitor(env, filename=filename)
        return make

    venv: VecEnv = DummyVecEnv([factory(i) for i in range(n_envs)])
    venv.seed(seed)
    if reward is not None:
        venv = VecLearnedReward(venv, reward, task.name, shaping=shaping)
    if normalize is not None:
        opts = dict(normalize)
        if not training:
            opts["norm_reward"] = False  # evaluation reports unnormalized returns
        venv = VecNormalize(venv, training=training, **opts)
    return venv


# --------------------------------------------------------------------------- VecNormalize statistics as JSON
def save_vecnormalize(venv: VecNormalize, path: str | os.PathLike) -> None:
    """Save VecNormalize statistics as JSON (no pickle)."""
    def rms(r: Any) -> Any:
        if isinstance(r, dict):
            return {k: rms(v) for k, v in r.items()}
        return {"mean": np.asarray(r.mean).tolist(), "var": np.asarray(r.var).tolist(), "count": float(r.count)}

    atomic.write_json(path, {"obs_rms": rms(venv.obs_rms) if venv.norm_obs else None, "ret_rms": rms(venv.ret_rms),
                             "clip_obs": venv.clip_obs, "clip_reward": venv.clip_reward, "gamma": venv.gamma,
                             "epsilon": venv.epsilon, "norm_obs": venv.norm_obs, "norm_reward": venv.norm_reward})


def load_vecnormalize(venv: VecNormalize, path: str | os.PathLike) -> None:
    """Load statistics written by :func:`save_vecnormalize` into ``venv``."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read VecNormalize statistics: {err}") from None

    def put(r: Any, v: Any) -> None:
        if isinstance(r, dict):
            for k in r:
                put(r[k], v[k])
        else:
            r.mean, r.var, r.count = np.asarray(v["mean"]), np.asarray(v["var"]), float(v["count"])

    if d.get("obs_rms") is not None and venv.norm_obs:
        put(venv.obs_rms, d["obs_rms"])
    put(venv.ret_rms, d["ret_rms"])


def sync_normalization(source: VecEnv, target: VecEnv) -> None:
    """Copy observation statistics from a training VecNormalize to an evaluation one (if both exist)."""
    if isinstance(source, VecNormalize) and isinstance(target, VecNormalize):
        target.obs_rms = _copy_rms(source.obs_rms)
        target.ret_rms = _copy_rms(source.ret_rms)


def _copy_rms(r: Any) -> Any:
    return copy.deepcopy(r)
