"""Queries for people: selection rules, replayed clips, the ``python -m rlrm.queries`` CLI and the answers round
trip (the page itself runs in a browser in test_query_page_browser.py)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rlrm import model as rm
from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import PreferenceDataset, SegmentPairs, read_preference_file
from rlrm.data.query_page import STORAGE_PREFIX, page_data, render_page
from rlrm.data.render import check_replay, write_clips
from rlrm.data.rollout import collect, replay_episode
from rlrm.data.selection import preference_probability, select_pairs
from rlrm.data.teachers import sample_pairs
from rlrm.errors import ConfigError, DatasetError, LabelError, TaskError
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.queries import entry
from rlrm.tasks import Catalog


# --------------------------------------------------------------------------- selection rules
def _ensemble_returns() -> np.ndarray:
    """(K=3, 6 candidates, 2): members agree on 0, 2, 3, 5; disagree on 1 and 4; 3 is a 50/50 for all."""
    left = np.array([[5.0, 4.0, 0.0, 1.0, 0.0, -3.0],
                     [5.0, -4.0, 0.0, 1.0, 3.0, -3.0],
                     [5.0, 4.0, 0.0, 1.0, -3.0, -3.0]])
    right = np.array([[0.0, 0.0, 4.0, 1.0, 0.0, 0.0]] * 3)
    return np.stack([left, right], axis=-1)


def test_disagreement_picks_the_pairs_members_disagree_on() -> None:
    returns = _ensemble_returns()
    chosen = select_pairs(2, "disagreement", returns, rng=np.random.default_rng(0))
    assert sorted(chosen.tolist()) == [1, 4]
    p = preference_probability(returns)
    assert p.var(axis=0)[chosen].min() > p.var(axis=0)[[0, 2, 3, 5]].max()


def test_entropy_picks_the_pairs_near_one_half() -> None:
    returns = _ensemble_returns()
    assert select_pairs(1, "entropy", returns, rng=np.random.default_rng(0)).tolist() == [3]
    # K = 1 (a plain model): the pair whose returns are closest
    single = np.array([[[3.0, 0.0], [0.1, 0.0], [-2.0, 0.0], [0.0, 9.0]]])
    assert select_pairs(1, "entropy", single, rng=np.random.default_rng(0)).tolist() == [1]
    assert select_pairs(2, "entropy", single, rng=np.random.default_rng(0)).tolist() == [1, 2]


def test_uniform_is_seeded_and_distinct() -> None:
    a = select_pairs(10, "uniform", n_candidates=30, rng=np.random.default_rng(7))
    b = select_pairs(10, "uniform", n_candidates=30, rng=np.random.default_rng(7))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 10 and a.max() < 30


def test_selection_errors() -> None:
    single = _ensemble_returns()[:1]
    with pytest.raises(ConfigError, match=r"K >= 2 members.*K=1.*--ensemble K"):
        select_pairs(2, "disagreement", single)
    with pytest.raises(ConfigError, match="needs a reward model"):
        select_pairs(2, "entropy")
    with pytest.raises(ConfigError, match=r"7 pairs out of 6 candidates"):
        select_pairs(7, "entropy", _ensemble_returns())
    with pytest.raises(ConfigError, match=r"shape \(K members, n_candidates, 2\)"):
        select_pairs(2, "entropy", np.zeros((2, 5)))
    with pytest.raises(ConfigError, match="unknown selection method 'random'"):
        select_pairs(2, "random", _ensemble_returns())
    with pytest.raises(ConfigError, match="non-finite"):
        select_pairs(1, "entropy", np.full((1, 3, 2), np.nan))


# --------------------------------------------------------------------------- replay and clips
@pytest.mark.parametrize("fixture", ["cartpole_ds", "pendulum_ds"])
def test_replay_reproduces_the_stored_observations(fixture: str, request: pytest.FixtureRequest) -> None:
    ds: TransitionDataset = request.getfixturevalue(fixture)
    for episode in np.unique(ds.episode)[:3]:
        obs, next_obs = replay_episode(ds, int(episode))
        rows = np.flatnonzero(ds.episode == episode)
        np.testing.assert_allclose(obs, ds.obs[rows], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(next_obs, ds.next_obs[rows], rtol=1e-6, atol=1e-7)
        check_replay(ds, int(episode), obs, next_obs)
    episode = int(ds.episode[0])
    obs, next_obs = replay_episode(ds, episode)
    obs = obs.copy()
    obs[2, 0] += 0.01  # as if the env had gone elsewhere at step 2
    with pytest.raises(DatasetError, match=r"episode 0 .*differs at step 2\).*not deterministic"):
        check_replay(ds, episode, obs, next_obs)


def test_clips_show_each_segment(pendulum_ds: TransitionDataset, tmp_path: Path) -> None:
    pairs = sample_pairs(pendulum_ds, 2, 6, np.random.default_rng(1))
    names = write_clips(pendulum_ds, pairs, tmp_path, width=64, fps=20)
    assert names == [("pair0000_left.gif", "pair0000_right.gif"), ("pair0001_left.gif", "pair0001_right.gif")]
    for name in (n for pair in names for n in pair):
        with Image.open(tmp_path / name) as im:
            assert im.format == "GIF" and im.n_frames == 7 and im.size == (64, 64) and im.info["loop"] == 0
    # the two sides of a pair come from different states, so their clips differ
    assert (tmp_path / names[0][0]).read_bytes() != (tmp_path / names[0][1]).read_bytes()


def test_a_tampered_dataset_is_not_rendered(cartpole_ds: TransitionDataset, tmp_path: Path) -> None:
    obs = cartpole_ds.obs.copy()
    obs[cartpole_ds.episode == 0] *= 1.5
    ds = dataclasses.replace(cartpole_ds, obs=obs)
    pairs = sample_pairs(ds.subset(ds.episode == 0), 1, 3, np.random.default_rng(0))
    with pytest.raises(DatasetError, match="not deterministic given its reset seed and actions"):
        write_clips(ds, pairs, tmp_path)


def test_an_env_without_rgb_array_is_named(catalog: Catalog, tmp_path: Path) -> None:
    ds = collect(catalog.task("PointGoal-v0/goal000"), 40, n_envs=2, seed=0, progress=False)
    pairs = sample_pairs(ds, 1, 3, np.random.default_rng(0))
    with pytest.raises(TaskError, match=r"task 'PointGoal-v0/goal000' .*cannot render rgb_array frames: Gymnasium "
                                        r"lists its render modes as \[\]"):
        write_clips(ds, pairs, tmp_path)


# --------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def cartpole_dir(cartpole_ds: TransitionDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cartpole_ds.save(tmp_path_factory.mktemp("data") / "CartPole-v1")


def test_cli_uniform_end_to_end(cartpole_ds: TransitionDataset, cartpole_dir: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q"
    assert entry(["--data", str(cartpole_dir), "--n", "5", "--length", "8", "--out", str(out), "--width", "80"]) == 0
    assert "q/index.html" in capsys.readouterr().out.replace("\n", "")
    lines = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(rec["label"] == "" and rec["length"] == 8 for rec in lines)
    clips = sorted(p.name for p in (out / "clips").iterdir())
    assert clips == sorted(f"pair{i:04d}_{side}.gif" for i in range(5) for side in ("left", "right"))
    assert all((out / "clips" / c).stat().st_size < 50_000 for c in clips)
    page = (out / "index.html").read_text()
    record = json.loads((out / "query_set.json").read_text())
    assert record["select"] == "uniform" and record["n"] == 5 and record["candidates"] == 50
    assert STORAGE_PREFIX + record["id"] in page and "clips/pair0004_right.gif" in page
    assert not re.search(r"https?://", page), "the page must not reach the network"
    # the set's queries are all unanswered; answered as the page writes them, they import against the dataset
    with pytest.raises(LabelError, match="no answered pairs"):
        read_preference_file(out / "queries.jsonl", cartpole_ds)
    for rec, label in zip(lines, ["left", "", "equal", "right", ""]):
        rec["label"] = label
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    prefs = read_preference_file(answers, cartpole_ds)
    assert prefs.label_words() == ["left", "equal", "right"] and prefs.info["blank_labels_skipped"] == 2
    assert prefs.pairs.left_episode.tolist() == [lines[i]["left"]["episode"] for i in (0, 2, 3)]

    # a smaller set in the same folder leaves no stale clips behind
    assert entry(["--data", str(cartpole_dir), "--n", "2", "--length", "8", "--out", str(out), "--width", "80"]) == 0
    assert len(list((out / "clips").iterdir())) == 4


@pytest.fixture(scope="module")
def model_file(cartpole_ds: TransitionDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = RewardModel(ModelConfig(encoder=[16, 16]))
    model.add_task(cartpole_ds.task, cartpole_ds.obs_space, cartpole_ds.action_space)
    return rm.save(model.eval(), tmp_path_factory.mktemp("model") / "m.safetensors")


def test_cli_entropy_with_a_single_model(cartpole_dir: Path, model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "q"
    assert entry(["--data", str(cartpole_dir), "--model", str(model_file), "--select", "entropy", "--n", "2",
                  "--candidates", "12", "--length", "4", "--out", str(out), "--width", "48"]) == 0
    record = json.loads((out / "query_set.json").read_text())
    assert record["ensemble_members"] == 1 and record["candidates"] == 12
    assert len((out / "queries.jsonl").read_text().splitlines()) == 2


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert entry(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("python -m rlrm.queries: error: "), err
    return err


def test_cli_bad_inputs(cartpole_ds: TransitionDataset, cartpole_dir: Path, model_file: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--data", str(cartpole_dir), "--length", "4"]
    file = tmp_path / "file"
    file.write_text("x")
    assert "a file is in the way" in _one_line_error(capsys, [*base, "--n", "2", "--out", str(file)])
    err = _one_line_error(capsys, [*base, "--n", "50", "--candidates", "30", "--out", str(tmp_path / "q")])
    assert "--n 50 is larger than --candidates 30" in err
    err = _one_line_error(capsys, [*base, "--n", "2", "--select", "entropy", "--out", str(tmp_path / "q")])
    assert "--select entropy needs a reward model: pass --model" in err
    err = _one_line_error(capsys, [*base, "--n", "2", "--select", "disagreement", "--model", str(model_file),
                                   "--out", str(tmp_path / "q")])
    assert "K >= 2 members" in err and "--ensemble K" in err
    err = _one_line_error(capsys, [*base, "--n", "2", "--candidates", "ten", "--out", str(tmp_path / "q")])
    assert "--candidates 'ten'" in err
    seedless = dataclasses.replace(cartpole_ds, episode_seed=None).save(tmp_path / "old")
    err = _one_line_error(capsys, ["--data", str(seedless), "--n", "2", "--out", str(tmp_path / "q")])
    assert "collected before rlrm recorded episode seeds): re-collect" in err
    assert not (tmp_path / "q").exists()


def test_page_escapes_what_it_embeds() -> None:
    pairs = SegmentPairs.from_arrays([0], [1], [2], [3], 4)
    page = render_page(page_data(pairs, [("clips/a</script>.gif", "clips/b.gif")], "abc",
                                 "task </script><script>alert(1)</script>"))
    assert page.count("</script>") == 2  # the page's own two script blocks, nothing injected
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in page and '"storage_key": "rlrm-queries:abc"' in page


def test_cli_disagreement_with_an_ensemble(cartpole_ds: TransitionDataset, cartpole_dir: Path,
                                           tmp_path: Path) -> None:
    ensemble = pytest.importorskip("rlrm.model.ensemble", reason="the ensemble model is not in this checkout yet")
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        member = RewardModel(ModelConfig(encoder=[16, 16]))
        member.add_task(cartpole_ds.task, cartpole_ds.obs_space, cartpole_ds.action_space)
        members.append(member.eval())
    path = rm.save(ensemble.RewardEnsemble(members), tmp_path / "ensemble.safetensors")
    out = tmp_path / "q"
    assert entry(["--data", str(cartpole_dir), "--model", str(path), "--select", "disagreement", "--n", "2",
                  "--candidates", "10", "--length", "4", "--out", str(out), "--width", "48"]) == 0
    assert json.loads((out / "query_set.json").read_text())["ensemble_members"] == 3
    # the chosen pairs are the two candidates whose members' preference probabilities vary most
    ds = cartpole_ds
    candidates = sample_pairs(ds, 10, 4, np.random.default_rng(0))  # the CLI's first draw with --seed 0
    prefs = PreferenceDataset.from_pairs(ds, candidates, np.zeros(10, np.int8), "candidates")
    rewards = [m.predict(ds.task.name, ds.obs, ds.action, ds.next_obs, ds.terminated) for m in members]
    p_left = np.array([1 / (1 + np.exp(-np.subtract(*prefs.segment_returns(r)))) for r in rewards])
    top = np.argsort(-p_left.var(axis=0))[:2]
    written = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    assert [(rec["left"]["episode"], rec["left"]["start"], rec["right"]["episode"], rec["right"]["start"])
            for rec in written] == [(candidates.left_episode[i], candidates.left_start[i], candidates.right_episode[i],
                                     candidates.right_start[i]) for i in top]
