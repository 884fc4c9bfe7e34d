"""Task families (envs/families.yaml): shipped reward functions (rlrm.rewards), applied offline by labels.apply and
online by Task.make_env; the rlrm/PointGoal-v0 env; the cartpole_wander behaviour policy; file: partial labels."""

from __future__ import annotations

import importlib.util
import multiprocessing
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import SubprocVecEnv

from rlrm import rewards
from rlrm.data import labels
from rlrm.data.behaviour import builtin_policy
from rlrm.data.dataset import TransitionDataset
from rlrm.data.rollout import collect
from rlrm.errors import ConfigError, LabelError, TaskError
from rlrm.rewards.online import TaskReward
from rlrm.rl.envs import make_vec_env
from rlrm.tasks import Catalog, load_catalog

pytestmark = pytest.mark.filterwarnings("ignore:MuJoCo:RuntimeWarning")

FAMILIES = ["cartpole_position", "cheetah_velocity", "point_goal"]
#: one task per family whose env needs no optional extra, plus a HalfCheetah one when MuJoCo is installed
ONLINE_TASKS = ["CartPole-v1/x0.5", "PointGoal-v0/goal045",
                pytest.param("HalfCheetah-v5/vel-1", marks=pytest.mark.skipif(
                    importlib.util.find_spec("mujoco") is None, reason="needs mujoco"))]


def _needs_env(env_id: str) -> None:
    if env_id.startswith("HalfCheetah"):
        pytest.importorskip("mujoco")


def _row(batch: Any, i: int) -> Any:
    """Row ``i`` of a batch as a batch of one (dicts of arrays stay dicts)."""
    if isinstance(batch, dict):
        return {k: np.asarray(v)[i:i + 1] for k, v in batch.items()}
    return np.asarray(batch)[i:i + 1]


def _one(x: Any) -> Any:
    """A single observation as a batch of one."""
    if isinstance(x, dict):
        return {k: np.asarray(v)[None] for k, v in x.items()}
    return np.asarray(x)[None]


# --------------------------------------------------------------------------- the families in the catalog
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_task_parses_and_makes_a_wrapped_env(catalog: Catalog, family: str) -> None:
    tasks = catalog.suite(family) + catalog.suite(f"{family}_heldout")
    assert len(catalog.suite(family)) >= 5
    for task in tasks:
        name, _ = rewards.parse_spec(task.labeler)
        assert name == family, task
        _needs_env(task.env_id)
        env = task.make_env()
        try:
            assert isinstance(env, TaskReward)
            obs, _ = env.reset(seed=0)
            next_obs, r, terminated, _, info = env.step(env.action_space.sample())
            expected = rewards.reward_function(task.labeler)(_one(obs), None, _one(next_obs), np.array([terminated]))
            if family != "cheetah_velocity":  # the cheetah's reward also needs the action, checked below
                assert r == pytest.approx(float(expected[0]))
            assert "env_reward" in info
        finally:
            env.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_held_out_targets_lie_between_training_targets(catalog: Catalog, family: str) -> None:
    def targets(suite: str) -> set[tuple[float, ...]]:
        return {tuple(rewards.parse_spec(t.labeler)[1].values()) for t in catalog.suite(suite)}

    train, held = targets(family), targets(f"{family}_heldout")
    assert held and not held & train
    low, high = np.min(list(train), axis=0), np.max(list(train), axis=0)
    assert all(np.all(low <= np.array(t)) and np.all(np.array(t) <= high) for t in held)  # interpolation


def test_an_unknown_rlrm_labeler_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(LabelError) as err:
        rewards.reward_function("rlrm:cartpole_positoin(target=1)")
    msg = str(err.value)
    assert "\n" not in msg and "'rlrm:cartpole_positoin(target=1)'" in msg and "rlrm:cartpole_position(" in msg
    for bad, words in [("rlrm:cartpole_position", "missing ['target']"),
                       ("rlrm:cartpole_position(target=1, speed=2)", "unexpected ['speed']"),
                       ("rlrm:cartpole_position(target=fast)", "expected a number"),
                       ("rlrm:point_goal(x=1, x=2)", "given twice"), ("rlrm:point_goal(x=1", "expected 'rlrm:NAME")]:
        with pytest.raises(LabelError, match=r"^labeler .*" + re.escape(words)):
            rewards.reward_function(bad)
    path = tmp_path / "tasks.yaml"
    path.write_text("tasks:\n  mine:\n    env_id: CartPole-v1\n    labeler: rlrm:nope(target=1)\n")
    with pytest.raises(TaskError) as err:
        load_catalog([path])
    msg = str(err.value)
    assert str(path) in msg and "'mine'" in msg and "unknown reward function 'nope'" in msg and "\n" not in msg


def test_true_reward_fn_of_each_kind_of_labeler() -> None:
    assert rewards.true_reward_fn("rlrm:point_goal(x=1, y=0)", "rlrm/PointGoal-v0") is not None
    assert rewards.true_reward_fn("env", "Pendulum-v1") is not None
    assert rewards.true_reward_fn("env", "CartPole-v1") is not None
    assert rewards.true_reward_fn("env", "HalfCheetah-v5") is None  # its reward uses x before/after, not in obs
    assert rewards.true_reward_fn("python:mod:fn", "Pendulum-v1") is None
    assert rewards.true_reward_fn("file:labels.csv", "Pendulum-v1") is None


# --------------------------------------------------------------------------- offline = online = env reward
def test_known_env_rewards_match_the_env(catalog: Catalog) -> None:
    for env_id, steps in [("Pendulum-v1", 600), ("CartPole-v1", 300), ("rlrm/PointGoal-v0", 300)]:
        ds = collect(catalog.task(env_id), steps, n_envs=3, seed=1, progress=False)
        fn = rewards.known_env_reward(env_id)
        assert fn is not None
        got = fn(ds.obs, ds.action, ds.next_obs, ds.terminated)
        assert got.shape == (len(ds),) and got.dtype == np.float64
        np.testing.assert_allclose(got, ds.env_reward, atol=1e-5, err_msg=env_id)
    assert ds.env_reward.std() > 0.1  # the point env's reward varies: the comparison can fail


@pytest.mark.parametrize("name", ONLINE_TASKS)
def test_offline_labels_equal_the_online_task_reward(catalog: Catalog, name: str) -> None:
    task = catalog.task(name)
    ds = collect(task, 240, n_envs=2, seed=3, progress=False)
    assert ds.label_source == task.labeler
    # env_reward was recorded through Task.make_env, so it is the labeler applied online
    np.testing.assert_allclose(ds.label, ds.env_reward, rtol=1e-6, atol=1e-6)
    direct = rewards.reward_function(task.labeler)(ds.obs, ds.action, ds.next_obs, ds.terminated)
    np.testing.assert_allclose(labels.apply(ds.with_labels(np.zeros(len(ds)), "zeros"), task.labeler).label,
                               direct, rtol=1e-6, atol=1e-6)
    assert np.ptp(direct) > 0.01  # the labels vary, so equal columns are not a coincidence


@pytest.mark.parametrize("name", ["CartPole-v1/x0.5", "PointGoal-v0/goal045"])
def test_monitor_returns_are_the_summed_labeler_rewards(catalog: Catalog, name: str) -> None:
    task = catalog.task(name)
    fn = rewards.reward_function(task.labeler)
    venv = make_vec_env(task, n_envs=2, seed=0)
    venv.action_space.seed(0)
    obs = venv.reset()
    sums, checked = np.zeros(2), 0
    try:
        for _ in range(220):
            actions = np.stack([venv.action_space.sample() for _ in range(2)])
            next_obs, _, dones, infos = venv.step(actions)
            for i in range(2):
                after = _one(infos[i]["terminal_observation"]) if dones[i] else _row(next_obs, i)
                terminated = dones[i] and not infos[i].get("TimeLimit.truncated", False)
                sums[i] += fn(_row(obs, i), actions[i:i + 1], after, np.array([terminated]))[0]
                if dones[i]:
                    assert infos[i]["episode"]["r"] == pytest.approx(sums[i], abs=1e-4)
                    sums[i], checked = 0.0, checked + 1
            obs = next_obs
    finally:
        venv.close()
    assert checked >= 2


# --------------------------------------------------------------------------- the point env
def test_point_env_dict_observations_through_collect(catalog: Catalog, tmp_path: Path) -> None:
    env = gym.make("rlrm/PointGoal-v0")
    first = [env.reset(seed=7)[0]["position"] for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], env.reset(seed=8)[0]["position"])
    ds = collect(catalog.task("PointGoal-v0/goal000"), 400, n_envs=2, seed=0, progress=False)
    assert set(ds.obs) == {"position", "velocity"} and ds.obs["position"].shape == (400, 2)
    assert ds.truncated.sum() == 4 and not ds.terminated.any()  # 100-step episodes
    assert np.ptp(ds.obs["position"], axis=0).min() > 2.0  # random starts spread over the [-2, 2]^2 arena
    back = TransitionDataset.load(ds.save(tmp_path / "point"))
    np.testing.assert_array_equal(back.next_obs["velocity"], ds.next_obs["velocity"])
    np.testing.assert_array_equal(back.label, ds.label)


def _make_point_env() -> gym.Env:
    return load_catalog().task("PointGoal-v0/goal090").make_env()


def test_point_env_in_subprocess_workers() -> None:
    """A fresh worker process finds rlrm/PointGoal-v0 through rlrm.tasks (SubprocVecEnv, forkserver)."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    venv = SubprocVecEnv([_make_point_env], start_method=method)
    try:
        venv.reset()
        _, reward, _, _ = venv.step(np.zeros((1, 2), np.float32))
        assert reward.shape == (1,) and reward[0] < 0
    finally:
        venv.close()


# --------------------------------------------------------------------------- file: partial labels
def test_a_label_file_for_some_transitions_keeps_only_those(catalog: Catalog, tmp_path: Path) -> None:
    ds = collect(catalog.task("CartPole-v1/x-1"), 300, n_envs=2, seed=0, progress=False)
    keep = np.arange(len(ds)) % 3 == 0
    path = tmp_path / "some.csv"
    labels.write_label_file(path, ds.subset(keep), np.arange(keep.sum(), dtype=np.float32))
    got = labels.apply(ds, f"file:{path}")
    assert len(got) == keep.sum() and got.label_source == f"file:{path}"
    np.testing.assert_array_equal(got.label, np.arange(keep.sum()))
    np.testing.assert_array_equal(got.step, ds.step[keep])
    np.testing.assert_array_equal(got.obs, ds.obs[keep])
    path.write_text("episode,step,label\n")
    with pytest.raises(LabelError, match="no row labels a transition"):
        labels.apply(ds, f"file:{path}")


# --------------------------------------------------------------------------- behaviour policy and the CLI
def test_cartpole_wander_covers_the_track_with_the_pole_up(catalog: Catalog) -> None:
    task = catalog.task("CartPole-v1/x0")
    ds = collect(task, 4000, builtin_policy("rlrm:cartpole_wander", task, 4, 0), n_envs=4, seed=0,
                 progress=False)
    x = ds.next_obs[:, 0]
    assert x.max() > 1.0 and x.min() < -1.0 and np.mean(np.abs(x) > 1.0) > 0.05
    assert ds.terminated.sum() <= 2  # episodes run to the 500-step limit
    random = collect(task, 4000, n_envs=4, seed=0, progress=False)
    assert np.mean(np.abs(random.next_obs[:, 0]) > 1.0) < 0.01  # what the policy is for


def test_bad_behaviour_policies_are_config_errors(catalog: Catalog) -> None:
    with pytest.raises(ConfigError, match=r"unknown behaviour policy 'nope'.*rlrm:cartpole_wander"):
        builtin_policy("rlrm:nope", catalog.task("CartPole-v1"), 2, 0)
    with pytest.raises(ConfigError, match=r"unexpected \['speed'\]"):
        builtin_policy("rlrm:cartpole_wander(speed=1)", catalog.task("CartPole-v1"), 2, 0)
    with pytest.raises(ConfigError, match=r"PointGoal-v0/goal000.*expected CartPole"):
        builtin_policy("rlrm:cartpole_wander", catalog.task("PointGoal-v0/goal000"), 2, 0)


def test_collect_cli_with_a_family_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rlrm import collect as collect_cli

    out = tmp_path / "data"
    code = collect_cli.entry(["--suite", "cartpole_position", "--steps", "120", "--n-envs", "2", "--out", str(out),
                              "--policy", "rlrm:cartpole_wander(epsilon=0.2)", "--no-progress"])
    assert code == 0
    dirs = sorted(p.name for p in out.iterdir())
    assert len(dirs) == 7 and "CartPole-v1__x-1.5" in dirs
    ds = TransitionDataset.load(out / "CartPole-v1__x1.5")
    assert ds.label_source == "rlrm:cartpole_position(target=1.5)" and ds.info["policy"].startswith("rlrm:")
    np.testing.assert_allclose(ds.label, rewards.reward_function(ds.label_source)(
        ds.obs, ds.action, ds.next_obs, ds.terminated), rtol=1e-6)
    capsys.readouterr()
    assert collect_cli.entry(["--suite", "cartpole_position", "--steps", "10", "--out", str(tmp_path / "x"),
                              "--policy", "rlrm:nope", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--policy" in err and "unknown behaviour policy" in err and "\n" not in err
