"""PreferenceDataset: folder format, checks against its transitions, JSONL exchange; episode seeds for replay."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import (
    EQUAL,
    LEFT,
    RIGHT,
    PreferenceDataset,
    SegmentPairs,
    read_preference_file,
    write_preference_file,
)
from rlrm.data.rollout import collect, episode_seed, replay_episode
from rlrm.data.teachers import make_preferences, sample_pairs
from rlrm.errors import DatasetError, LabelError
from rlrm.tasks import Catalog


def _episode_table(ds: TransitionDataset) -> dict[int, int]:
    episodes, counts = np.unique(ds.episode, return_counts=True)
    return dict(zip(episodes.tolist(), counts.tolist()))


def _same(a: PreferenceDataset, b: PreferenceDataset) -> None:
    for name in ("left_episode", "left_start", "right_episode", "right_start", "length"):
        assert np.array_equal(getattr(a.pairs, name), getattr(b.pairs, name)), name
    assert np.array_equal(a.label, b.label) and a.source_words() == b.source_words() and a.task_name == b.task_name


@pytest.fixture
def saved(tmp_path: Path, cartpole_ds: TransitionDataset) -> tuple[Path, Path, PreferenceDataset]:
    """The CartPole dataset and 80 oracle preferences saved side by side under ``tmp_path/work``."""
    work = tmp_path / "work"
    cartpole_ds.save(work / "ds")
    prefs = make_preferences(cartpole_ds, cartpole_ds.label, 80, 8, "mistake:eps=0.3", seed=0)
    prefs.save(work / "prefs", work / "ds")
    return work / "ds", work / "prefs", prefs


def _mixed(ds: TransitionDataset) -> PreferenceDataset:
    """Three hand-made pairs of different lengths (the last one ends exactly at an episode end)."""
    table = _episode_table(ds)
    long_eps = [e for e, c in table.items() if c >= 12]
    e0, e1 = long_eps[0], long_eps[1]
    pairs = SegmentPairs.from_arrays([e0, e1, e0], [0, 2, table[e0] - 5], [e1, e0, e1], [3, 0, 0], [4, 7, 5])
    return PreferenceDataset.from_pairs(ds, pairs, ["left", "equal", "right"], ["human:a", "teacher:oracle",
                                                                                "human:a"])


# --------------------------------------------------------------------------- folder format
def test_save_load_round_trip(saved: tuple[Path, Path, PreferenceDataset]) -> None:
    ds_dir, pref_dir, prefs = saved
    manifest = json.loads((pref_dir / "manifest.json").read_text())
    assert manifest["format"] == "rlrm.preferences" and manifest["labels"] == ["left", "right", "equal"]
    assert manifest["dataset"]["path"] == "../ds" and manifest["task"] == "CartPole-v1"
    assert manifest["sources"] == ["teacher:mistake:eps=0.3"] and manifest["n_pairs"] == 80
    loaded = PreferenceDataset.load(pref_dir)
    _same(loaded, prefs)
    assert loaded.label.dtype == np.int8 and loaded.dataset_dir.resolve() == ds_dir.resolve()
    rewards = TransitionDataset.load(ds_dir).label
    assert np.array_equal(loaded.segment_returns(rewards)[1], prefs.segment_returns(rewards)[1])


def test_load_with_the_dataset_in_memory(saved: tuple[Path, Path, PreferenceDataset],
                                         cartpole_ds: TransitionDataset, acrobot_ds: TransitionDataset) -> None:
    _, pref_dir, prefs = saved
    _same(PreferenceDataset.load(pref_dir, dataset=cartpole_ds), prefs)
    with pytest.raises(DatasetError, match=r"task 'CartPole-v1'.*task 'Acrobot-v1'"):
        PreferenceDataset.load(pref_dir, dataset=acrobot_ds)


def test_moving_both_folders_together_keeps_working(saved: tuple[Path, Path, PreferenceDataset],
                                                    tmp_path: Path) -> None:
    ds_dir, _, prefs = saved
    moved = tmp_path / "elsewhere"
    shutil.move(str(ds_dir.parent), moved)
    _same(PreferenceDataset.load(moved / "prefs"), prefs)
    # moving the preferences alone falls back to the dataset's absolute path... which moved too: a clear error
    shutil.move(str(moved / "prefs"), tmp_path / "alone")
    with pytest.raises(DatasetError, match=r"manifest.json: field 'dataset': the transition dataset is missing"):
        PreferenceDataset.load(tmp_path / "alone")


def test_moving_the_preferences_alone_uses_the_absolute_path(saved: tuple[Path, Path, PreferenceDataset],
                                                             tmp_path: Path) -> None:
    _, pref_dir, prefs = saved
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.move(str(pref_dir), tmp_path / "a" / "b" / "prefs")
    _same(PreferenceDataset.load(tmp_path / "a" / "b" / "prefs"), prefs)


def test_a_changed_dataset_is_detected(saved: tuple[Path, Path, PreferenceDataset],
                                       cartpole_ds: TransitionDataset) -> None:
    ds_dir, pref_dir, _ = saved
    cartpole_ds.subset(slice(0, 1000)).save(ds_dir)
    with pytest.raises(DatasetError, match=r"manifest_sha256.*the dataset changed since the preferences were saved"):
        PreferenceDataset.load(pref_dir)


def _rewrite(pref_dir: Path, name: str, arr: np.ndarray) -> None:
    np.save(pref_dir / f"{name}.npy", arr, allow_pickle=False)


def test_bad_label_codes_and_segments_are_refused_on_load(saved: tuple[Path, Path, PreferenceDataset],
                                                          cartpole_ds: TransitionDataset) -> None:
    _, pref_dir, prefs = saved
    label = prefs.label.copy()
    label[7] = 5
    _rewrite(pref_dir, "label", label)
    with pytest.raises(DatasetError, match=r"field 'label': pair 7 has code 5; expected 0 \(left\)"):
        PreferenceDataset.load(pref_dir)
    _rewrite(pref_dir, "label", prefs.label)
    start = prefs.pairs.left_start.copy()
    ep = int(prefs.pairs.left_episode[3])
    start[3] = _episode_table(cartpole_ds)[ep] - 7  # length 8: one step past the episode end
    _rewrite(pref_dir, "left_start", start)
    with pytest.raises(DatasetError, match=rf"prefs: pair 3: left segment \(episode {ep}, .* expected start \+ "
                                           r"length <= \d+ \(a segment never crosses an episode end\)"):
        PreferenceDataset.load(pref_dir)
    start[3] = -1
    _rewrite(pref_dir, "left_start", start)
    with pytest.raises(DatasetError, match=r"pair 3: left start -1; expected a start >= 0"):
        PreferenceDataset.load(pref_dir)
    _rewrite(pref_dir, "left_start", prefs.pairs.left_start)
    right = prefs.pairs.right_episode.copy()
    right[0] = 10_000
    _rewrite(pref_dir, "right_episode", right)
    with pytest.raises(DatasetError, match=r"pair 0: right episode 10000 is not in the dataset"):
        PreferenceDataset.load(pref_dir)
    _rewrite(pref_dir, "right_episode", prefs.pairs.right_episode)
    _rewrite(pref_dir, "length", np.zeros(len(prefs), np.int64))
    with pytest.raises(DatasetError, match=r"pair 0: field 'length': got 0; expected a segment length >= 1"):
        PreferenceDataset.load(pref_dir)
    _rewrite(pref_dir, "length", np.full(len(prefs) - 1, 8, np.int64))
    with pytest.raises(DatasetError, match=r"length.npy: field 'length': expected 80 integers"):
        PreferenceDataset.load(pref_dir)


def test_bad_folders(tmp_path: Path, saved: tuple[Path, Path, PreferenceDataset]) -> None:
    with pytest.raises(DatasetError, match="preference folder not found"):
        PreferenceDataset.load(tmp_path / "nothing")
    _, pref_dir, prefs = saved
    manifest = json.loads((pref_dir / "manifest.json").read_text())
    (pref_dir / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DatasetError, match="format_version"):
        PreferenceDataset.load(pref_dir)
    unsaved = make_preferences(prefs_ds := TransitionDataset.load(saved[0]), prefs_ds.label, 5, 4, "oracle")
    with pytest.raises(DatasetError, match="without the folder of their transition dataset"):
        unsaved.save(tmp_path / "p")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="a file is in the way"):
        prefs.save(tmp_path / "file")


# --------------------------------------------------------------------------- segment helpers
def test_segment_rows_pad_mixed_lengths(cartpole_ds: TransitionDataset) -> None:
    prefs = _mixed(cartpole_ds)
    left, right = prefs.segment_rows()
    assert left.shape == right.shape == (3, 7)
    assert ((left >= 0) == (right >= 0)).all()
    assert (left >= 0).sum(1).tolist() == [4, 7, 5]
    for rows, side in ((left, "left"), (right, "right")):
        for i, row in enumerate(rows):
            row = row[row >= 0]
            assert (cartpole_ds.episode[row] == getattr(prefs.pairs, f"{side}_episode")[i]).all()
            assert (np.diff(cartpole_ds.step[row]) == 1).all()  # contiguous steps of one episode
            first = np.flatnonzero(cartpole_ds.episode == getattr(prefs.pairs, f"{side}_episode")[i])[0]
            assert row[0] == first + getattr(prefs.pairs, f"{side}_start")[i]
    rewards = np.random.default_rng(0).normal(size=len(cartpole_ds))
    r_left, r_right = prefs.segment_returns(rewards)
    assert np.allclose(r_left, np.where(left >= 0, rewards[left.clip(0)], 0).sum(1))
    assert np.allclose(r_right, np.where(right >= 0, rewards[right.clip(0)], 0).sum(1))
    assert prefs.label.tolist() == [LEFT, EQUAL, RIGHT] and prefs.label_targets().tolist() == [1.0, 0.5, 0.0]
    assert prefs.source_words() == ["human:a", "teacher:oracle", "human:a"]
    with pytest.raises(DatasetError, match=rf"expected \({len(cartpole_ds)},\)"):
        prefs.segment_returns(rewards[:-1])


def test_from_pairs_refuses_a_segment_crossing_an_episode_end(cartpole_ds: TransitionDataset) -> None:
    table = _episode_table(cartpole_ds)
    ep = next(iter(table))
    pairs = SegmentPairs.from_arrays([ep, ep], [0, table[ep] - 2], [ep, ep], [0, 0], 3)
    with pytest.raises(DatasetError, match=rf"pair 1: left segment \(episode {ep}, start {table[ep] - 2}, length 3\) "
                                           rf"ends at {table[ep] + 1} but episode {ep} has {table[ep]} steps"):
        PreferenceDataset.from_pairs(cartpole_ds, pairs, ["left", "left"], "human:x")
    with pytest.raises(LabelError, match="pair 0: label 'lft'"):
        PreferenceDataset.from_pairs(cartpole_ds, pairs.subset([0]), ["lft"], "human:x")


# --------------------------------------------------------------------------- JSONL
def test_jsonl_round_trip_is_identical(tmp_path: Path, cartpole_ds: TransitionDataset) -> None:
    prefs = _mixed(cartpole_ds)
    file = write_preference_file(tmp_path / "answers.jsonl", prefs)
    first = json.loads(file.read_text().splitlines()[0])
    assert set(first) == {"left", "right", "length", "label", "source"} and first["label"] == "left"
    back = read_preference_file(file, cartpole_ds)
    _same(back, prefs)
    assert back.info["blank_labels_skipped"] == 0
    # and via the folder format
    cartpole_ds.save(tmp_path / "ds")
    back.save(tmp_path / "prefs", tmp_path / "ds")
    _same(PreferenceDataset.load(tmp_path / "prefs", dataset=cartpole_ds), prefs)


def test_queries_are_exported_blank_and_answered_lines_imported(tmp_path: Path, cartpole_ds: TransitionDataset) -> None:
    prefs = make_preferences(cartpole_ds, cartpole_ds.label, 6, 5, "oracle", seed=0)
    queries = write_preference_file(tmp_path / "queries.jsonl", prefs.pairs)
    records = [json.loads(line) for line in queries.read_text().splitlines()]
    assert [r["label"] for r in records] == [""] * 6 and all("source" not in r for r in records)
    assert [json.loads(x)["label"] for x in
            write_preference_file(tmp_path / "q2.jsonl", prefs, with_labels=False).read_text().splitlines()] == [""] * 6
    with pytest.raises(LabelError, match=r"queries.jsonl: no answered pairs \(6 line\(s\) with a blank label\)"):
        read_preference_file(queries, cartpole_ds)
    records[1]["label"] = "Right"
    records[4]["label"] = "equal"
    del records[2]["label"]
    records[3]["label"] = None
    answered = tmp_path / "answered.jsonl"
    answered.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in records).encode() + b"\n\n")  # BOM
    got = read_preference_file(answered, cartpole_ds)
    assert len(got) == 2 and got.label.tolist() == [RIGHT, EQUAL]
    assert got.sources == ["human:answered.jsonl"] and got.info["blank_labels_skipped"] == 4
    assert got.pairs.left_start.tolist() == prefs.pairs.left_start[[1, 4]].tolist()


LINE = {"left": {"episode": 0, "start": 0}, "right": {"episode": 1, "start": 0}, "length": 2, "label": "left"}


@pytest.mark.parametrize(("line", "message"), [
    ({**LINE, "label": "better"}, r"bad.jsonl:2: field 'label': got \"better\"; expected one of 'left', 'right', "
                                  r"'equal'"),
    ({**LINE, "label": 1}, r"bad.jsonl:2: field 'label': got 1; expected one of"),
    ({**LINE, "length": 2.0}, r"bad.jsonl:2: field 'length': expected an integer, got 2.0"),
    ({**LINE, "left": {"episode": "0", "start": 0}}, r"bad.jsonl:2: left: field 'episode': expected an integer"),
    ({**LINE, "right": {"episode": 1, "start": True}}, r"bad.jsonl:2: right: field 'start': expected an integer"),
    ({**LINE, "right": {"episode": 1}}, r"bad.jsonl:2: right: field 'start' missing"),
    ({**LINE, "left": [0, 0]}, r"bad.jsonl:2: field 'left': expected an object"),
    ({**LINE, "length": 10_000}, r"bad.jsonl:2: left segment \(episode 0, start 0, length 10000\) ends at 10000"),
    ({**LINE, "length": 0}, r"bad.jsonl:2: field 'length': got 0; expected a segment length >= 1"),
    ({**LINE, "right": {"episode": 99_999, "start": 0}}, r"bad.jsonl:2: right episode 99999 is not in the dataset"),
    ("{not json", r"bad.jsonl:2: not valid JSON"),
    ("[1, 2]", r"bad.jsonl:2: expected a JSON object"),
])
def test_bad_jsonl_lines(tmp_path: Path, cartpole_ds: TransitionDataset, line: object, message: str) -> None:
    file = tmp_path / "bad.jsonl"
    text = line if isinstance(line, str) else json.dumps(line)
    file.write_text(json.dumps(LINE) + "\n" + text + "\n")
    with pytest.raises(LabelError, match=message) as err:
        read_preference_file(file, cartpole_ds)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"\xef\xbb\xbf"])
def test_empty_jsonl_files(tmp_path: Path, cartpole_ds: TransitionDataset, content: bytes) -> None:
    file = tmp_path / "empty.jsonl"
    file.write_bytes(content)
    with pytest.raises(LabelError, match=r"empty\.jsonl: no answered pairs"):
        read_preference_file(file, cartpole_ds)


def test_missing_and_non_utf8_files(tmp_path: Path, cartpole_ds: TransitionDataset) -> None:
    with pytest.raises(LabelError, match="preference file not found"):
        read_preference_file(tmp_path / "nope.jsonl", cartpole_ds)
    (tmp_path / "u16.jsonl").write_bytes(json.dumps(LINE).encode("utf-16"))
    with pytest.raises(LabelError, match="UTF-16"):
        read_preference_file(tmp_path / "u16.jsonl", cartpole_ds)


# --------------------------------------------------------------------------- episode seeds and replay
@pytest.mark.parametrize("fixture", ["cartpole_ds", "pendulum_ds"])
def test_replaying_an_episode_from_its_seed_reproduces_it(fixture: str, request: pytest.FixtureRequest) -> None:
    ds: TransitionDataset = request.getfixturevalue(fixture)
    assert ds.episode_seed is not None
    episodes = np.unique(ds.episode)
    seeds = {int(e): int(ds.episode_seed[ds.episode == e][0]) for e in episodes}
    assert len(set(seeds.values())) == len(seeds)  # one seed per episode, all different
    assert seeds[int(episodes[-1])] == episode_seed(0, int(episodes[-1]))
    for k in episodes[[0, 1, 5, len(episodes) // 2, -2]]:  # first episodes and auto-reset ones
        obs, next_obs = replay_episode(ds, int(k))
        rows = ds.episode == k
        assert np.array_equal(obs, ds.obs[rows]) and np.array_equal(next_obs, ds.next_obs[rows]), k


def test_episode_seeds_survive_save_subset_and_old_datasets_load(tmp_path: Path,
                                                                 cartpole_ds: TransitionDataset) -> None:
    cartpole_ds.save(tmp_path / "ds")
    loaded = TransitionDataset.load(tmp_path / "ds")
    assert np.array_equal(loaded.episode_seed, cartpole_ds.episode_seed)
    train, _ = loaded.split_by_episode(0.3)
    assert np.array_equal(train.episode_seed, cartpole_ds.episode_seed[np.isin(cartpole_ds.episode, train.episode)])
    # a dataset written before episode seeds: no file, no manifest entry
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    del manifest["fields"]["episode_seed"]
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "ds" / "episode_seed.npy").unlink()
    old = TransitionDataset.load(tmp_path / "ds")
    assert old.episode_seed is None and len(old) == len(cartpole_ds)
    with pytest.raises(DatasetError, match=r"no field 'episode_seed'.*cannot be replayed"):
        replay_episode(old, 0)


def test_inconsistent_episode_seeds_are_refused(cartpole_ds: TransitionDataset) -> None:
    seeds = cartpole_ds.episode_seed.copy()
    seeds[1] += 1  # row 1 is inside episode 0
    with pytest.raises(DatasetError, match="field 'episode_seed': episode 0 has seeds"):
        TransitionDataset.from_arrays(cartpole_ds.task, cartpole_ds.obs_space, cartpole_ds.action_space,
                                      obs=cartpole_ds.obs, action=cartpole_ds.action, next_obs=cartpole_ds.next_obs,
                                      terminated=cartpole_ds.terminated, truncated=cartpole_ds.truncated,
                                      episode=cartpole_ds.episode, step=cartpole_ds.step, episode_seed=seeds)


def test_collect_seeds_are_reproducible(catalog: Catalog) -> None:
    a = collect(catalog.task("CartPole-v1"), 300, n_envs=3, seed=7, progress=False)
    b = collect(catalog.task("CartPole-v1"), 300, n_envs=3, seed=7, progress=False)
    c = collect(catalog.task("CartPole-v1"), 300, n_envs=3, seed=8, progress=False)
    assert np.array_equal(a.obs, b.obs) and np.array_equal(a.episode_seed, b.episode_seed)
    assert not np.array_equal(a.obs, c.obs)


def test_segments_never_span_missing_steps(cartpole_ds: TransitionDataset) -> None:
    """A dataset labeled in part may miss steps inside an episode: no segment may span the gap."""
    table = _episode_table(cartpole_ds)
    ep = max(table, key=table.get)
    first = int(np.flatnonzero(cartpole_ds.episode == ep)[0])
    keep = np.ones(len(cartpole_ds), bool)
    keep[first + 10] = False  # episode `ep` misses its step 10
    gapped = cartpole_ds.subset(keep)
    ok = SegmentPairs.from_arrays([ep, ep], [0, 10], [ep, ep], [0, 10], 10)  # rows 0-9 and steps 11-20
    PreferenceDataset.from_pairs(gapped, ok, ["left", "right"], "human:x")
    bad = SegmentPairs.from_arrays([ep], [5], [ep], [0], 10)
    with pytest.raises(DatasetError, match=rf"pair 0: left segment \(episode {ep}, start 5, length 10\) spans steps "
                                           r"5\.\.15 of the dataset, which misses some of them"):
        PreferenceDataset.from_pairs(gapped, bad, ["left"], "human:x")
    pairs = sample_pairs(gapped, 2000, 10, np.random.default_rng(0))
    prefs = PreferenceDataset.from_pairs(gapped, pairs, np.zeros(len(pairs), np.int8), "teacher:oracle")
    left, _ = prefs.segment_rows()
    assert (np.diff(gapped.step[left], axis=1) == 1).all()
