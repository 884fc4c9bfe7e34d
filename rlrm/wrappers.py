"""Reward-replacing wrappers. They depend only on the :class:`~rlrm.reward_fn.RewardFn` protocol.

- :class:`LearnedReward`: a ``gymnasium.Wrapper`` for any env.
- :class:`VecLearnedReward`: an SB3 ``VecEnvWrapper`` with one batched reward call per vector step.

Both return the learned reward and keep the env's own reward in ``info["true_reward"]``, the learned one in
``info["learned_reward"]`` (LearnedReward) and its std across ensemble members in ``info["reward_std"]`` (0.0 for
a single model or any RewardFn without ``with_std``). At the end of
an episode ``info["learned_episode"] = {"r": learned return, "l": length}`` (Monitor's
``info["episode"]`` keeps the true return when Monitor sits inside the wrapper).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from operator import add as _add
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecEnvWrapper, VecNormalize
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from rlrm import spaces as sp
from rlrm.errors import ConfigError, RewardError
from rlrm.reward_fn import RewardFn, RewardSource, as_reward_fn, std_method


@dataclass(frozen=True)
class RewardShaping:
    """What an agent is paid: ``alpha * clip(scale * (mean + u_t * std)) + (1 - alpha) * true`` (the default: the
    learned reward as it is), where mean and std are the learned reward and its std across ensemble members, and
    ``u_t = uncertainty * (1 - uncertainty_decay) ** t`` after ``t`` env steps of the wrapper (summed over the
    envs of a VecEnv). One frozen value that travels from the CLI to the wrapper and into a run's config.

    The uncertainty weight lives here rather than on the wrappers: it changes what the agent is paid, as scale,
    clip and alpha do, so it must reach a run's config (and a rebuilt env) through the same one value.

    :param scale: multiply the learned reward.
    :param clip: clip the scaled learned reward to ``[-clip, clip]`` (``None``: no clipping).
    :param alpha: mix ``alpha * learned + (1 - alpha) * true`` (1: learned only).
    :param uncertainty: weight of the ensemble's std: negative pays less where members disagree (conservative),
        positive pays more (an exploration bonus, as in RUNE). Needs a reward function with ``with_std``.
    :param uncertainty_decay: the weight shrinks by this fraction every env step (exponential decay, as RUNE's
        schedule; 0: constant). ``1e-5`` halves it about every 69,000 steps.
    """

    scale: float = 1.0
    clip: float | None = None
    alpha: float = 1.0
    uncertainty: float = 0.0
    uncertainty_decay: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"reward shaping: alpha must be in [0, 1], got {self.alpha}")
        if self.clip is not None and not self.clip > 0:
            raise ConfigError(f"reward shaping: clip must be positive, got {self.clip}")
        if not math.isfinite(self.scale):
            raise ConfigError(f"reward shaping: scale must be finite, got {self.scale}")
        if not math.isfinite(self.uncertainty):
            raise ConfigError(f"reward shaping: uncertainty must be finite, got {self.uncertainty}")
        if not 0.0 <= self.uncertainty_decay < 1.0:
            raise ConfigError(f"reward shaping: uncertainty_decay must be in [0, 1), got {self.uncertainty_decay}")

    @property
    def identity(self) -> bool:
        """True when the agent is paid the learned reward as it is."""
        return self.scale == 1.0 and self.clip is None and self.alpha == 1.0 and self.uncertainty == 0.0

    def for_evaluation(self) -> RewardShaping:
        """The shaping an evaluation reports: no uncertainty term (an exploration bonus, or a penalty, is part of
        training, not of the learned return an agent earned)."""
        return replace(self, uncertainty=0.0, uncertainty_decay=0.0)

    def uncertainty_weight(self, steps: int) -> float:
        """The std's weight ``u_t`` after ``steps`` env steps."""
        if not self.uncertainty_decay:
            return self.uncertainty
        return self.uncertainty * (1.0 - self.uncertainty_decay) ** steps

    def __call__(self, learned: np.ndarray, true: np.ndarray, std: np.ndarray | None = None,
                 steps: int = 0) -> np.ndarray:
        """What the agent is paid for a batch.

        :param learned: the learned reward (an ensemble's mean).
        :param true: the env's reward.
        :param std: the learned reward's std across members (``None``: certain).
        :param steps: env steps so far (for ``uncertainty_decay``).
        """
        if self.identity:
            return learned
        if std is not None and self.uncertainty:
            learned = learned + np.float32(self.uncertainty_weight(steps)) * std
        r = learned * self.scale if self.scale != 1.0 else learned
        if self.clip is not None:
            r = np.clip(r, -self.clip, self.clip)
        if self.alpha != 1.0:
            r = self.alpha * r + (1.0 - self.alpha) * np.asarray(true, dtype=np.float32)
        return r.astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (stored in a run's config)."""
        return {"scale": self.scale, "clip": self.clip, "alpha": self.alpha, "uncertainty": self.uncertainty,
                "uncertainty_decay": self.uncertainty_decay}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> RewardShaping:
        """Inverse of :meth:`to_dict` (``None`` or ``{}``: the identity; a missing field, as in configs written
        before the uncertainty weight, takes its default)."""
        d = d or {}
        try:
            return cls(float(d.get("scale", 1.0)), None if d.get("clip") is None else float(d["clip"]),
                       float(d.get("alpha", 1.0)), float(d.get("uncertainty", 0.0)),
                       float(d.get("uncertainty_decay", 0.0)))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"reward shaping {d!r}: {err}") from None


def _std_method(fn: RewardFn, shaping: RewardShaping, task: str | None) -> Any:
    """``fn.with_std`` (or ``None``); an uncertainty weight without it is a mistake, not a silent no-op."""
    method = std_method(fn)
    if method is None and shaping.uncertainty:
        raise ConfigError(f"reward shaping: uncertainty is {shaping.uncertainty} but the reward function"
                          f"{f' for task {task!r}' if task else ''} gives no std (a single model); expected a "
                          "reward ensemble")
    return method


def _check_spaces(fn: RewardFn, obs_space: gym.Space, action_space: gym.Space, task: str | None) -> None:
    label = f"reward for task {task!r}" if task else "reward function"
    sp.check_compatible(fn.observation_space, obs_space, f"{label}: observation space")
    sp.check_compatible(fn.action_space, action_space, f"{label}: action space")


def _check_no_normalization_below(venv: VecEnv) -> None:
    """Refuse a VecNormalize underneath: the model would get normalized observations (not what it was trained on)
    and ``info["true_reward"]`` a normalized reward."""
    inner: Any = venv
    while inner is not None:
        if isinstance(inner, VecNormalize) and (inner.norm_obs or inner.norm_reward):
            what = "observations" if inner.norm_obs else "rewards"
            raise ConfigError(f"venv: VecLearnedReward over a VecNormalize that normalizes {what}: the learned "
                              f"reward must see raw observations and the true reward; expected the order "
                              f"env -> Monitor -> VecLearnedReward -> VecNormalize (VecNormalize outside)")
        inner = getattr(inner, "venv", None)


def _not_finite(values: np.ndarray, task: str | None) -> RewardError:
    bad = values[~np.isfinite(values)]
    shown = bad[0] if len(bad) else "overflow"
    return RewardError(f"the learned reward{f' for task {task!r}' if task else ''} is not finite ({shown}); "
                       "check the model file and the observations it gets")


class LearnedReward(gym.Wrapper):
    """Replace an env's reward by a learned one.

    :param env: any Gymnasium env whose spaces the reward function accepts.
    :param reward: a :class:`RewardFn`, or a reward model (anything with ``reward_fn(task)``).
    :param task: the model head to use (needed with a model).
    :param shaping: scale/clip/mix of the learned reward and the weight of its uncertainty (default: as it is).
    """

    def __init__(self, env: gym.Env, reward: RewardFn | RewardSource, task: str | None = None,
                 shaping: RewardShaping | None = None) -> None:
        super().__init__(env)
        self.reward_fn: RewardFn = as_reward_fn(reward, task)
        self.task = task
        _check_spaces(self.reward_fn, env.observation_space, env.action_space, task)
        self.transform = shaping or RewardShaping()
        self._with_std = _std_method(self.reward_fn, self.transform, task)
        self._steps = 0  # env steps since the wrapper was made (for the uncertainty weight's decay)
        self._batch_obs = sp.one_batcher(env.observation_space)
        self._batch_action = sp.one_batcher(env.action_space)
        self._obs: Any = None  # the last observation, as a batch of one (a copy)
        self._return = 0.0
        self._length = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._obs, self._return, self._length = self._batch_obs(obs), 0.0, 0
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        next_obs = self._batch_obs(obs)  # also the next step's obs: one copy per step
        args = (self._obs, self._batch_action(action), next_obs, _TERMINATED[bool(terminated)])
        learned, std = self._with_std(*args) if self._with_std is not None else (self.reward_fn(*args), None)
        value = float(learned[0])
        if not math.isfinite(value):
            raise _not_finite(learned, self.task)
        true_reward = float(true_reward)
        reward = value if self.transform.identity else float(
            self.transform(learned, np.array([true_reward], np.float32), std, self._steps)[0])
        self._steps += 1
        info["true_reward"] = true_reward
        info["learned_reward"] = value
        info["reward_std"] = 0.0 if std is None else float(std[0])
        self._return += reward
        self._length += 1
        if terminated or truncated:
            info["learned_episode"] = {"r": self._return, "l": self._length}
        self._obs = next_obs
        return obs, reward, terminated, truncated, info


# the terminated flag as a batch of one, shared and read-only
_TERMINATED = {flag: np.array([flag]) for flag in (False, True)}
for _a in _TERMINATED.values():
    _a.flags.writeable = False


class VecLearnedReward(VecEnvWrapper):
    """Replace a VecEnv's rewards by a learned one, one batched reward call per step.

    For a transition that ends an episode, ``next_obs`` is ``info["terminal_observation"]`` (the
    VecEnv has already reset that env). Parameters as in :class:`LearnedReward`.
    """

    def __init__(self, venv: VecEnv, reward: RewardFn | RewardSource, task: str | None = None,
                 shaping: RewardShaping | None = None) -> None:
        _check_no_normalization_below(venv)
        super().__init__(venv)
        self.reward_fn: RewardFn = as_reward_fn(reward, task)
        self.task = task
        _check_spaces(self.reward_fn, venv.observation_space, venv.action_space, task)
        self.transform = shaping or RewardShaping()
        self._with_std = _std_method(self.reward_fn, self.transform, task)
        self._certain = [0.0] * self.num_envs  # info["reward_std"] of a reward function without a std
        self._composite = isinstance(venv.observation_space, (gym.spaces.Dict, gym.spaces.Tuple))
        # DummyVecEnv and SubprocVecEnv return fresh observation arrays every step; another VecEnv may update one
        # buffer in place, so over those the wrapper keeps its own copy of the previous observation.
        self._copy_obs = type(venv) not in (DummyVecEnv, SubprocVecEnv)
        self._obs: Any = None
        self._actions: Any = None
        # Learned returns as Python floats (float64 sums; on a few envs a list is cheaper than an ndarray add)
        self._returns: list[float] = [0.0] * self.num_envs
        self._starts: list[int] = [0] * self.num_envs  # step count at each env's episode start
        self._t = 0
        self.reward_version: int | None = None  # set by set_reward

    def set_reward(self, reward: RewardFn | RewardSource, version: int | None = None) -> None:
        """Swap in a new learned reward (a retrained model) without rebuilding the envs; it pays from the next step
        on. For an on-policy agent call it between rollouts (e.g. in a callback's ``_on_rollout_end``), never
        inside one. ``version`` (e.g. the feedback round) is kept in :attr:`reward_version`."""
        fn = as_reward_fn(reward, self.task)
        _check_spaces(fn, self.venv.observation_space, self.venv.action_space, self.task)
        self._with_std = _std_method(fn, self.transform, self.task)
        self.reward_fn = fn
        self.reward_version = version

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self._obs = _copy(obs) if self._copy_obs else obs
        self._returns = [0.0] * self.num_envs
        self._starts = [self._t] * self.num_envs
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        # The hot path of every vector step: keep the number of numpy calls small (benchmarks/RESULTS.md).
        obs, true_rewards, dones, infos = self.venv.step_wait()
        t = self._t = self._t + 1
        done_list = dones.tolist()
        ended = [i for i, d in enumerate(done_list) if d] if True in done_list else None
        next_obs, terminated = obs, dones
        if ended:
            next_obs = self._with_terminal_obs(obs, infos, ended)
            truncated = [i for i in ended if infos[i].get("TimeLimit.truncated", False)]
            if truncated:
                terminated = dones.copy()
                terminated[truncated] = False
        if self._with_std is None:
            learned, std = self.reward_fn(self._obs, self._actions, next_obs, terminated), None
            stds = self._certain
        else:
            learned, std = self._with_std(self._obs, self._actions, next_obs, terminated)
            stds = std.tolist()
        paid = learned.tolist()
        # finite iff every value is: a Python (float64) sum propagates NaN/inf, and is cheaper than ndarray.sum
        if not math.isfinite(sum(paid)):
            raise _not_finite(learned, self.task)
        if self.transform.identity:
            rewards = learned
        else:
            rewards = self.transform(learned, true_rewards, std, (t - 1) * self.num_envs)
            paid = rewards.tolist()
        for info, true, s in zip(infos, true_rewards.tolist(), stds):
            info["true_reward"] = true
            info["reward_std"] = s
        returns = self._returns = list(map(_add, self._returns, paid))
        if ended:
            starts = self._starts
            for i in ended:
                infos[i]["learned_episode"] = {"r": returns[i], "l": t - starts[i]}
                returns[i] = 0.0
                starts[i] = t
        self._obs = _copy(obs) if self._copy_obs else obs
        return obs, rewards, dones, infos

    def _with_terminal_obs(self, obs: Any, infos: list[dict[str, Any]], done_idx: np.ndarray) -> Any:
        if self._composite:
            def put(dst: Any, src: Any, i: int) -> None:
                for k in (dst.keys() if isinstance(dst, dict) else range(len(dst))):
                    if isinstance(dst[k], (dict, tuple)):
                        put(dst[k], src[k], i)
                    else:
                        dst[k][i] = src[k]

            out = _copy(obs)
            for i in done_idx:
                put(out, infos[i]["terminal_observation"], i)
            return out
        out = np.array(obs, copy=True)
        for i in done_idx:
            out[i] = infos[i]["terminal_observation"]
        return out


def _copy(x: Any) -> Any:
    """A copy of a batch (arrays, or dicts/tuples of them)."""
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_copy(v) for v in x)
    return np.array(x, copy=True)
