"""Relabelling an off-policy agent's replay buffer (rlrm.rl.relabel): a real SAC fills a wrapped-around buffer inside
VecLearnedReward with model A; after set_reward(model B) every stored reward equals B's prediction on the buffer's own
transitions (Box and Dict observations, terminated and truncated ends, under VecNormalize), and buffers it cannot
relabel faithfully are refused."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

import rlrm.tasks  # noqa: F401  (registers rlrm/PointGoal-v0)
from rlrm.data.dataset import TransitionDataset
from rlrm.data.rollout import collect
from rlrm.errors import ConfigError, RewardError
from rlrm.model.ensemble import RewardEnsemble
from rlrm.model.network import RewardModel
from rlrm.rl.relabel import TrueRewardReplayBuffer, relabel_buffer
from rlrm.tasks import Catalog, Task
from rlrm.train.loop import TrainConfig, train_reward_model
from rlrm.wrappers import RewardShaping, VecLearnedReward

N_ENVS = 2
STEPS = 250  # env steps (125 vector steps): more than the buffer holds (60), so it wraps around


class _FallTermination(gym.Wrapper):
    """Pendulum that also terminates when it spins fast (random actions do within a few dozen steps)."""

    def step(self, action: Any) -> tuple:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated or abs(float(obs[2])) > 3.0, truncated, info


# Registered so that rlrm.data.rollout.collect can make it: the models learn from data with terminations, so the
# terminated flag changes their rewards (on Pendulum alone the done feature is constant, and folded away).
gym.register("rlrm_test/FallingPendulum-v1", entry_point=lambda **kw: _FallTermination(gym.make("Pendulum-v1", **kw)),
             max_episode_steps=40)
FALLING = Task("FallingPendulum", "rlrm_test/FallingPendulum-v1")


def _models(ds: TransitionDataset) -> tuple[RewardModel, RewardModel]:
    a, b = (train_reward_model([ds], TrainConfig(epochs=2, min_epoch_steps=5, patience=0, seed=s),
                               progress=False).model.eval() for s in (0, 1))
    return a, b


@pytest.fixture(scope="module")
def falling_ds() -> TransitionDataset:
    ds = collect(FALLING, 1000, n_envs=4, seed=0, progress=False)
    assert ds.terminated.any()
    return ds


@pytest.fixture(scope="module")
def pendulum_models(falling_ds: TransitionDataset) -> tuple[RewardModel, RewardModel]:
    return _models(falling_ds)


@pytest.fixture(scope="module")
def point_goal_ds(catalog: Catalog) -> TransitionDataset:
    return collect(catalog.task("PointGoal-v0/goal045"), 600, n_envs=4, seed=0, progress=False)


def _pendulum_env() -> gym.Env:
    return Monitor(FALLING.make_env())


def _fill(venv: VecEnv, policy: str = "MlpPolicy", **kwargs: Any) -> SAC:
    """A tiny SAC whose buffer (60 steps x 2 envs) wraps around during STEPS env steps, past learning_starts."""
    agent = SAC(policy, venv, buffer_size=120, learning_starts=60, batch_size=32, policy_kwargs={"net_arch": [16]},
                seed=0, device="cpu", **kwargs)
    agent.learn(STEPS)
    buf = agent.replay_buffer
    assert buf.full and buf.pos > 0, "the test needs a buffer that has wrapped around"
    return agent


def _expected(model: RewardModel, task: str, buf: ReplayBuffer) -> np.ndarray:
    """The model's rewards for every stored transition, read from the buffer by the test's own means."""
    def flat(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: v.reshape(-1, v.shape[-1]) for k, v in x.items()}
        return x.reshape(-1, x.shape[-1])

    low, high = buf.action_space.low, buf.action_space.high
    action = low + 0.5 * (flat(buf.actions) + 1.0) * (high - low)  # SB3 stores Box actions rescaled to [-1, 1]
    terminated = (buf.dones.reshape(-1) == 1) & (buf.timeouts.reshape(-1) == 0)
    return model.predict(task, flat(buf.observations), action, flat(buf.next_observations), terminated)


def _check_relabel(venv: VecLearnedReward, buf: ReplayBuffer, a: RewardModel, b: RewardModel, task: str) -> None:
    np.testing.assert_allclose(buf.rewards.reshape(-1), _expected(a, task, buf), atol=1e-5)  # what A paid
    venv.set_reward(b, version=2)
    report = relabel_buffer(buf, venv.reward_fn, venv.transform, batch_size=37, version=venv.reward_version)
    want = _expected(b, task, buf)
    assert not np.allclose(want, _expected(a, task, buf), atol=1e-3), "models A and B must differ"
    np.testing.assert_allclose(buf.rewards.reshape(-1), want, atol=1e-5)
    assert report.rows == buf.rewards.size == 120
    assert report.version == buf.reward_version == 2 and report.previous_version is None
    assert report.seconds > 0


def test_relabel_sac_pendulum_terminal_and_wrapped(falling_ds: TransitionDataset,
                                                   pendulum_models: tuple[RewardModel, RewardModel]) -> None:
    a, b = pendulum_models
    task = falling_ds.task.name
    venv = VecLearnedReward(DummyVecEnv([_pendulum_env] * N_ENVS), a, task=task)
    buf = _fill(venv).replay_buffer
    ended = buf.dones.astype(bool)
    truncated, terminated = ended & buf.timeouts.astype(bool), ended & ~buf.timeouts.astype(bool)
    assert terminated.sum() >= 2 and truncated.sum() >= 1, (terminated.sum(), truncated.sum())
    # the terminal observation is stored as next_obs, not the reset observation
    assert np.all(np.abs(buf.next_observations[terminated][:, 2]) > 3.0)
    _check_relabel(venv, buf, a, b, task)

    # a second round with shaping (scale and clip, as the wrapper pays) records the previous version
    venv.transform = RewardShaping(scale=3.0, clip=0.5)
    report = relabel_buffer(buf, b.reward_fn(task), venv.transform, version=3)
    np.testing.assert_allclose(buf.rewards.reshape(-1), np.clip(3.0 * _expected(b, task, buf), -0.5, 0.5), atol=1e-5)
    assert report.previous_version == 2 and buf.reward_version == 3


def test_relabel_dict_observations(point_goal_ds: TransitionDataset) -> None:
    a, b = _models(point_goal_ds)
    task = point_goal_ds.task
    venv = VecLearnedReward(DummyVecEnv([lambda: Monitor(task.make_env())] * N_ENVS), a, task=task.name)
    buf = _fill(venv, "MultiInputPolicy").replay_buffer
    assert isinstance(buf.observations, dict)
    _check_relabel(venv, buf, a, b, task.name)


def test_relabel_under_vecnormalize(falling_ds: TransitionDataset,
                                    pendulum_models: tuple[RewardModel, RewardModel]) -> None:
    a, b = pendulum_models
    task = falling_ds.task.name
    inner = VecLearnedReward(DummyVecEnv([_pendulum_env] * N_ENVS), a, task=task)
    venv = VecNormalize(inner, norm_obs=True, norm_reward=True)
    buf = _fill(venv).replay_buffer
    # the buffer holds the original observations (normalizing them changes them), and the unnormalized reward
    assert not np.allclose(venv.normalize_obs(buf.observations[:, 0]), buf.observations[:, 0], atol=0.1)
    _check_relabel(inner, buf, a, b, task)


def test_relabel_alpha_with_true_rewards(falling_ds: TransitionDataset,
                                         pendulum_models: tuple[RewardModel, RewardModel]) -> None:
    """alpha < 1 pays a mix with the env's reward: TrueRewardReplayBuffer keeps it, and relabelling mixes it in."""
    a, b = pendulum_models
    task = falling_ds.task.name
    venv = VecLearnedReward(DummyVecEnv([_pendulum_env] * N_ENVS), a, task=task, shaping=RewardShaping(alpha=0.25))
    buf = _fill(venv, replay_buffer_class=TrueRewardReplayBuffer).replay_buffer
    # Pendulum's own reward, from the stored observation (cos, sin, speed) and the unscaled action
    obs, u = buf.observations.reshape(-1, 3), 2.0 * buf.actions.reshape(-1)
    true = -(np.arctan2(obs[:, 1], obs[:, 0]) ** 2 + 0.1 * obs[:, 2] ** 2 + 0.001 * u ** 2)
    np.testing.assert_allclose(buf.true_rewards.reshape(-1), true, atol=1e-4)
    np.testing.assert_allclose(buf.rewards.reshape(-1), 0.25 * _expected(a, task, buf) + 0.75 * true, atol=1e-4)
    venv.set_reward(b, version=1)
    relabel_buffer(buf, venv.reward_fn, venv.transform, version=1)
    np.testing.assert_allclose(buf.rewards.reshape(-1), 0.25 * _expected(b, task, buf) + 0.75 * true, atol=1e-4)


def _small_buffer(**kwargs: Any) -> ReplayBuffer:
    env = gym.make("Pendulum-v1")
    buf = ReplayBuffer(10, env.observation_space, env.action_space, device="cpu", **kwargs)
    for i in range(4):
        o = env.observation_space.sample()[None]
        buf.add(o, o, np.zeros((1, 1), np.float32), np.zeros(1, np.float32), np.array([i == 3]),
                [{"TimeLimit.truncated": False}])
    return buf


def test_refusals(falling_ds: TransitionDataset, pendulum_models: tuple[RewardModel, RewardModel]) -> None:
    fn = pendulum_models[0].reward_fn(falling_ds.task.name)
    with pytest.raises(ConfigError, match="optimize_memory_usage"):
        relabel_buffer(_small_buffer(optimize_memory_usage=True, handle_timeout_termination=False), fn)
    with pytest.raises(ConfigError, match="handle_timeout_termination"):
        relabel_buffer(_small_buffer(handle_timeout_termination=False), fn)
    buf = _small_buffer()
    with pytest.raises(ConfigError, match=r"alpha=0.5 .*\(buffer.true_rewards: none\)"):
        relabel_buffer(buf, fn, RewardShaping(alpha=0.5))
    with pytest.raises(ConfigError, match="uncertainty"):
        relabel_buffer(buf, fn, RewardShaping(uncertainty=-1.0))
    with pytest.raises(ConfigError, match="batch_size"):
        relabel_buffer(buf, fn, batch_size=0)
    with pytest.raises(ConfigError, match="ReplayBuffer"):
        relabel_buffer(object(), fn)  # type: ignore[arg-type]
    assert np.all(buf.rewards == 0) and not hasattr(buf, "reward_version")  # refused: untouched

    # with the env's rewards kept beside the buffer, alpha < 1 mixes them in as the wrapper does
    buf.true_rewards = np.arange(buf.rewards.size, dtype=np.float32).reshape(buf.rewards.shape)
    relabel_buffer(buf, fn, RewardShaping(alpha=0.25), version=1)
    learned = fn(buf.observations[:4, 0], buf.actions[:4, 0] * 2.0, buf.next_observations[:4, 0],
                 buf.dones[:4, 0] > 0)
    np.testing.assert_allclose(buf.rewards[:4, 0], 0.25 * learned + 0.75 * np.arange(4), atol=1e-5)
    assert np.all(buf.rewards[4:] == 0)  # rows past pos are not transitions

    buf.true_rewards[1, 0] = np.nan  # a transition stored without info["true_reward"]
    with pytest.raises(ConfigError, match="no true reward"):
        relabel_buffer(buf, fn, RewardShaping(alpha=0.25))

    # a non-finite reward leaves the buffer as it was
    buf.observations[2, 0, 0] = np.nan
    with pytest.raises(RewardError, match="not finite"):
        relabel_buffer(buf, fn, version=2)
    assert buf.reward_version == 1
    np.testing.assert_allclose(buf.rewards[:4, 0], 0.25 * learned + 0.75 * np.arange(4), atol=1e-5)


def test_relabel_uncertainty_weight(falling_ds: TransitionDataset,
                                    pendulum_models: tuple[RewardModel, RewardModel]) -> None:
    """An ensemble's std enters with the (decayed) uncertainty weight after ``steps`` env steps, for every row."""
    task = falling_ds.task.name
    ens = RewardEnsemble(list(pendulum_models))
    buf = _small_buffer()
    shaping = RewardShaping(uncertainty=-0.5, uncertainty_decay=0.01)
    relabel_buffer(buf, ens.reward_fn(task), shaping, steps=100)
    mean, std = ens.predict(task, buf.observations[:4, 0], np.zeros((4, 1), np.float32), buf.next_observations[:4, 0],
                            buf.dones[:4, 0] > 0, return_std=True)
    assert np.all(std > 1e-3)
    np.testing.assert_allclose(buf.rewards[:4, 0], mean - 0.5 * 0.99 ** 100 * std, atol=1e-5)
