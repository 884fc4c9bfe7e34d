"""rlrm.data: collection, the on-disk dataset format (round trips, precise load errors, atomic saves), splits."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from rlrm import atomic
from rlrm import spaces as sp
from rlrm.data import dataset
from rlrm.data.dataset import FORMAT_VERSION, MANIFEST, TransitionDataset, find_datasets
from rlrm.data.rollout import collect
from rlrm.errors import ConfigError, DatasetError, RlrmError
from rlrm.tasks import Task

DICT_ENV_ID = "RlrmTestDictObs-v0"


class DictObsEnv(gym.Env):
    """A tiny env with a Dict observation (float Box, Discrete, MultiBinary, int Box) and a Discrete action."""

    observation_space = spaces.Dict({
        "pos": spaces.Box(-10.0, 10.0, (2,), np.float32),
        "mode": spaces.Discrete(3),
        "bits": spaces.MultiBinary(2),
        "count": spaces.Box(0, 5, (1,), np.int64),
    })
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        self.pos = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._obs(), {}

    def _obs(self) -> dict[str, Any]:
        return {"pos": self.pos.copy(), "mode": int(self.t % 3),
                "bits": np.array([self.t % 2, 1], np.int8), "count": np.array([min(self.t, 5)], np.int64)}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.t += 1
        self.pos += np.float32(0.1 if action == 1 else -0.1)
        terminated = bool(abs(self.pos[0]) > 1.5)
        return self._obs(), float(self.pos.sum()), terminated, self.t >= 12, {}


@pytest.fixture(scope="module")
def dict_ds() -> TransitionDataset:
    if DICT_ENV_ID not in gym.registry:
        gym.register(DICT_ENV_ID, entry_point=DictObsEnv)
    return collect(Task("dict-task", DICT_ENV_ID), 150, n_envs=3, seed=1, progress=False)


def _assert_same(a: TransitionDataset, b: TransitionDataset) -> None:
    assert a.task == b.task
    assert a.obs_space == b.obs_space and a.action_space == b.action_space
    for prefix, space in (("obs", a.obs_space), ("action", a.action_space), ("next_obs", a.obs_space)):
        xa, xb = sp.split(space, getattr(a, prefix), prefix), sp.split(space, getattr(b, prefix), prefix)
        assert xa.keys() == xb.keys()
        for k in xa:
            np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)
            assert np.asarray(xa[k]).dtype == np.asarray(xb[k]).dtype, k
    for name in ("terminated", "truncated", "label", "env_reward", "episode", "step"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
    assert a.label_source == b.label_source
    assert a.info == b.info


# --------------------------------------------------------------------------- collection
def test_collect_gives_sorted_consistent_transitions(cartpole_ds: TransitionDataset) -> None:
    ds = cartpole_ds
    assert len(ds) == 2000
    assert ds.obs.shape == (2000, 4) and ds.action.shape == (2000,) and ds.action.dtype.kind == "i"
    assert ds.n_episodes > 20
    order = np.lexsort((ds.step, ds.episode))
    np.testing.assert_array_equal(order, np.arange(len(ds)))
    np.testing.assert_array_equal(ds.label, ds.env_reward)
    same = ds.episode[1:] == ds.episode[:-1]
    # inside an episode, next_obs of one step is the obs of the next step
    np.testing.assert_array_equal(ds.next_obs[:-1][same], ds.obs[1:][same])
    assert ds.terminated.any()
    assert not np.any(ds.terminated & ds.truncated)


def test_pendulum_episodes_are_truncated_at_200(pendulum_ds: TransitionDataset) -> None:
    ds = pendulum_ds
    assert not ds.terminated.any()
    np.testing.assert_array_equal(ds.step[ds.truncated], 199)
    assert ds.n_episodes == 12  # 4 envs x (2 x 200 + 100 cut by the budget)


def test_collect_is_deterministic_for_a_seed(catalog) -> None:
    task = catalog.task("CartPole-v1")
    a, b = (collect(task, 300, n_envs=2, seed=7, progress=False) for _ in range(2))
    _assert_same(a, b)
    c = collect(task, 300, n_envs=2, seed=8, progress=False)
    assert not np.array_equal(a.obs, c.obs)


@pytest.mark.parametrize("steps, n_envs", [(0, 2), (10, 0)])
def test_collect_rejects_non_positive_budgets(catalog, steps: int, n_envs: int) -> None:
    with pytest.raises(ConfigError):
        collect(catalog.task("CartPole-v1"), steps, n_envs=n_envs, progress=False)


def test_collect_takes_a_policy_callable_not_a_spec_string(catalog) -> None:
    # a spec like "random" or "agent.zip" is the CLI's business (rlrm.rl.saved.agent_policy builds the callable)
    with pytest.raises(ConfigError, match="policy: expected a callable"):
        collect(catalog.task("CartPole-v1"), 10, "random", n_envs=2, progress=False)  # type: ignore[arg-type]


def test_collect_dict_observations(dict_ds: TransitionDataset) -> None:
    ds = dict_ds
    assert len(ds) == 150
    assert set(ds.obs) == {"pos", "mode", "bits", "count"}
    assert ds.obs["pos"].shape == (150, 2) and ds.obs["mode"].shape == (150,)
    assert ds.obs["bits"].shape == (150, 2) and ds.obs["count"].shape == (150, 1)
    assert ds.obs["count"].dtype == np.int64
    assert ds.truncated.any()
    same = ds.episode[1:] == ds.episode[:-1]
    np.testing.assert_array_equal(ds.next_obs["mode"][:-1][same], ds.obs["mode"][1:][same])
    # the terminal observation (not the reset one) is the next_obs of a finished episode
    ends = np.flatnonzero(ds.truncated)
    np.testing.assert_array_equal(ds.next_obs["mode"][ends], 12 % 3)


class NestedObsEnv(DictObsEnv):
    """Like :class:`DictObsEnv`, with a Tuple nested inside the Dict observation."""

    observation_space = spaces.Dict({"pos": spaces.Box(-10.0, 10.0, (2,), np.float32),
                                     "inner": spaces.Tuple((spaces.Discrete(3), spaces.MultiBinary(2)))})

    def _obs(self) -> dict[str, Any]:
        return {"pos": self.pos.copy(), "inner": (int(self.t % 3), np.array([self.t % 2, 1], np.int8))}


def test_collect_nested_observations_works_or_is_an_rlrm_error() -> None:
    """rlrm.spaces adapts nested Dict/Tuple spaces; collection must not die with a third-party exception."""
    env_id = "RlrmTestNestedObs-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=NestedObsEnv)
    try:
        ds = collect(Task("nested-task", env_id), 40, n_envs=2, seed=0, progress=False)
    except RlrmError as err:
        assert "nested" in str(err).lower() or "Tuple" in str(err)
        return
    assert ds.obs["inner"][0].shape == (40,)


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fixture", ["cartpole_ds", "pendulum_ds", "dict_ds"])
def test_save_load_round_trip(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    ds: TransitionDataset = request.getfixturevalue(fixture)
    path = ds.save(tmp_path / "ds")
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["n_transitions"] == len(ds) and manifest["n_episodes"] == ds.n_episodes
    assert "rlrm_version" in manifest and manifest["task"]["name"] == ds.task.name
    _assert_same(ds, TransitionDataset.load(path))
    _assert_same(ds, TransitionDataset.load(path, mmap=True))
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"]  # no temp leftovers


def test_dict_dataset_stores_one_file_per_leaf(dict_ds: TransitionDataset, tmp_path: Path) -> None:
    path = dict_ds.save(tmp_path / "ds")
    files = {p.name for p in path.iterdir()}
    assert {"obs.pos.npy", "obs.mode.npy", "obs.bits.npy", "obs.count.npy", "next_obs.pos.npy",
            "action.npy", "label.npy", MANIFEST} <= files


def test_save_overwrites_an_existing_dataset(cartpole_ds: TransitionDataset, pendulum_ds: TransitionDataset,
                                             tmp_path: Path) -> None:
    pendulum_ds.save(tmp_path / "ds")
    cartpole_ds.save(tmp_path / "ds")
    _assert_same(cartpole_ds, TransitionDataset.load(tmp_path / "ds"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_find_datasets_accepts_a_dataset_or_a_folder_of_them(cartpole_ds, pendulum_ds, tmp_path: Path) -> None:
    a = cartpole_ds.save(tmp_path / "data" / "a")
    b = pendulum_ds.save(tmp_path / "data" / "b")
    assert find_datasets([tmp_path / "data"]) == [a, b]
    assert find_datasets([b]) == [b]
    with pytest.raises(DatasetError):
        find_datasets([tmp_path / "missing"])


# --------------------------------------------------------------------------- nothing half-written
def test_failing_save_leaves_no_target_dir(cartpole_ds: TransitionDataset, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Any, obj: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "write_json", broken)
    with pytest.raises(DatasetError, match=r"/ds: cannot write the dataset: No space left on device"):
        cartpole_ds.save(tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


def test_failing_save_keeps_the_previous_dataset(cartpole_ds: TransitionDataset, pendulum_ds: TransitionDataset,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pendulum_ds.save(tmp_path / "ds")
    calls = []

    def broken_save(file: Any, arr: Any) -> None:
        calls.append(file)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        with open(file, "wb") as f:
            np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)

    monkeypatch.setattr(dataset, "_save_npy", broken_save)
    with pytest.raises(DatasetError, match="No space left on device"):
        cartpole_ds.save(tmp_path / "ds")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    _assert_same(pendulum_ds, TransitionDataset.load(tmp_path / "ds"))


# --------------------------------------------------------------------------- load errors
@pytest.fixture
def saved(cartpole_ds: TransitionDataset, tmp_path: Path) -> Path:
    return cartpole_ds.save(tmp_path / "cartpole")


def _load_error(path: Path, mmap: bool = False) -> str:
    with pytest.raises(DatasetError) as err:
        TransitionDataset.load(path, mmap=mmap)
    return str(err.value)


def test_missing_dir(tmp_path: Path) -> None:
    msg = _load_error(tmp_path / "nope")
    assert str(tmp_path / "nope") in msg and "not found" in msg


def test_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    msg = _load_error(tmp_path / "empty")
    assert str(tmp_path / "empty") in msg and "empty" in msg


def test_file_instead_of_dir(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert "file" in _load_error(tmp_path / "f")


def test_dir_without_manifest(saved: Path) -> None:
    (saved / MANIFEST).unlink()
    assert MANIFEST in _load_error(saved)


def _edit_manifest(path: Path, **changes: Any) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_newer_format_version(saved: Path) -> None:
    _edit_manifest(saved, format_version=99)
    msg = _load_error(saved)
    assert str(saved / MANIFEST) in msg and "format_version" in msg and "99" in msg and "upgrade" in msg


@pytest.mark.parametrize("change, words", [
    ({"format": "something.else"}, ["format", "something.else"]),
    ({"format_version": "1"}, ["format_version"]),
    ({"obs_space": {"type": "Nope"}}, ["Nope"]),
])
def test_bad_manifest_fields(saved: Path, change: dict, words: list[str]) -> None:
    _edit_manifest(saved, **change)
    msg = _load_error(saved)
    assert MANIFEST in msg
    assert all(w in msg for w in words), msg


def test_manifest_missing_a_field(saved: Path) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    del manifest["action_space"]
    (saved / MANIFEST).write_text(json.dumps(manifest))
    assert "action_space" in _load_error(saved)


def test_manifest_not_json(saved: Path) -> None:
    (saved / MANIFEST).write_text("{not json")
    msg = _load_error(saved)
    assert MANIFEST in msg and "JSON" in msg


def test_npy_with_wrong_shape_names_the_field(saved: Path, cartpole_ds: TransitionDataset) -> None:
    np.save(saved / "obs.npy", np.zeros((len(cartpole_ds), 5), np.float32))
    msg = _load_error(saved)
    assert "'obs'" in msg and "(2000, 4)" in msg and "(2000, 5)" in msg


def test_npy_with_wrong_row_count_names_the_file(saved: Path) -> None:
    np.save(saved / "action.npy", np.zeros(10, np.int64))
    msg = _load_error(saved)
    assert str(saved / "action.npy") in msg and "'action'" in msg


def test_npy_with_wrong_dtype_names_the_field(saved: Path, cartpole_ds: TransitionDataset) -> None:
    np.save(saved / "episode.npy", cartpole_ds.episode.astype(np.float64))
    msg = _load_error(saved)
    assert "episode.npy" in msg and "'episode'" in msg and "int64" in msg


def test_missing_npy_names_the_file(saved: Path) -> None:
    (saved / "next_obs.npy").unlink()
    msg = _load_error(saved)
    assert "next_obs.npy" in msg and "missing" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_label_names_the_field(saved: Path, cartpole_ds: TransitionDataset, bad: float) -> None:
    label = cartpole_ds.label.copy()
    label[17] = bad
    np.save(saved / "label.npy", label)
    msg = _load_error(saved)
    assert "'label'" in msg and "non-finite" in msg and "row 17" in msg


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("damage", ["truncated-data", "truncated-header", "garbage", "empty", "pickle"])
def test_unreadable_npy_names_the_file(saved: Path, cartpole_ds: TransitionDataset, damage: str, mmap: bool) -> None:
    file = saved / "obs.npy"
    data = file.read_bytes()
    if damage == "truncated-data":
        file.write_bytes(data[:len(data) // 2])
    elif damage == "truncated-header":
        file.write_bytes(data[:30])
    elif damage == "garbage":
        file.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif damage == "empty":
        file.write_bytes(b"")
    else:
        np.save(file, np.array([object()] * len(cartpole_ds)), allow_pickle=True)
    msg = _load_error(saved, mmap=mmap)
    assert str(file) in msg and "'obs'" in msg


def test_unsorted_episode_steps_are_rejected(saved: Path, cartpole_ds: TransitionDataset) -> None:
    step = cartpole_ds.step.copy()
    step[5] += 3
    np.save(saved / "step.npy", step)
    assert "'episode'/'step'" in _load_error(saved)


# --------------------------------------------------------------------------- in-memory checks
def test_from_arrays_sorts_by_episode_and_step(pendulum_ds: TransitionDataset) -> None:
    rev = pendulum_ds.subset(np.arange(len(pendulum_ds))[::-1])
    ds = TransitionDataset.from_arrays(rev.task, rev.obs_space, rev.action_space, obs=rev.obs, action=rev.action,
                                       next_obs=rev.next_obs, terminated=rev.terminated, truncated=rev.truncated,
                                       episode=rev.episode, step=rev.step, env_reward=rev.env_reward)
    np.testing.assert_array_equal(ds.obs, pendulum_ds.obs)
    np.testing.assert_array_equal(ds.label, pendulum_ds.label)


def test_with_labels_checks_shape_and_finiteness(pendulum_ds: TransitionDataset) -> None:
    with pytest.raises(DatasetError, match="shape"):
        pendulum_ds.with_labels(np.zeros(3), "test")
    bad = np.zeros(len(pendulum_ds))
    bad[4] = np.nan
    with pytest.raises(DatasetError, match="non-finite"):
        pendulum_ds.with_labels(bad, "test")
    ok = pendulum_ds.with_labels(np.ones(len(pendulum_ds)), "ones")
    assert ok.label_source == "ones" and ok.label.dtype == np.float32
    assert pendulum_ds.label_source == "env"  # the original is untouched


# --------------------------------------------------------------------------- splits
@pytest.mark.parametrize("val_frac", [0.1, 0.25, 0.5])
def test_split_by_episode_never_splits_an_episode(cartpole_ds: TransitionDataset, val_frac: float) -> None:
    train, val = cartpole_ds.split_by_episode(val_frac, seed=3)
    assert len(train) + len(val) == len(cartpole_ds)
    assert not set(train.episode.tolist()) & set(val.episode.tolist())
    for part in (train, val):
        for ep in np.unique(part.episode):
            assert (part.episode == ep).sum() == (cartpole_ds.episode == ep).sum()
    n_eps = cartpole_ds.n_episodes
    assert val.n_episodes == round(n_eps * val_frac)
    assert abs(len(val) / len(cartpole_ds) - val_frac) < 0.1
    part_val = cartpole_ds.subset(np.isin(cartpole_ds.episode, val.episode))
    np.testing.assert_array_equal(val.obs, part_val.obs)  # order kept


def test_split_is_seeded(cartpole_ds: TransitionDataset) -> None:
    a, b, c = (cartpole_ds.split_by_episode(0.2, seed=s)[1] for s in (1, 1, 2))
    np.testing.assert_array_equal(a.episode, b.episode)
    assert not np.array_equal(a.episode, c.episode)


def test_split_edge_cases(pendulum_ds: TransitionDataset) -> None:
    train, val = pendulum_ds.split_by_episode(0.0)
    assert len(train) == len(pendulum_ds) and len(val) == 0
    train, val = pendulum_ds.split_by_episode(0.01)  # rounds to 0 episodes, but a fraction asked for one
    assert val.n_episodes == 1 and train.n_episodes == pendulum_ds.n_episodes - 1
    train, val = pendulum_ds.split_by_episode(0.99)  # training keeps at least one episode
    assert train.n_episodes == 1
    with pytest.raises(DatasetError, match="val_frac"):
        pendulum_ds.split_by_episode(1.0)


# --------------------------------------------------------------------------- joining datasets of one task
def test_concat_keeps_every_row_and_each_part_its_own_episodes(dict_ds: TransitionDataset, tmp_path: Path) -> None:
    first, second = dict_ds.subset(dict_ds.episode < 3), dict_ds.subset(dict_ds.episode >= 3)
    second = replace(second, label_source="file:human.csv", episode_seed=None)
    joined = dataset.concat([second, first, second])  # the same part twice: its episodes must not merge
    assert len(joined) == 2 * len(second) + len(first)
    assert joined.n_episodes == 2 * second.n_episodes + first.n_episodes
    assert joined.label_source == "file:human.csv+env" and joined.episode_seed is None
    np.testing.assert_array_equal(joined.obs["pos"][:len(second)], second.obs["pos"])
    np.testing.assert_array_equal(joined.label[-len(second):], second.label)
    joined.validate("joined")  # sorted by (episode, step), consistent leaves
    assert len(TransitionDataset.load(joined.save(tmp_path / "joined"))) == len(joined)
    both = dataset.concat([first, dict_ds.subset(dict_ds.episode >= 3)])
    assert both.episode_seed is not None and both.n_episodes == dict_ds.n_episodes


def test_concat_refuses_datasets_of_different_tasks(cartpole_ds: TransitionDataset,
                                                    pendulum_ds: TransitionDataset) -> None:
    with pytest.raises(DatasetError, match="expected datasets of one task"):
        dataset.concat([cartpole_ds, pendulum_ds])
