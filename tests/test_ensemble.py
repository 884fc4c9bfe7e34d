"""Reward-model ensembles: structure checks, one-file save/load, the batched NumPy path against ``predict``,
the wrappers' std and uncertainty weight, and bootstrap training with held-out episodes no member sees."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from stable_baselines3.common.vec_env import DummyVecEnv

import rlrm.model as rm
import rlrm.tasks  # noqa: F401  (registers rlrm/PointGoal-v0)
from rlrm.data.dataset import TransitionDataset
from rlrm.errors import ConfigError, ModelFileError
from rlrm.model.ensemble import RewardEnsemble, predict_members
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.tasks import Task
from rlrm.train import ensemble as train_ens
from rlrm.train.loop import TrainConfig, split_seed
from rlrm.wrappers import LearnedReward, RewardShaping, VecLearnedReward

ENVS = ["CartPole-v1", "Pendulum-v1", "rlrm/PointGoal-v0"]  # Discrete action; Box action; Dict observation


def _member(seed: int, config: ModelConfig | None = None, envs: list[str] = ENVS) -> RewardModel:
    """A member with its own weights, feature statistics and label scales (as bootstrap training gives)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = RewardModel(config or ModelConfig())
    for env_id in envs:
        env = gym.make(env_id)
        model.add_task(Task(env_id, env_id), env.observation_space, env.action_space)
        env.close()
    for gid, group in model.groups.items():
        mean = rng.normal(size=group.dim)
        model.set_normalization(gid, mean, rng.uniform(0.5, 2.0, size=group.dim), mean - 3, mean + 3)
    for name in model.tasks:
        model.set_label_scale(name, float(rng.normal()), float(rng.uniform(0.5, 3.0)))
    return model.eval()


def _batch(env_id: str, n: int, seed: int = 0) -> tuple:
    env = gym.make(env_id)
    env.observation_space.seed(seed)
    env.action_space.seed(seed + 1)

    def obs() -> object:
        rows = [env.observation_space.sample() for _ in range(n)]
        if isinstance(rows[0], dict):
            return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        return np.stack(rows)

    action = np.stack([np.asarray(env.action_space.sample()) for _ in range(n)])
    done = np.arange(n) % 3 == 0
    return obs(), action, obs(), done


@pytest.fixture(scope="module")
def ensemble() -> RewardEnsemble:
    return RewardEnsemble([_member(s) for s in range(3)])


# ---------------------------------------------------------------- structure
def test_fewer_than_two_members_or_different_structures_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="2 to 64 members, got 1"):
        RewardEnsemble([_member(0)])
    with pytest.raises(ConfigError, match="member 1 differs in structure"):
        RewardEnsemble([_member(0), _member(1, envs=ENVS[:2])])
    with pytest.raises(ConfigError, match="member 1 differs in structure"):
        RewardEnsemble([_member(0), _member(1, ModelConfig(encoder=[32, 32]))])


def test_ensemble_reads_like_a_model(ensemble: RewardEnsemble) -> None:
    assert list(ensemble.tasks) == ENVS and ensemble.k == 3
    assert ensemble.head_info("Pendulum-v1").task.name == "Pendulum-v1"
    obs, action, next_obs, done = _batch("Pendulum-v1", 5)
    members = ensemble.predict_members("Pendulum-v1", obs, action, next_obs, done)
    assert members.shape == (3, 5) and members.dtype == np.float32
    assert not np.allclose(members[0], members[1])  # own weights and scales
    mean, std = ensemble.predict("Pendulum-v1", obs, action, next_obs, done, return_std=True)
    np.testing.assert_allclose(mean, members.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, members.std(0), atol=1e-6)
    single = ensemble.members[1]
    np.testing.assert_array_equal(predict_members(single, "Pendulum-v1", obs, action, next_obs, done),
                                  single.predict("Pendulum-v1", obs, action, next_obs, done)[None])
    with pytest.raises(ConfigError, match="no head for task 'nope'"):
        ensemble.reward_fn("nope")


# ---------------------------------------------------------------- one model file
def test_save_load_round_trip_in_one_file(ensemble: RewardEnsemble, tmp_path: Path) -> None:
    ensemble.meta = {"note": "three members"}
    path = rm.save(ensemble, tmp_path / "ens.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.safetensors"]
    loaded = rm.load(path)
    assert isinstance(loaded, RewardEnsemble) and loaded.k == 3 and loaded.meta == {"note": "three members"}
    desc = rm.read_description(path)
    assert desc["ensemble"] == 3 and list(desc["tasks"]) == ENVS  # readers of 'tasks' need nothing new
    for env_id in ENVS:
        batch = _batch(env_id, 7)
        np.testing.assert_array_equal(loaded.predict_members(env_id, *batch), ensemble.predict_members(env_id, *batch))
        for a, b in zip(loaded.members, ensemble.members):
            assert a.head_info(env_id).label_std == b.head_info(env_id).label_std
    single = rm.save(ensemble.members[0], tmp_path / "one.safetensors")
    assert type(rm.load(single)) is RewardModel and rm.read_description(single)["format_version"] == 2


def _rewrite(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    desc = json.loads(json.loads(raw[8:8 + n])["__metadata__"]["rlrm"])
    edit(desc)
    path.write_bytes(st_save(st_load(raw), metadata={"rlrm": json.dumps(desc)}))


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(ensemble=1000), "field 'ensemble' is 1000; expected a member count from 2 to 64"),
    (lambda d: d.update(ensemble=4), "field 'members': expected 4 member descriptions, found 3"),
    (lambda d: d["members"][2]["config"].update(encoder=[64, 32]), "member 2 differs in structure"),
    (lambda d: d["members"][1]["config"].update(encoder=[70000]), "asks for a width of 70,000"),
])
def test_bad_ensemble_headers_are_refused_before_loading(ensemble: RewardEnsemble, tmp_path: Path, edit,
                                                         match: str) -> None:
    path = rm.save(ensemble, tmp_path / "ens.safetensors")
    _rewrite(path, edit)
    with pytest.raises(ModelFileError, match=match):
        rm.load(path)


# ---------------------------------------------------------------- the fast path
@pytest.mark.parametrize("config", [ModelConfig(),
                                    ModelConfig(encoder=[16, 16, 8], activation="tanh", layer_norm=True)],
                         ids=["relu", "tanh+layernorm"])
@pytest.mark.parametrize("env_id", ENVS)
def test_numpy_path_gives_predicts_mean_and_std(env_id: str, config: ModelConfig) -> None:
    ens = RewardEnsemble([_member(s, config) for s in range(3)])
    fn = ens.reward_fn(env_id)
    for n in (8, 8, 1, 33):  # a plan per batch size, reused
        batch = _batch(env_id, n, seed=n)
        mean, std = ens.predict(env_id, *batch, return_std=True)
        got_mean, got_std = fn.with_std(*batch)
        np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_std, std, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fn(*batch), mean, rtol=1e-5, atol=1e-5)
        assert got_mean.dtype == got_std.dtype == np.float32 and std.max() > 1e-3
        np.testing.assert_allclose(fn.members(*batch), ens.predict_members(env_id, *batch), rtol=1e-5, atol=1e-5)
    before = fn(*batch)
    fn.with_std(*_batch(env_id, n, seed=99))
    np.testing.assert_array_equal(before, fn(*batch))  # results are fresh arrays, not views of buffers


def test_numpy_path_rejects_what_predict_rejects(ensemble: RewardEnsemble) -> None:
    fn = ensemble.reward_fn("CartPole-v1")
    obs, _, next_obs, done = _batch("CartPole-v1", 4)
    with pytest.raises(Exception, match="action") as numpy_err:
        fn(obs, np.array([0, 1, 2, 0]), next_obs, done)
    with pytest.raises(type(numpy_err.value)):
        ensemble.predict("CartPole-v1", obs, np.array([0, 1, 2, 0]), next_obs, done)


# ---------------------------------------------------------------- wrappers
def test_vec_wrapper_pays_mean_plus_weighted_std(ensemble: RewardEnsemble) -> None:
    task = "Pendulum-v1"
    rewards = {}
    for u in (0.0, 2.0, -2.0):
        venv = VecLearnedReward(DummyVecEnv([lambda: gym.make(task)] * 3), ensemble, task,
                                shaping=RewardShaping(uncertainty=u))
        venv.seed(0)
        obs = venv.reset()
        actions = np.random.default_rng(0).uniform(-2, 2, size=(3, 3, 1)).astype(np.float32)
        steps = []
        for a in actions:
            next_obs, r, _, infos = venv.step(a)
            mean, std = ensemble.predict(task, obs, a, next_obs, np.zeros(3, bool), return_std=True)
            np.testing.assert_allclose([i["reward_std"] for i in infos], std, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(r, mean + u * std, rtol=1e-5, atol=1e-5)
            steps.append(r)
            obs = next_obs
        rewards[u] = np.array(steps)
    assert np.all(rewards[2.0] > rewards[0.0]) and np.all(rewards[-2.0] < rewards[0.0])


def test_single_env_wrapper_and_decay(ensemble: RewardEnsemble) -> None:
    task = "rlrm/PointGoal-v0"
    shaping = RewardShaping(uncertainty=1.0, uncertainty_decay=0.5)
    env = LearnedReward(gym.make(task), ensemble, task, shaping=shaping)
    plain = LearnedReward(gym.make(task), ensemble, task)
    env.reset(seed=0)
    plain.reset(seed=0)
    for t in range(4):
        action = np.array([0.5, -0.5], np.float32)
        _, r, _, _, info = env.step(action)
        _, r0, _, _, info0 = plain.step(action)
        assert info["reward_std"] == pytest.approx(info0["reward_std"]) and info["reward_std"] > 0
        assert r == pytest.approx(r0 + 0.5 ** t * info["reward_std"], abs=1e-5)  # u_t = u (1 - decay)^t


def test_single_model_has_zero_std_and_refuses_an_uncertainty_weight() -> None:
    model = _member(0)
    venv = VecLearnedReward(DummyVecEnv([lambda: gym.make("CartPole-v1")] * 2), model, "CartPole-v1")
    venv.reset()
    _, _, _, infos = venv.step(np.array([0, 1]))
    assert [i["reward_std"] for i in infos] == [0.0, 0.0]
    env = LearnedReward(gym.make("CartPole-v1"), model, "CartPole-v1")
    env.reset(seed=0)
    assert env.step(0)[4]["reward_std"] == 0.0
    with pytest.raises(ConfigError, match=r"uncertainty is -1\.0 but the reward function for task "
                                          r"'CartPole-v1' gives no std"):
        LearnedReward(gym.make("CartPole-v1"), model, "CartPole-v1", shaping=RewardShaping(uncertainty=-1.0))


def test_shaping_carries_the_uncertainty_weight_and_reads_old_configs() -> None:
    shaping = RewardShaping(2.0, 5.0, 0.5, uncertainty=-0.3, uncertainty_decay=1e-4)
    assert RewardShaping.from_dict(json.loads(json.dumps(shaping.to_dict()))) == shaping
    assert RewardShaping.from_dict({"scale": 2.0, "clip": None, "alpha": 1.0}) == RewardShaping(2.0)
    assert not RewardShaping(uncertainty=0.1).identity and RewardShaping().identity
    with pytest.raises(ConfigError, match="uncertainty_decay must be in"):
        RewardShaping(uncertainty=1.0, uncertainty_decay=1.0)


# ---------------------------------------------------------------- training
def test_bootstrap_keeps_whole_episodes_under_new_ids(pendulum_ds: TransitionDataset) -> None:
    boot = train_ens.bootstrap_episodes(pendulum_ds, np.random.default_rng(0))
    original = {e: pendulum_ds.obs[pendulum_ds.episode == e].tobytes() for e in np.unique(pendulum_ds.episode)}
    drawn = [boot.obs[boot.episode == e].tobytes() for e in np.unique(boot.episode)]
    assert np.array_equal(np.unique(boot.episode), np.arange(len(original)))  # as many draws, ids renumbered
    assert all(d in original.values() for d in drawn)  # whole episodes, as they were
    assert len(set(drawn)) < len(drawn)  # with replacement: some drawn twice (under distinct ids)


def test_train_ensemble_members_differ_and_never_see_held_out_episodes(
        pendulum_ds: TransitionDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[TransitionDataset] = []
    train = train_ens.train_reward_model

    def spy(datasets, *args, **kwargs):  # records what each member trains on, then trains it
        seen.extend(datasets)
        return train(datasets, *args, **kwargs)

    monkeypatch.setattr(train_ens, "train_reward_model", spy)
    cfg = TrainConfig(epochs=2, min_epoch_steps=5, val_frac=0.2)
    result = train_ens.train_ensemble([pendulum_ds], 3, cfg, ModelConfig(encoder=[8]), progress=False)
    ens = result.model
    assert isinstance(ens, RewardEnsemble) and ens.k == 3 and len(seen) == 3
    held_eps = ens.meta["training"]["validation_episodes"]["Pendulum-v1"]
    _, loop_held = pendulum_ds.split_by_episode(0.2, seed=split_seed("Pendulum-v1", 0))
    assert held_eps == np.unique(loop_held.episode).tolist()  # what one model trained with cfg holds out
    held = {tuple(r) for r in pendulum_ds.obs[np.isin(pendulum_ds.episode, held_eps)]}
    for ds in seen:
        assert not held & {tuple(r) for r in ds.obs}
    assert len({tuple(ds.obs[:, 0].round(6)) for ds in seen}) == 3  # each its own bootstrap
    w = [next(m.parameters()) for m in ens.members]
    assert not torch.equal(w[0], w[1])  # own initialization
    row = result.metrics["Pendulum-v1"]
    assert row["n_val"] == len(loop_held) and row["member_std"] > 0 and np.isfinite(row["mse"])


@pytest.mark.parametrize("k", [0, -1])
def test_train_ensemble_refuses_fewer_than_one_member(pendulum_ds: TransitionDataset, k: int) -> None:
    with pytest.raises(ConfigError, match=f"expected a member count of at least 1, got {k}"):
        train_ens.train_ensemble([pendulum_ds], k)
