"""Relabel an off-policy agent's replay buffer when the learned reward changes (issue #11, the online loop).

SB3's SAC/TD3/DDPG keep transitions in a :class:`ReplayBuffer` (or :class:`DictReplayBuffer`) whose ``rewards`` are
what the agent was paid by the reward model of the time. After a retrained model is swapped in
(:meth:`rlrm.wrappers.VecLearnedReward.set_reward`), :func:`relabel_buffer` recomputes every stored reward with the
new one, so the critic does not learn from a mix of old and new rewards.

What the buffer holds, as SB3's off-policy ``_store_transition`` writes it, and how it is read back:

- observations are the ORIGINAL ones (unnormalized when a VecNormalize sits outside the reward wrapper): what the
  reward model takes, so they go to it as they are;
- Box actions are rescaled to ``[-1, 1]``; the env, and so the reward, saw ``low + (a + 1) / 2 * (high - low)``,
  which is undone here with SB3's own formula (``scaled_actions=False`` for a buffer filled with raw actions);
- for a transition that ended an episode, ``next_observations`` holds the true terminal observation, and the
  reward's ``done`` is the terminated flag ``dones & ~timeouts``, as :class:`~rlrm.wrappers.VecLearnedReward`
  computes it.

Shaping with ``alpha < 1`` mixes in the env's true reward, which SB3 buffers do not store: such a buffer is relabelled
only when it carries a ``true_rewards`` array shaped like ``rewards``, as :class:`TrueRewardReplayBuffer` and
:class:`TrueRewardDictReplayBuffer` keep (from ``info["true_reward"]``, which the reward wrappers set; pass one as
SAC's ``replay_buffer_class``, or give a new agent one with :func:`keep_true_rewards`, as a feedback run with
``reward_alpha < 1`` does); otherwise :func:`relabel_buffer` refuses rather than guess it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from threadpoolctl import threadpool_limits

from rlrm import spaces as sp
from rlrm.errors import ConfigError, RewardError
from rlrm.reward_fn import RewardFn, std_method
from rlrm.wrappers import RewardShaping

#: the attribute :func:`relabel_buffer` sets on a buffer: the version of the reward its rewards come from
VERSION_ATTR = "reward_version"
#: BLAS threads while relabelling (see relabel_buffer)
BLAS_THREADS = 1


@dataclass(frozen=True)
class RelabelReport:
    """What one :func:`relabel_buffer` call did.

    :param rows: transitions relabelled (stored steps times the buffer's ``n_envs``).
    :param seconds: wall-clock time of the call.
    :param version: the reward version the buffer is now labelled with.
    :param previous_version: the version it held before (``None``: never relabelled, or unknown).
    """

    rows: int
    seconds: float
    version: int | None
    previous_version: int | None


class _KeepsTrueRewards:
    """Keeps ``info["true_reward"]`` of every stored transition in ``true_rewards`` (NaN where an info lacks it)."""

    rewards: np.ndarray
    pos: int
    true_rewards: np.ndarray

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.true_rewards = np.full_like(self.rewards, np.nan)

    def add(self, obs: Any, next_obs: Any, action: np.ndarray, reward: np.ndarray, done: np.ndarray,
            infos: list[dict[str, Any]]) -> None:
        self.true_rewards[self.pos] = [info.get("true_reward", np.nan) for info in infos]
        super().add(obs, next_obs, action, reward, done, infos)  # type: ignore[misc]  # moves pos on


class TrueRewardReplayBuffer(_KeepsTrueRewards, ReplayBuffer):
    """A :class:`ReplayBuffer` that also keeps the env's true reward, so that shaping with ``alpha < 1`` can be
    relabelled."""


class TrueRewardDictReplayBuffer(_KeepsTrueRewards, DictReplayBuffer):
    """:class:`TrueRewardReplayBuffer` for Dict observations."""


def keep_true_rewards(agent: OffPolicyAlgorithm) -> None:
    """Give an off-policy agent an empty replay buffer of the same size that also keeps the env's true rewards
    (:class:`TrueRewardReplayBuffer`, or its Dict variant), before it stores a transition.

    The agent's ``replay_buffer_class`` is left as it was: its saved file holds the class its settings name, and a
    loaded agent gets the buffer again from this function (``RunFolder.load_checkpoint(true_rewards=True)``).
    """
    old = agent.replay_buffer
    if isinstance(old, _KeepsTrueRewards):
        return
    if old is None or type(old) not in (ReplayBuffer, DictReplayBuffer) or old.pos or old.full:
        found = "none" if old is None else f"{type(old).__name__} holding {old.pos} steps"
        raise ConfigError(f"replay buffer: expected an empty SB3 ReplayBuffer or DictReplayBuffer to keep true "
                          f"rewards beside, got {found}")
    cls = TrueRewardDictReplayBuffer if isinstance(old, DictReplayBuffer) else TrueRewardReplayBuffer
    agent.replay_buffer = cls(old.buffer_size, old.observation_space, old.action_space, device=old.device,
                              n_envs=old.n_envs, optimize_memory_usage=old.optimize_memory_usage,
                              handle_timeout_termination=old.handle_timeout_termination)


def relabel_buffer(buffer: ReplayBuffer, reward_fn: RewardFn, shaping: RewardShaping | None = None,
                   batch_size: int = 65536, version: int | None = None, *, steps: int = 0,
                   scaled_actions: bool = True) -> RelabelReport:
    """Recompute ``buffer.rewards`` for every stored transition with ``reward_fn`` (and ``shaping``), in place.

    All stored rows are relabelled (``[0, pos)``, or the whole buffer once it has wrapped around), in batched calls
    of ``batch_size`` rows over the flattened ``(steps x n_envs)`` layout. The buffer is left unchanged if any new
    reward is not finite. ``version`` is recorded on the buffer (``buffer.reward_version``) and in the report.

    :param buffer: an SB3 ``ReplayBuffer`` or ``DictReplayBuffer`` made with ``optimize_memory_usage=False`` and
        ``handle_timeout_termination=True`` (the defaults).
    :param reward_fn: the new reward, e.g. ``model.reward_fn(task)`` or the wrapper's ``reward_fn`` after
        ``set_reward``.
    :param shaping: what the agent is paid (the wrapper's ``transform``); ``alpha < 1`` needs ``buffer.true_rewards``.
    :param batch_size: rows per reward call.
    :param version: the new reward's version (e.g. the feedback round).
    :param steps: env steps so far, for a decaying uncertainty weight: every row gets the weight after ``steps``
        steps (the buffer does not record when a row was collected).
    :param scaled_actions: Box actions are stored rescaled to ``[-1, 1]``, as SB3's off-policy algorithms do.
    """
    start = time.perf_counter()
    shaping = shaping or RewardShaping()
    _check_buffer(buffer, reward_fn, batch_size)
    with_std = std_method(reward_fn)
    if shaping.uncertainty and with_std is None:
        raise ConfigError(f"shaping: uncertainty is {shaping.uncertainty} but the reward function gives no std "
                          "(a single model); expected a reward ensemble")
    rows = (buffer.buffer_size if buffer.full else buffer.pos) * buffer.n_envs
    true = _true_rewards(buffer, shaping, rows)
    obs, next_obs = _flat_obs(buffer, buffer.observations), _flat_obs(buffer, buffer.next_observations)
    actions = buffer.actions.reshape(-1, *buffer.action_space.shape)
    dones, timeouts = buffer.dones.reshape(-1), buffer.timeouts.reshape(-1)
    unscale = _unscaler(buffer.action_space) if scaled_actions else None
    new = np.empty(rows, np.float32)
    # One BLAS thread: on a small CPU busy with envs and the agent, a second one made 1M rows 2.4 s instead of
    # 1.0-1.4 s (benchmarks/RESULTS.md, "Relabelling a replay buffer"), as one torch thread does for the CLIs.
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        for a in range(0, rows, batch_size):
            b = min(a + batch_size, rows)
            args = (_rows(obs, a, b), actions[a:b] if unscale is None else unscale(actions[a:b]),
                    _rows(next_obs, a, b), (dones[a:b] > 0.5) & ~(timeouts[a:b] > 0.5))
            if with_std is not None and shaping.uncertainty:
                learned, std = with_std(*args)
            else:
                learned, std = reward_fn(*args), None
            # alpha == 1 never reads ``true``: the learned rewards stand in for it
            new[a:b] = shaping(learned, learned if true is None else true[a:b], std, steps)
    if not math.isfinite(float(new.sum(dtype=np.float64))):
        bad = new[~np.isfinite(new)]
        raise RewardError(f"relabel_buffer: the new reward is not finite ({bad[0] if len(bad) else 'overflow'}); "
                          "the buffer is left as it was; check the model file")
    buffer.rewards.reshape(-1)[:rows] = new
    previous = getattr(buffer, VERSION_ATTR, None)
    setattr(buffer, VERSION_ATTR, version)
    return RelabelReport(rows, time.perf_counter() - start, version, previous)


def _check_buffer(buffer: Any, reward_fn: RewardFn, batch_size: int) -> None:
    """One-line errors for buffers (and arguments) this module cannot relabel faithfully."""
    if not isinstance(buffer, (ReplayBuffer, DictReplayBuffer)):
        raise ConfigError(f"buffer: expected an SB3 ReplayBuffer or DictReplayBuffer, got {type(buffer).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ConfigError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if getattr(buffer, "optimize_memory_usage", False):
        raise ConfigError("buffer: optimize_memory_usage=True keeps no next observations (a terminal one is "
                          "overwritten by the reset); expected a buffer made with optimize_memory_usage=False")
    if not buffer.handle_timeout_termination:
        raise ConfigError("buffer: handle_timeout_termination=False records no timeouts, so terminated cannot be "
                          "told from truncated; expected handle_timeout_termination=True (the SB3 default)")
    sp.check_compatible(reward_fn.observation_space, buffer.observation_space, "relabel_buffer: observation space")
    sp.check_compatible(reward_fn.action_space, buffer.action_space, "relabel_buffer: action space")


def _true_rewards(buffer: Any, shaping: RewardShaping, rows: int) -> np.ndarray | None:
    """The env's rewards of the ``rows`` stored transitions when the shaping mixes them in (``alpha < 1``)."""
    if shaping.alpha == 1.0:
        return None
    true = getattr(buffer, "true_rewards", None)
    if not isinstance(true, np.ndarray) or true.shape != buffer.rewards.shape:
        found = "none" if true is None else f"{type(true).__name__} {getattr(true, 'shape', '')}"
        raise ConfigError(f"shaping: alpha={shaping.alpha} mixes in the true reward, which the buffer does not "
                          f"store (buffer.true_rewards: {found}); expected an array shaped {buffer.rewards.shape}, "
                          "or alpha=1")
    true = true.reshape(-1)[:rows]
    if not np.all(np.isfinite(true)):
        raise ConfigError("buffer.true_rewards: some stored transitions have no true reward (an info without "
                          "'true_reward'); expected the buffer to be filled through VecLearnedReward, or alpha=1")
    return true


def _flat_obs(buffer: Any, stored: Any) -> Any:
    """Observations as ``(rows, *shape)`` views (a dict of them for a DictReplayBuffer)."""
    space = buffer.observation_space
    if isinstance(stored, dict):
        return {k: v.reshape(-1, *space[k].shape) for k, v in stored.items()}
    return stored.reshape(-1, *space.shape)


def _rows(x: Any, a: int, b: int) -> Any:
    return {k: v[a:b] for k, v in x.items()} if isinstance(x, dict) else x[a:b]


def _unscaler(space: spaces.Space) -> Any:
    """SB3's ``policy.unscale_action`` for a Box action space (``None`` for other spaces, stored as they are)."""
    if not isinstance(space, spaces.Box):
        return None
    low, high = space.low, space.high
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ConfigError(f"buffer: action space {space} is unbounded, so SB3 cannot have rescaled its actions; "
                          "expected bounded Box actions, or scaled_actions=False")
    return lambda a: low + (0.5 * (a + 1.0) * (high - low))
