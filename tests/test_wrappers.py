"""LearnedReward (gymnasium.Wrapper) and VecLearnedReward (SB3 VecEnvWrapper): rewards, infos, errors."""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper, VecMonitor, VecNormalize

from rlrm.data.labels import label_with
from rlrm.data.rollout import collect
from rlrm.errors import ConfigError, RewardError, SpaceError
from rlrm.model import RewardModel
from rlrm.model.network import ModelConfig
from rlrm.tasks import Task
from rlrm.train.loop import TrainConfig, train_reward_model
from rlrm.wrappers import LearnedReward, RewardShaping, VecLearnedReward

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"

ENV_IDS = ["CartPole-v1", "Pendulum-v1"]


# --------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def model() -> RewardModel:
    """A small reward model with heads for CartPole-v1 (Discrete actions) and Pendulum-v1 (Box actions).

    CartPole's own reward is constant, which the model would predict exactly (see ``set_label_scale``): its
    labels here are ``1 - |pole angle|``, so that the wrappers' rewards vary and comparisons mean something."""
    datasets = [collect(Task(e, e), 400, n_envs=4, seed=i, progress=False) for i, e in enumerate(ENV_IDS)]
    datasets[0] = label_with(datasets[0], lambda d: 1.0 - np.abs(d.next_obs[:, 2]), "python:1-|angle|")
    return train_reward_model(datasets, TrainConfig(epochs=2, patience=0), progress=False).model


class RecordingReward:
    """A RewardFn that returns a feature of ``next_obs`` and records every call."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, feature=None) -> None:
        self.observation_space, self.action_space = observation_space, action_space
        self.feature = feature or (lambda next_obs: np.asarray(next_obs)[:, 0])
        self.calls: list[dict[str, Any]] = []

    def __call__(self, obs: Any, action: Any, next_obs: Any, done: np.ndarray) -> np.ndarray:
        self.calls.append({"n": len(np.asarray(done)), "done": np.array(done, copy=True),
                           "next_obs": _copy(next_obs)})
        return np.asarray(self.feature(next_obs), dtype=np.float32)


class BadAfter:
    """A RewardFn returning ``bad`` (NaN or inf) from its ``k``-th call on."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, bad: float, k: int) -> None:
        self.observation_space, self.action_space = observation_space, action_space
        self.bad, self.k, self.n = bad, k, 0

    def __call__(self, obs: Any, action: Any, next_obs: Any, done: np.ndarray) -> np.ndarray:
        self.n += 1
        out = np.zeros(len(np.asarray(done)), dtype=np.float32)
        if self.n >= self.k:
            out[-1] = self.bad
        return out


def _copy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    return np.array(x, copy=True)


def _stack(samples: list[Any]) -> Any:
    if isinstance(samples[0], dict):
        return {k: _stack([s[k] for s in samples]) for k in samples[0]}
    return np.stack([np.asarray(s) for s in samples])


def _concat(batches: list[Any]) -> Any:
    if isinstance(batches[0], dict):
        return {k: _concat([b[k] for b in batches]) for k in batches[0]}
    return np.concatenate([np.asarray(b) for b in batches])


def _rollout_single(env: gym.Env, actions: list[Any], seed: int) -> dict[str, Any]:
    """Step a (wrapped) gym env through ``actions``, resetting after each episode; record transitions."""
    obs, _ = env.reset(seed=seed)
    rec: dict[str, list] = {"obs": [], "action": [], "next_obs": [], "terminated": [], "reward": [], "info": []}
    for a in actions:
        next_obs, reward, terminated, truncated, info = env.step(a)
        for k, v in (("obs", obs), ("action", a), ("next_obs", next_obs), ("terminated", terminated),
                     ("reward", reward), ("info", info)):
            rec[k].append(v)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
    return rec


def _rollout_vec(venv: Any, actions: list[np.ndarray]) -> dict[str, Any]:
    """Step a VecEnv through ``actions``; record transitions with the terminal observation as next_obs."""
    obs = venv.reset()
    rec: dict[str, list] = {"obs": [], "action": [], "next_obs": [], "terminated": [], "reward": [], "infos": [],
                            "dones": []}
    for a in actions:
        new_obs, rewards, dones, infos = venv.step(a)
        next_obs = _copy(new_obs)
        terminated = np.array(dones, copy=True)
        for i in np.flatnonzero(dones):
            term = infos[i]["terminal_observation"]
            if isinstance(next_obs, dict):
                for k in next_obs:
                    next_obs[k][i] = term[k]
            else:
                next_obs[i] = term
            terminated[i] = not infos[i].get("TimeLimit.truncated", False)
        for k, v in (("obs", obs), ("action", a), ("next_obs", next_obs), ("terminated", terminated),
                     ("reward", rewards), ("infos", infos), ("dones", dones)):
            rec[k].append(v)
        obs = new_obs
    return rec


def _actions(env_id: str, n: int, n_envs: int | None, seed: int = 0) -> list[Any]:
    space = gym.make(env_id).action_space
    space.seed(seed)
    if n_envs is None:
        return [space.sample() for _ in range(n)]
    return [np.stack([np.asarray(space.sample()) for _ in range(n_envs)]) for _ in range(n)]


def _vec(env_id: str, n_envs: int, seed: int = 0, **make_kwargs: Any) -> DummyVecEnv:
    venv = DummyVecEnv([lambda: gym.make(env_id, **make_kwargs) for _ in range(n_envs)])
    venv.seed(seed)
    return venv


# --------------------------------------------------------------------------- same reward in both wrappers
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_both_wrappers_give_the_models_reward_for_the_same_transitions(model: RewardModel, env_id: str) -> None:
    steps = 120  # CartPole episodes under random actions end within this: episode boundaries are crossed
    actions = _actions(env_id, steps, None, seed=3)
    single = _rollout_single(LearnedReward(gym.make(env_id), model, task=env_id), actions, seed=11)
    vec = _rollout_vec(VecLearnedReward(_vec(env_id, 1, seed=11), model, task=env_id),
                       [np.asarray(a)[None] for a in actions])

    # the same transitions went through both wrappers ...
    np.testing.assert_array_equal(_stack(single["obs"]), _concat(vec["obs"]))
    np.testing.assert_array_equal(_stack(single["next_obs"]), _concat(vec["next_obs"]))
    np.testing.assert_array_equal(np.array(single["terminated"]), _concat(vec["terminated"]))
    # ... and got the same reward, the model's
    expected = model.predict(env_id, _stack(single["obs"]), _stack(single["action"]), _stack(single["next_obs"]),
                             np.array(single["terminated"]))
    np.testing.assert_allclose(np.array(single["reward"]), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_concat(vec["reward"]), expected, rtol=1e-5, atol=1e-5)
    assert np.std(expected) > 0  # a reward that varies: the comparison means something


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_vec_wrapper_with_several_envs_matches_predict(model: RewardModel, env_id: str) -> None:
    n_envs = 3
    rec = _rollout_vec(VecLearnedReward(_vec(env_id, n_envs, seed=5), model, task=env_id),
                       _actions(env_id, 60, n_envs, seed=1))
    expected = model.predict(env_id, _concat(rec["obs"]), _concat(rec["action"]), _concat(rec["next_obs"]),
                             _concat(rec["terminated"]))
    np.testing.assert_allclose(_concat(rec["reward"]), expected, rtol=1e-5, atol=1e-5)
    if env_id == "CartPole-v1":
        assert _concat(rec["dones"]).any(), "no episode ended: terminal observations were not exercised"


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_true_reward_in_info_is_the_envs_own_reward(model: RewardModel, env_id: str) -> None:
    actions = _actions(env_id, 50, None, seed=2)
    plain = _rollout_single(gym.make(env_id), actions, seed=4)
    wrapped = _rollout_single(LearnedReward(gym.make(env_id), model, task=env_id), actions, seed=4)
    assert [i["true_reward"] for i in wrapped["info"]] == pytest.approx([float(r) for r in plain["reward"]])
    assert [i["learned_reward"] for i in wrapped["info"]] == pytest.approx(wrapped["reward"])

    n_envs = 2
    vec_actions = _actions(env_id, 50, n_envs, seed=2)
    plain_vec = _rollout_vec(_vec(env_id, n_envs, seed=4), vec_actions)
    wrapped_vec = _rollout_vec(VecLearnedReward(_vec(env_id, n_envs, seed=4), model, task=env_id), vec_actions)
    true = [info["true_reward"] for infos in wrapped_vec["infos"] for info in infos]
    np.testing.assert_allclose(true, _concat(plain_vec["reward"]), rtol=1e-6)
    assert not np.allclose(_concat(wrapped_vec["reward"]), _concat(plain_vec["reward"]))  # the agent sees another


# --------------------------------------------------------------------------- episode ends
def test_vec_wrapper_uses_the_terminal_observation_as_next_obs() -> None:
    venv = _vec("CartPole-v1", 2, seed=0)
    fn = RecordingReward(venv.observation_space, venv.action_space)  # reward = next_obs[:, 0]
    wrapped = VecLearnedReward(venv, fn)
    wrapped.reset()
    ended = 0
    for _ in range(40):  # always pushing right: episodes terminate after ~10 steps
        obs, rewards, dones, infos = wrapped.step(np.ones(2, dtype=np.int64))
        for i in range(2):
            if dones[i]:
                ended += 1
                terminal = infos[i]["terminal_observation"]
                assert rewards[i] == np.float32(terminal[0])
                assert rewards[i] != np.float32(obs[i][0])  # not the observation after the reset
            else:
                assert rewards[i] == np.float32(obs[i][0])
    assert ended >= 4


@pytest.mark.parametrize("vectorized", [False, True])
def test_terminated_is_passed_as_done_and_truncated_is_not(vectorized: bool) -> None:
    def run(max_steps: int, actions: list[int]) -> tuple[list[bool], list[bool]]:
        """(done flags the reward fn got, episode-end flags the env gave) per step."""
        if vectorized:
            venv = _vec("CartPole-v1", 1, seed=0, max_episode_steps=max_steps)
            fn = RecordingReward(venv.observation_space, venv.action_space)
            env = VecLearnedReward(venv, fn)
            env.reset()
            ends = [bool(env.step(np.array([a]))[2][0]) for a in actions]
        else:
            raw = gym.make("CartPole-v1", max_episode_steps=max_steps)
            fn = RecordingReward(raw.observation_space, raw.action_space)
            env = LearnedReward(raw, fn)
            env.reset(seed=0)
            ends = []
            for a in actions:
                _, _, terminated, truncated, _ = env.step(a)
                ends.append(terminated or truncated)
                if ends[-1]:
                    break
        return [bool(c["done"][0]) for c in fn.calls], ends

    # balanced for 5 steps, then the TimeLimit truncates: the episode ends, but done=False for the reward
    dones, ends = run(5, [0, 1, 0, 1, 0])
    assert ends == [False, False, False, False, True]
    assert dones == [False] * 5
    # always pushing right: the pole falls (terminated) well before the limit: done=True on that step only
    dones, ends = run(500, [1] * 30)
    k = ends.index(True)
    assert 3 < k < 29
    assert dones[:k] == [False] * k and dones[k] is True


def test_one_batched_reward_call_per_vector_step() -> None:
    n_envs, steps = 4, 50
    venv = _vec("CartPole-v1", n_envs, seed=0)
    fn = RecordingReward(venv.observation_space, venv.action_space)
    wrapped = VecLearnedReward(venv, fn)
    wrapped.reset()
    ended = 0
    for a in _actions("CartPole-v1", steps, n_envs):
        ended += int(wrapped.step(a)[2].sum())
    assert ended > 0  # the count holds on steps where episodes end too
    assert len(fn.calls) == steps
    assert all(c["n"] == n_envs for c in fn.calls)


# --------------------------------------------------------------------------- scale / clip / alpha
TRANSFORMS = [(1.0, None, 1.0), (2.5, None, 1.0), (1.0, 1.0, 1.0), (1.0, None, 0.3), (3.0, 2.0, 0.6)]


@pytest.mark.parametrize(("scale", "clip", "alpha"), TRANSFORMS)
def test_reward_scale_clip_alpha(scale: float, clip: float | None, alpha: float) -> None:
    def expected(learned: np.ndarray, true: np.ndarray) -> np.ndarray:
        r = learned * scale
        if clip is not None:
            r = np.clip(r, -clip, clip)
        return alpha * r + (1 - alpha) * true

    feature = lambda next_obs: np.asarray(next_obs)[:, 2]  # Pendulum's angular velocity, in [-8, 8]  # noqa: E731
    raw = gym.make("Pendulum-v1")
    env = LearnedReward(raw, RecordingReward(raw.observation_space, raw.action_space, feature),
                        shaping=RewardShaping(scale, clip, alpha))
    rec = _rollout_single(env, _actions("Pendulum-v1", 60, None, seed=7), seed=1)
    learned = _stack(rec["next_obs"])[:, 2]
    true = np.array([i["true_reward"] for i in rec["info"]])
    np.testing.assert_allclose([i["learned_reward"] for i in rec["info"]], learned, rtol=1e-6)
    np.testing.assert_allclose(rec["reward"], expected(learned, true), rtol=1e-5, atol=1e-5)
    if clip is not None:
        assert np.abs(learned * scale).max() > clip  # clipping happened

    venv = _vec("Pendulum-v1", 2, seed=1)
    wrapped = VecLearnedReward(venv, RecordingReward(venv.observation_space, venv.action_space, feature),
                               shaping=RewardShaping(scale, clip, alpha))
    rec = _rollout_vec(wrapped, _actions("Pendulum-v1", 60, 2, seed=7))
    learned = _concat(rec["next_obs"])[:, 2]
    true = np.array([i["true_reward"] for infos in rec["infos"] for i in infos])
    np.testing.assert_allclose(_concat(rec["reward"]), expected(learned, true), rtol=1e-5, atol=1e-5)


def test_reward_transform_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        RewardShaping(alpha=1.5)
    with pytest.raises(ConfigError, match="clip"):
        RewardShaping(clip=0.0)
    t = RewardShaping(scale=-2.0, clip=3.0, alpha=0.5)
    out = t(np.array([1.0, 4.0, -4.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32))
    np.testing.assert_allclose(out, [0.5 * -2.0 + 0.5, 0.5 * -3.0 + 0.5, 0.5 * 3.0 + 0.5])
    assert out.dtype == np.float32


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_reward_is_a_reward_error(bad: float) -> None:
    raw = gym.make("CartPole-v1")
    env = LearnedReward(raw, BadAfter(raw.observation_space, raw.action_space, bad, k=3))
    env.reset(seed=0)
    env.step(0)
    env.step(1)
    with pytest.raises(RewardError, match="not finite"):
        env.step(0)

    venv = _vec("CartPole-v1", 3)
    wrapped = VecLearnedReward(venv, BadAfter(venv.observation_space, venv.action_space, bad, k=2))
    wrapped.reset()
    wrapped.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(RewardError, match="not finite"):
        wrapped.step(np.zeros(3, dtype=np.int64))


def test_env_spaces_that_do_not_fit_the_model_are_a_space_error(model: RewardModel) -> None:
    # the CartPole head on Pendulum: observation Box(3) vs Box(4), action Box(1) vs Discrete(2)
    with pytest.raises(SpaceError, match="CartPole-v1"):
        LearnedReward(gym.make("Pendulum-v1"), model, task="CartPole-v1")
    with pytest.raises(SpaceError, match="CartPole-v1"):
        VecLearnedReward(_vec("Pendulum-v1", 2), model, task="CartPole-v1")
    # same observation shape, other action space
    cartpole = gym.make("CartPole-v1")
    fn = RecordingReward(cartpole.observation_space, spaces.Discrete(3))
    with pytest.raises(SpaceError, match="action"):
        LearnedReward(cartpole, fn)
    with pytest.raises(SpaceError, match="action"):
        VecLearnedReward(_vec("CartPole-v1", 1), fn)


def test_model_without_a_head_for_the_task_is_a_config_error(model: RewardModel) -> None:
    with pytest.raises(ConfigError, match="Acrobot-v1"):
        LearnedReward(gym.make("Acrobot-v1"), model, task="Acrobot-v1")
    with pytest.raises(ConfigError, match="Acrobot-v1"):
        VecLearnedReward(_vec("Acrobot-v1", 1), model, task="Acrobot-v1")
    with pytest.raises(TypeError, match="task"):
        LearnedReward(gym.make("CartPole-v1"), model)  # a model needs a task to pick its head


# --------------------------------------------------------------------------- Dict observations
class DictObsEnv(gym.Env):
    """A tiny env with Dict observations (a Box and a Discrete part) and a Box action."""

    observation_space = spaces.Dict({"pos": spaces.Box(-1.0, 1.0, (2,), np.float32), "mode": spaces.Discrete(3)})
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, horizon: int = 7) -> None:
        self.horizon = horizon
        self._t = 0
        self._pos = np.zeros(2, np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self._t = 0
        self._pos = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self._t += 1
        self._pos = np.clip(self._pos + 0.3 * float(np.asarray(action).reshape(-1)[0]), -1, 1).astype(np.float32)
        return self._obs(), -float(np.abs(self._pos).sum()), self._t >= self.horizon, False, {}

    def _obs(self) -> dict:
        return {"pos": self._pos.copy(), "mode": int(self._t % 3)}


def _dict_model() -> RewardModel:
    model = RewardModel(ModelConfig(encoder=[16, 16]))
    model.add_task(Task("dict-task", "DictObs-v0"), DictObsEnv.observation_space, DictObsEnv.action_space)
    return model  # random weights: a reward that varies with every input


def test_learned_reward_on_a_dict_observation_env() -> None:
    model = _dict_model()
    env = DictObsEnv()
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(20)]
    rec = _rollout_single(LearnedReward(env, model, task="dict-task"), actions, seed=0)
    expected = model.predict("dict-task", _stack(rec["obs"]), _stack(rec["action"]), _stack(rec["next_obs"]),
                             np.array(rec["terminated"]))
    np.testing.assert_allclose(rec["reward"], expected, rtol=1e-5, atol=1e-5)
    assert np.std(expected) > 0
    ends = [i for i, info in enumerate(rec["info"]) if "learned_episode" in info]
    assert ends == [6, 13]  # horizon 7
    assert rec["info"][6]["learned_episode"]["r"] == pytest.approx(sum(rec["reward"][:7]), rel=1e-6)


def test_vec_learned_reward_on_a_dict_observation_env_uses_the_terminal_observation() -> None:
    venv = DummyVecEnv([lambda: DictObsEnv(horizon=4), lambda: DictObsEnv(horizon=6)])
    venv.seed(0)
    feature = lambda o: o["pos"][:, 0] + 10.0 * o["mode"]  # noqa: E731
    fn = RecordingReward(venv.observation_space, venv.action_space, feature)
    wrapped = VecLearnedReward(venv, fn)
    rec = _rollout_vec(wrapped, [np.full((2, 1), 0.5, np.float32)] * 13)
    assert _concat(rec["dones"]).sum() == 3 + 2
    next_obs = _concat(rec["next_obs"])
    np.testing.assert_allclose(_concat(rec["reward"]), feature(next_obs), rtol=1e-6)
    # at an episode end the reward saw the terminal observation (mode = horizon % 3), not the reset one (mode 0)
    terminal = rec["infos"][3][0]["terminal_observation"]
    assert rec["reward"][3][0] == pytest.approx(float(terminal["pos"][0]) + 10.0 * (4 % 3))

    model = _dict_model()
    wrapped = VecLearnedReward(DummyVecEnv([lambda: DictObsEnv(horizon=4)] * 2), model, task="dict-task")
    rec = _rollout_vec(wrapped, [np.full((2, 1), -0.4, np.float32)] * 9)
    expected = model.predict("dict-task", _concat(rec["obs"]), _concat(rec["action"]), _concat(rec["next_obs"]),
                             _concat(rec["terminated"]))
    np.testing.assert_allclose(_concat(rec["reward"]), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- learned episode return
def test_learned_episode_sums_the_learned_rewards(model: RewardModel) -> None:
    env = LearnedReward(gym.make("CartPole-v1"), model, task="CartPole-v1")
    rec = _rollout_single(env, _actions("CartPole-v1", 150, None, seed=9), seed=2)
    start, episodes = 0, 0
    for t, info in enumerate(rec["info"]):
        if "learned_episode" in info:
            assert info["learned_episode"]["l"] == t + 1 - start
            assert info["learned_episode"]["r"] == pytest.approx(float(np.sum(rec["reward"][start:t + 1])), rel=1e-6)
            start, episodes = t + 1, episodes + 1
    assert episodes >= 3

    n_envs = 3
    wrapped = VecLearnedReward(_vec("CartPole-v1", n_envs, seed=2), model, task="CartPole-v1")
    rec = _rollout_vec(wrapped, _actions("CartPole-v1", 100, n_envs, seed=9))
    sums, lengths, episodes = np.zeros(n_envs), np.zeros(n_envs, int), 0
    for rewards, dones, infos in zip(rec["reward"], rec["dones"], rec["infos"]):
        sums += rewards
        lengths += 1
        for i in range(n_envs):
            assert ("learned_episode" in infos[i]) == bool(dones[i])
            if dones[i]:
                assert infos[i]["learned_episode"]["r"] == pytest.approx(sums[i], rel=1e-6)
                assert infos[i]["learned_episode"]["l"] == lengths[i]
                sums[i], lengths[i], episodes = 0.0, 0, episodes + 1
    assert episodes >= 6


def test_learned_episode_return_over_long_episodes_and_resets(model: RewardModel) -> None:
    """Pendulum's 200-step episodes span many folds of the float32 partial sums; reset() starts afresh."""
    wrapped = VecLearnedReward(_vec("Pendulum-v1", 2, seed=4), model, task="Pendulum-v1")
    for steps in (70, 430):  # the first rollout stops mid-episode; _rollout_vec resets before each
        rec = _rollout_vec(wrapped, _actions("Pendulum-v1", steps, 2, seed=steps))
        sums, ends = np.zeros(2), 0
        for rewards, dones, infos in zip(rec["reward"], rec["dones"], rec["infos"]):
            sums += rewards.astype(np.float64)
            for i in np.flatnonzero(dones):
                assert infos[i]["learned_episode"]["l"] == 200
                assert infos[i]["learned_episode"]["r"] == pytest.approx(sums[i], rel=1e-6)
                sums[i], ends = 0.0, ends + 1
        assert ends == (0 if steps < 200 else 4)


class InPlaceEnv(gym.Env):
    """An env that returns the same observation array every step, updated in place (some envs do)."""

    observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self) -> None:
        self.state = np.zeros(2, np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self.state[:] = 0.0
        return self.state, {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.state += (1.0, float(action))
        return self.state, 1.0, False, bool(self.state[0] >= 5), {}


def test_single_env_wrapper_keeps_its_own_copy_of_the_previous_observation() -> None:
    class ObsDelta(RecordingReward):
        def __call__(self, obs, action, next_obs, done):  # next_obs - obs on the counter: 1 in every transition
            return (np.asarray(next_obs)[:, 0] - np.asarray(obs)[:, 0]).astype(np.float32)

    env = LearnedReward(InPlaceEnv(), ObsDelta(InPlaceEnv.observation_space, InPlaceEnv.action_space))
    rec = _rollout_single(env, [1, 0, 1, 1, 0, 1, 0], seed=0)
    assert rec["reward"] == [1.0] * 7
    assert rec["info"][4]["learned_episode"] == {"r": 5.0, "l": 5}


class OneBuffer(VecEnvWrapper):
    """Returns the same observation array every step, updated in place (a VecEnv may do that)."""

    def reset(self) -> np.ndarray:
        self.buf = np.array(self.venv.reset())
        return self.buf

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        self.buf[...] = obs
        return self.buf, rewards, dones, infos


def test_vec_wrapper_over_a_vecenv_that_reuses_its_observation_buffer() -> None:
    class Pairs(RecordingReward):
        def __call__(self, obs, action, next_obs, done):
            self.calls.append({"obs": np.array(obs), "next_obs": np.array(next_obs)})
            return np.zeros(len(done), np.float32)

    venv = OneBuffer(_vec("CartPole-v1", 3, seed=1))
    fn = Pairs(venv.observation_space, venv.action_space)
    rec = _rollout_vec(VecLearnedReward(venv, fn), _actions("CartPole-v1", 60, 3, seed=1))
    for t in range(1, 60):
        alive = ~rec["dones"][t - 1]  # envs that did not reset between the two calls
        np.testing.assert_array_equal(fn.calls[t]["obs"][alive], fn.calls[t - 1]["next_obs"][alive])
        assert not np.array_equal(fn.calls[t]["obs"], fn.calls[t]["next_obs"])


# --------------------------------------------------------------------------- order of the env stack
def _pendulum_reward() -> RecordingReward:
    env = gym.make("Pendulum-v1")
    return RecordingReward(env.observation_space, env.action_space)


@pytest.mark.parametrize("norm_obs, norm_reward, normalizes", [(True, False, "observations"),
                                                                (False, True, "rewards"),
                                                                (True, True, "observations")])
def test_vec_learned_reward_over_a_normalizing_vecnormalize_is_refused(norm_obs: bool, norm_reward: bool,
                                                                      normalizes: str) -> None:
    # defect 5: the model would see normalized observations, info["true_reward"] a normalized reward
    venv = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), norm_obs=norm_obs, norm_reward=norm_reward)
    with pytest.raises(ConfigError, match=rf"VecNormalize that normalizes {normalizes}.*"
                                          r"VecLearnedReward -> VecNormalize \(VecNormalize outside\)"):
        VecLearnedReward(venv, _pendulum_reward(), "Pendulum-v1")
    # also further down the chain of wrappers
    with pytest.raises(ConfigError, match="VecNormalize outside"):
        VecLearnedReward(VecMonitor(venv), _pendulum_reward(), "Pendulum-v1")
    venv.close()


def test_vecnormalize_outside_the_learned_reward_is_the_supported_order() -> None:
    inner = VecLearnedReward(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), _pendulum_reward(), "Pendulum-v1")
    venv = VecNormalize(inner)
    venv.reset()
    _, _, _, infos = venv.step(np.zeros((1, 1), dtype=np.float32))
    assert "true_reward" in infos[0]
    # a VecNormalize that changes nothing underneath is harmless
    VecLearnedReward(VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), norm_obs=False, norm_reward=False),
                     _pendulum_reward(), "Pendulum-v1")
    venv.close()
