"""rlrm.rl (hyperparams, envs, files): hyperparameters as data, kwargs building, the env stack, VecNormalize
statistics, agent files."""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.noise import NormalActionNoise, VectorizedActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from torch import nn

from rlrm.errors import ConfigError
from rlrm.rl.envs import load_vecnormalize, make_vec_env, save_vecnormalize, sync_normalization
from rlrm.rl.files import UntrustedAgentFile, detect_algo, load_agent
from rlrm.rl.hyperparams import ALGOS, AgentSpec, build_kwargs, check_spec, default_algo, load_spec, parse_params
from rlrm.tasks import Task
from rlrm.wrappers import VecLearnedReward

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"

CARTPOLE = Task("CartPole-v1", "CartPole-v1")
PENDULUM = Task("Pendulum-v1", "Pendulum-v1")


class ConstantReward:
    """A RewardFn that gives the same reward to every transition."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, value: float) -> None:
        self.observation_space, self.action_space, self.value = observation_space, action_space, value

    def __call__(self, obs: Any, action: Any, next_obs: Any, done: np.ndarray) -> np.ndarray:
        return np.full(len(np.asarray(done)), self.value, dtype=np.float32)


def _constant(task: Task, value: float) -> ConstantReward:
    env = task.make_env()
    return ConstantReward(env.observation_space, env.action_space, value)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- hyperparameters
def test_load_spec_merges_default_then_env_then_task_then_overrides(tmp_path: Path) -> None:
    _write(tmp_path / "ppo.yaml", """
default: {n_timesteps: 1000, n_envs: 2, gamma: 0.9, n_steps: 32, ent_coef: 0.01}
CartPole-v1: {n_envs: 4, gamma: 0.95, normalize: true, learning_rate: lin_0.001}
cp-custom: {n_steps: 16}
""")
    spec = load_spec("ppo", CARTPOLE, {"gamma": 0.97}, hyperparams_dir=tmp_path)
    assert spec.algo == "ppo"
    assert spec.n_timesteps == 1000  # from default
    assert spec.n_envs == 4  # the env entry wins over default
    assert spec.normalize == {}  # `true` means VecNormalize with its defaults
    assert spec.policy == "MlpPolicy"
    assert spec.kwargs == {"gamma": 0.97, "n_steps": 32, "ent_coef": 0.01, "learning_rate": "lin_0.001"}

    custom = load_spec("PPO", Task("cp-custom", "CartPole-v1"), hyperparams_dir=tmp_path)
    assert custom.kwargs["n_steps"] == 16 and custom.kwargs["gamma"] == 0.95  # task entry over env entry
    other = load_spec("ppo", PENDULUM, hyperparams_dir=tmp_path)
    assert (other.n_envs, other.normalize, other.kwargs) == (2, None, {"gamma": 0.9, "n_steps": 32, "ent_coef": 0.01})
    # JSON round trip of the spec (what config.json stores)
    assert AgentSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_load_spec_reads_the_shipped_files() -> None:
    ppo = load_spec("ppo", CARTPOLE)
    assert (ppo.n_timesteps, ppo.n_envs) == (100_000, 8)
    assert ppo.kwargs["learning_rate"] == "lin_0.001"
    sac = load_spec("sac", PENDULUM, {"n_timesteps": 500})
    assert sac.n_timesteps == 500 and sac.kwargs["learning_rate"] == pytest.approx(1e-3)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"n_stepz": 64}, "n_stepz"),
    ({"n_steps": "abc"}, "n_steps"),
    ({"n_steps": 64.5}, "integer"),
    ({"normalize_advantage": 3}, "normalize_advantage"),
    ({"n_timesteps": 0}, "positive"),
    ({"normalize": "yes"}, "normalize"),
])
def test_load_spec_rejects_bad_keys_and_values(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_spec("ppo", CARTPOLE, overrides)


def test_load_spec_names_the_file_of_an_unknown_key_and_unknown_algos(tmp_path: Path) -> None:
    path = _write(tmp_path / "ppo.yaml", "default: {n_timesteps: 100, bogus_key: 1}\n")
    with pytest.raises(ConfigError, match="bogus_key") as err:
        load_spec("ppo", CARTPOLE, hyperparams_dir=tmp_path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        load_spec("sac", CARTPOLE, hyperparams_dir=tmp_path)
    _write(tmp_path / "a2c.yaml", "default: [1, 2]\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_spec("a2c", CARTPOLE, hyperparams_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown algorithm 'foo'"):
        load_spec("foo", CARTPOLE)


def test_parse_params() -> None:
    assert parse_params(["n_steps:64", "policy_kwargs:{net_arch: [16]}"]) == {
        "n_steps": 64, "policy_kwargs": {"net_arch": [16]}}
    assert parse_params(["learning_rate:lin_0.001", "gamma: 0.9", "use_sde:true"]) == {
        "learning_rate": "lin_0.001", "gamma": 0.9, "use_sde": True}
    assert parse_params([]) == {}
    for bad in ("n_steps", ":64", "net_arch:[16, 32"):
        with pytest.raises(ConfigError, match="params"):
            parse_params([bad])


def test_default_algo() -> None:
    assert default_algo(CARTPOLE) == "ppo"
    assert default_algo(Task("MountainCarContinuous-v0", "MountainCarContinuous-v0")) == "sac"
    assert default_algo(Task("my-task", "MountainCarContinuous-v0")) == "sac"  # by env id when the name is unknown
    assert default_algo(Task("Acrobot-v1", "Acrobot-v1")) == "ppo"


def test_build_kwargs_makes_schedules_activations_and_noise() -> None:
    spec = AgentSpec("ppo", 1000, kwargs={"learning_rate": "lin_0.001", "clip_range": "lin_0.2", "n_steps": 64,
                                          "policy_kwargs": {"activation_fn": "relu", "net_arch": [16]}})
    kwargs = build_kwargs(spec)
    assert kwargs["learning_rate"](1.0) == pytest.approx(1e-3)
    assert kwargs["learning_rate"](0.5) == pytest.approx(5e-4)
    assert kwargs["clip_range"](0.25) == pytest.approx(0.05)
    assert kwargs["n_steps"] == 64
    assert kwargs["policy_kwargs"] == {"activation_fn": nn.ReLU, "net_arch": [16]}
    assert pickle.loads(pickle.dumps(kwargs["learning_rate"]))(0.5) == pytest.approx(5e-4)  # saved with the agent
    assert spec.kwargs["learning_rate"] == "lin_0.001"  # the spec stays plain data

    agent = PPO("MlpPolicy", DummyVecEnv([CARTPOLE.make_env]), device="cpu", **build_kwargs(spec))
    assert agent.lr_schedule(0.5) == pytest.approx(5e-4)
    assert agent.policy.activation_fn is nn.ReLU

    for name, cls in (("nn.Tanh", nn.Tanh), ("ELU", nn.ELU), ("leaky_relu", nn.LeakyReLU)):
        pk = build_kwargs(AgentSpec("ppo", 1, kwargs={"policy_kwargs": {"activation_fn": name}}))["policy_kwargs"]
        assert pk["activation_fn"] is cls
    with pytest.raises(ConfigError, match="activation_fn"):
        build_kwargs(AgentSpec("ppo", 1, kwargs={"policy_kwargs": {"activation_fn": "swish2"}}))
    with pytest.raises(ConfigError, match="lin_"):
        build_kwargs(AgentSpec("ppo", 1, kwargs={"learning_rate": "lin_fast"}))

    noise = build_kwargs(AgentSpec("sac", 1, kwargs={"action_noise": {"type": "normal", "sigma": 0.2}}), 2)
    assert isinstance(noise["action_noise"], NormalActionNoise)
    assert noise["action_noise"]._sigma == pytest.approx([0.2, 0.2])
    with pytest.raises(ConfigError, match="action_noise"):
        build_kwargs(AgentSpec("dqn", 1, kwargs={"action_noise": {"sigma": 0.2}}), None)  # Discrete actions


def test_check_spec_catches_bad_values_early() -> None:
    check_spec(CARTPOLE, load_spec("ppo", CARTPOLE, {"n_steps": 64, "batch_size": 64}))
    with pytest.raises(ConfigError, match="batch_size"):
        check_spec(CARTPOLE, load_spec("ppo", CARTPOLE, {"batch_size": 1}))


def test_check_spec_judges_a_spec_with_its_own_number_of_envs() -> None:
    # valid for SB3 with 8 envs (a rollout of 8 transitions, minibatches of 8): must not be refused
    spec = load_spec("ppo", CARTPOLE, {"n_envs": 8, "n_steps": 1, "batch_size": 8})
    check_spec(CARTPOLE, spec)
    PPO("MlpPolicy", DummyVecEnv([CARTPOLE.make_env] * 8), device="cpu", **build_kwargs(spec))
    # the shipped CartPole entry (8 envs x 32 steps = minibatches of 256): no SB3 warning either
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_spec(CARTPOLE, load_spec("ppo", CARTPOLE))


# --------------------------------------------------------------------------- the env stack
def test_monitor_sits_inside_the_learned_reward() -> None:
    venv = make_vec_env(CARTPOLE, 2, seed=0, reward=_constant(CARTPOLE, 0.25))
    assert isinstance(venv, VecLearnedReward)
    assert isinstance(venv.venv, DummyVecEnv) and all(isinstance(e, Monitor) for e in venv.venv.envs)
    venv.reset()
    episodes = 0
    rng = np.random.default_rng(0)
    for _ in range(100):
        _, rewards, dones, infos = venv.step(rng.integers(0, 2, size=2))
        np.testing.assert_allclose(rewards, 0.25)  # what the agent sees: the learned reward
        for i in np.flatnonzero(dones):
            episodes += 1
            length = infos[i]["episode"]["l"]
            assert infos[i]["episode"]["r"] == pytest.approx(length)  # Monitor: the TRUE return (1 per step)
            assert infos[i]["learned_episode"] == {"r": pytest.approx(0.25 * length), "l": length}
    assert episodes >= 4
    venv.close()


def test_an_sb3_agent_logs_the_true_return_and_learns_from_the_learned_one() -> None:
    venv = make_vec_env(CARTPOLE, 2, seed=0, reward=_constant(CARTPOLE, -3.0))
    agent = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
    agent.learn(128)
    assert len(agent.ep_info_buffer) > 0
    assert all(ep["r"] == pytest.approx(ep["l"]) for ep in agent.ep_info_buffer)  # rollout/ep_rew_mean is true
    np.testing.assert_allclose(agent.rollout_buffer.rewards, -3.0)  # the agent learned from the learned reward
    venv.close()


def test_make_vec_env_pendulum_true_return_and_normalization_on_the_outside() -> None:
    venv = make_vec_env(PENDULUM, 2, seed=1, reward=_constant(PENDULUM, 1.0), normalize={"gamma": 0.9})
    assert isinstance(venv, VecNormalize) and isinstance(venv.venv, VecLearnedReward)
    assert venv.training and venv.norm_reward
    venv.reset()
    true_sums = np.zeros(2)
    seen = False
    for _ in range(200):  # Pendulum episodes are 200 steps
        _, _, dones, infos = venv.step(np.zeros((2, 1), np.float32))
        true_sums += [info["true_reward"] for info in infos]
        for i in np.flatnonzero(dones):
            seen = True
            assert infos[i]["episode"]["r"] == pytest.approx(true_sums[i], rel=1e-4)
            assert infos[i]["learned_episode"]["r"] == pytest.approx(200.0)
    assert seen
    evaluation = make_vec_env(PENDULUM, 1, seed=1, reward=None, normalize={"gamma": 0.9}, training=False)
    assert isinstance(evaluation, VecNormalize) and isinstance(evaluation.venv, DummyVecEnv)
    assert not evaluation.training and not evaluation.norm_reward  # evaluation: frozen stats, raw rewards
    venv.close()
    evaluation.close()


def test_vecnormalize_statistics_json_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    train = make_vec_env(PENDULUM, 2, seed=0, normalize={"gamma": 0.9})
    train.reset()
    rng = np.random.default_rng(0)
    for _ in range(50):
        train.step(rng.uniform(-2, 2, size=(2, 1)).astype(np.float32))
    assert train.obs_rms.count > 50
    save_vecnormalize(train, "stats.json")
    saved = json.loads(Path("stats.json").read_text())  # plain JSON, no pickle
    assert set(saved) >= {"obs_rms", "ret_rms", "norm_obs", "norm_reward", "gamma"}

    target = make_vec_env(PENDULUM, 1, seed=5, normalize={"gamma": 0.9}, training=False)
    assert not np.allclose(target.obs_rms.mean, train.obs_rms.mean)
    load_vecnormalize(target, "stats.json")
    for a, b in ((target.obs_rms, train.obs_rms), (target.ret_rms, train.ret_rms)):
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
        np.testing.assert_allclose(a.var, b.var, rtol=1e-12)
        assert a.count == pytest.approx(b.count)
    obs = np.array([[0.5, -0.5, 1.0]], np.float32)
    np.testing.assert_allclose(target.normalize_obs(obs), train.normalize_obs(obs), rtol=1e-6)

    with pytest.raises(ConfigError, match=r"missing\.json"):
        load_vecnormalize(target, "missing.json")
    Path("broken.json").write_text("{")
    with pytest.raises(ConfigError, match=r"broken\.json"):
        load_vecnormalize(target, "broken.json")
    train.close()
    target.close()


def test_sync_normalization_copies_statistics() -> None:
    source = make_vec_env(PENDULUM, 1, seed=0, normalize={})
    source.reset()
    for _ in range(20):
        source.step(np.ones((1, 1), np.float32))
    target = make_vec_env(PENDULUM, 1, seed=0, normalize={}, training=False)
    sync_normalization(source, target)
    np.testing.assert_allclose(target.obs_rms.mean, source.obs_rms.mean)
    before = target.obs_rms.mean.copy()
    for _ in range(20):
        source.step(-np.ones((1, 1), np.float32))
    np.testing.assert_array_equal(target.obs_rms.mean, before)  # a copy, not shared
    source.close()
    target.close()


# --------------------------------------------------------------------------- agent files
def _save_agent(algo: str, path: str) -> None:
    if algo in ("ppo", "a2c", "dqn"):
        env = DummyVecEnv([CARTPOLE.make_env])
        extra = {"buffer_size": 100} if algo == "dqn" else {"n_steps": 16}
        if algo == "ppo":
            extra["batch_size"] = 16
    else:
        env, extra = DummyVecEnv([PENDULUM.make_env]), {"buffer_size": 100}
    ALGOS[algo]("MlpPolicy", env, device="cpu", **extra).save(path)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "sac", "td3", "dqn"])
def test_detect_algo_of_a_plain_sb3_zip(algo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _save_agent(algo, "agent.zip")  # no config.json beside it: the zip alone must tell
    assert detect_algo("agent.zip") == algo
    task = CARTPOLE if algo in ("ppo", "a2c", "dqn") else PENDULUM
    # SB3's defaults: every pickled entry is rebuilt, nothing unpickled
    assert isinstance(load_agent("agent.zip", env=DummyVecEnv([task.make_env])), ALGOS[algo])


def test_detect_algo_prefers_the_run_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("run").mkdir()
    _save_agent("ppo", "run/agent.zip")
    spec = AgentSpec("ppo", 1000, kwargs={"n_steps": 16, "batch_size": 16})
    Path("run/config.json").write_text(json.dumps({"agent": spec.to_dict()}))
    assert detect_algo("run/agent.zip") == "ppo"
    assert isinstance(load_agent("run/agent.zip", env=DummyVecEnv([CARTPOLE.make_env])), PPO)


def test_load_agent_checks_the_env_and_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _save_agent("ppo", "ppo_agent.zip")
    agent = load_agent("ppo_agent.zip", env=DummyVecEnv([CARTPOLE.make_env]), algo="ppo")
    assert isinstance(agent, PPO)
    with pytest.raises(ConfigError, match="another env"):
        load_agent("ppo_agent.zip", env=DummyVecEnv([PENDULUM.make_env]), algo="ppo")
    with pytest.raises(ConfigError, match="not found"):
        load_agent("nope.zip")
    with pytest.raises(ConfigError, match="needs its env"):
        load_agent("ppo_agent.zip", algo="ppo")
    Path("junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"junk\.zip"):
        detect_algo("junk.zip")
    with pytest.raises(ConfigError, match=r"junk\.zip"):
        load_agent("junk.zip", algo="ppo")


# --------------------------------------------------------------------------- loading without unpickling
@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any cloudpickle.loads in SB3's loader fail the test (the only place SB3 unpickles an agent's data)."""
    from stable_baselines3.common import save_util

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("cloudpickle.loads was called on an agent file")

    monkeypatch.setattr(save_util.cloudpickle, "loads", refuse)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "sac", "td3", "dqn"])
def test_plain_sb3_zips_load_without_unpickling(algo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                no_unpickling: None) -> None:
    monkeypatch.chdir(tmp_path)
    _save_agent(algo, "agent.zip")
    task = CARTPOLE if algo in ("ppo", "a2c", "dqn") else PENDULUM
    agent = load_agent("agent.zip", env=DummyVecEnv([task.make_env]))
    assert agent.observation_space == task.make_env().observation_space
    with pytest.raises(ConfigError, match="another env"):
        load_agent("agent.zip", env=DummyVecEnv([(PENDULUM if task is CARTPOLE else CARTPOLE).make_env]))


def _sac_run(tmp_path: Path, kwargs: dict[str, Any]) -> tuple[Path, AgentSpec]:
    """A SAC agent built from an rlrm agent spec (schedules, action noise, activation), trained a few steps on 2
    envs, saved in a run folder with its config.json."""
    spec = AgentSpec("sac", 100, n_envs=2, kwargs={"buffer_size": 200, "learning_starts": 20, "batch_size": 16,
                                                   **kwargs})
    venv = DummyVecEnv([PENDULUM.make_env] * 2)
    agent = ALGOS["sac"]("MlpPolicy", venv, device="cpu", seed=0, **build_kwargs(spec, 1))
    agent.learn(40)
    (tmp_path / "run").mkdir()
    agent.save(tmp_path / "run" / "agent.zip")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"agent": spec.to_dict()}))
    return tmp_path / "run" / "agent.zip", spec


RICH = {"learning_rate": "lin_0.001", "action_noise": {"type": "normal", "sigma": 0.2},
        "policy_kwargs": {"net_arch": [16], "activation_fn": "relu"}}


def test_an_rlrm_run_agent_is_rebuilt_from_its_config(tmp_path: Path, no_unpickling: None) -> None:
    path, _ = _sac_run(tmp_path, RICH)
    with zipfile.ZipFile(path) as zf:
        data = json.loads(zf.read("data"))
    pickled = {k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v}
    assert {"learning_rate", "action_noise", "policy_kwargs"} <= pickled
    agent = load_agent(path, env=DummyVecEnv([PENDULUM.make_env] * 2))  # config.json found beside it
    assert agent.policy_kwargs["activation_fn"] is nn.ReLU and agent.learning_rate(0.5) == pytest.approx(0.0005)
    assert isinstance(agent.action_noise, VectorizedActionNoise)  # learn() on 2 envs wrapped it; rebuilt the same
    agent.learn(20, reset_num_timesteps=False)  # it trains on


def test_a_config_that_does_not_rebuild_the_file_is_refused(tmp_path: Path, no_unpickling: None) -> None:
    path, spec = _sac_run(tmp_path, RICH)
    other = AgentSpec(spec.algo, spec.n_timesteps, spec.n_envs, kwargs={**spec.kwargs, "learning_rate": "lin_0.01"})
    with pytest.raises(UntrustedAgentFile, match=r"'learning_rate' differs .*start: '0.001' in the file, '0.01'"):
        load_agent(path, env=DummyVecEnv([PENDULUM.make_env] * 2), agent_spec=other)
    # an agent that only acts needs only its network and spaces rebuilt exactly
    agent = load_agent(path, env=DummyVecEnv([PENDULUM.make_env]), agent_spec=other, for_training=False)
    assert agent.policy_kwargs["activation_fn"] is nn.ReLU
    # without its config: the activation cannot be rebuilt from the file alone
    (path.parent / "config.json").unlink()
    with pytest.raises(UntrustedAgentFile, match=r"'policy_kwargs'.*trust_agent_file=True"):
        load_agent(path, env=DummyVecEnv([PENDULUM.make_env]), for_training=False)


def test_trust_agent_file_unpickles(tmp_path: Path) -> None:
    path, _ = _sac_run(tmp_path, RICH)
    (path.parent / "config.json").unlink()
    agent = load_agent(path, trust_agent_file=True)  # SB3's own loader: no env needed
    assert agent.policy_kwargs["activation_fn"] is nn.ReLU
