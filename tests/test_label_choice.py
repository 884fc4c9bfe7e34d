"""Which transitions to label for a new task: spread-out rows (k-center) in the space of the model's earlier tasks'
rewards, or of the raw features; ``python -m rlrm.queries --labels N`` writes them as a label-file template."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from rlrm import model as rm
from rlrm.data import labels
from rlrm.data.dataset import TransitionDataset
from rlrm.data.selection import spread_index
from rlrm.errors import ConfigError
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.queries import entry
from rlrm.tasks import Task
from rlrm.train.heldout import predict_dataset
from rlrm.train.label_choice import choose_labels, label_space


def test_spread_index_reaches_a_small_far_cluster_from_any_start() -> None:
    rng = np.random.default_rng(0)
    points = np.vstack([rng.normal(0.0, 0.01, (990, 3)), rng.normal(5.0, 0.01, (10, 3))])
    for seed in range(10):
        chosen = spread_index(points, 2, np.random.default_rng(seed))
        assert len(set(chosen.tolist())) == 2 and (chosen >= 990).sum() == 1
    # what a uniform draw of two does: both in the big cluster ~98% of the time
    uniform = [np.random.default_rng(s).choice(1000, 2, replace=False) for s in range(200)]
    assert np.mean([(u >= 990).any() for u in uniform]) < 0.1


def test_spread_index_is_blind_to_units_and_never_repeats_a_row() -> None:
    points = np.random.default_rng(0).normal(size=(200, 3))
    scaled = points * [1.0, 1000.0, 0.001] + [5.0, -3.0, 0.0]  # z-scored columns: units do not matter
    for seed in range(3):
        np.testing.assert_array_equal(spread_index(points, 12, np.random.default_rng(seed)),
                                      spread_index(scaled, 12, np.random.default_rng(seed)))
    same = spread_index(np.ones((5, 2)), 5, np.random.default_rng(1))
    assert sorted(same.tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("points", "n", "match"), [
    (np.zeros((5, 2)), 0, "expected 1 <= n"),
    (np.zeros((5, 2)), 6, "expected 1 <= n"),
    (np.array([[0.0, np.nan]]), 1, "finite 2-D"),
    (np.zeros(5), 1, "finite 2-D"),
])
def test_spread_index_bad_input(points: np.ndarray, n: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        spread_index(points, n)


def _family_model(ds: TransitionDataset, seed: int = 0) -> RewardModel:
    """Two earlier tasks on CartPole's spaces, with the label scales training would give them."""
    torch.manual_seed(seed)
    model = RewardModel(ModelConfig(encoder=[16, 16]))
    for name, mean, std in (("CartPole-v1/a", 0.5, 0.2), ("CartPole-v1/b", -1.0, 3.0)):
        model.add_task(Task(name, "CartPole-v1"), ds.obs_space, ds.action_space)
        model.set_label_scale(name, mean, std)
    return model.eval()


def test_label_space_is_the_earlier_tasks_rewards_else_the_raw_features(cartpole_ds: TransitionDataset) -> None:
    new = dataclasses.replace(cartpole_ds, task=Task("CartPole-v1/new", "CartPole-v1"))
    model = _family_model(cartpole_ds)
    points = label_space(new, model)
    assert points.shape == (len(new), 2)
    for j, name in enumerate(model.tasks):
        expected = predict_dataset(model, dataclasses.replace(new, task=model.tasks[name].task))
        np.testing.assert_allclose(points[:, j], expected, rtol=1e-6)
    raw = label_space(new)
    assert raw.shape == (len(new), 4 + 2 + 4 + 1)  # obs, one-hot action, next_obs, done
    np.testing.assert_array_equal(raw[:, :4], new.obs)
    other = RewardModel(ModelConfig(encoder=[8]))
    other.add_task(Task("Pendulum-v1", "Pendulum-v1"), *_pendulum_spaces())
    np.testing.assert_array_equal(label_space(new, other), raw)  # no earlier task on these spaces


def _pendulum_spaces() -> tuple[object, object]:
    from gymnasium import spaces

    return spaces.Box(-8.0, 8.0, (3,), np.float32), spaces.Box(-2.0, 2.0, (1,), np.float32)


def test_choose_labels_spreads_over_the_earlier_rewards(cartpole_ds: TransitionDataset) -> None:
    model = _family_model(cartpole_ds)
    new = dataclasses.replace(cartpole_ds, task=Task("CartPole-v1/new", "CartPole-v1"))
    chosen = choose_labels(new, 8, model, seed=3)
    assert chosen.tolist() == sorted(set(chosen.tolist())) and len(chosen) == 8
    np.testing.assert_array_equal(chosen, choose_labels(new, 8, model, seed=3))
    # spread out: the chosen rows' rewards cover more of each earlier task's range than uniform draws of 8 do
    points = label_space(new, model)
    z = (points - points.mean(0)) / points.std(0)

    def coverage(rows: np.ndarray) -> float:
        return float(np.ptp(z[rows], axis=0).mean())

    uniform = [coverage(np.random.default_rng(s).choice(len(new), 8, replace=False)) for s in range(50)]
    assert coverage(chosen) > max(uniform)


def test_cli_labels_template_round_trip(cartpole_ds: TransitionDataset, workdir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The README's path: collect, choose the transitions to label, a person fills in some, collect again with the
    file as labeler: the dataset holds exactly the filled-in rows."""
    from rlrm import collect

    argv = ["--task", "CartPole-v1", "--steps", "1500", "--n-envs", "4", "--seed", "7", "--no-progress"]
    assert collect.entry([*argv, "--out", "raw"]) == 0
    raw = TransitionDataset.load("raw/CartPole-v1")
    model_file = rm.save(_family_model(cartpole_ds), Path("m.safetensors"))
    capsys.readouterr()
    assert entry(["--data", "raw", "--model", str(model_file), "--labels", "6", "--out", "q"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "earlier tasks' rewards" in printed and "--labeler file:q/labels.csv" in printed
    lines = Path("q/labels.csv").read_text().splitlines()
    assert lines[0] == "episode,step,label" and len(lines) == 7 and all(line.endswith(",") for line in lines[1:])
    keys = [tuple(map(int, line.split(",")[:2])) for line in lines[1:]]
    index = choose_labels(raw, 6, _family_model(cartpole_ds), seed=0)  # what the library chooses
    assert keys == list(zip(raw.episode[index].tolist(), raw.step[index].tolist()))
    # four labels filled in, two left blank: the blank rows are skipped
    filled = [lines[0]] + [f"{line}{0.25 * i}" if i < 4 else line for i, line in enumerate(lines[1:])]
    Path("q/labels.csv").write_text("\n".join(filled) + "\n")
    assert collect.entry([*argv, "--labeler", "file:q/labels.csv", "--out", "few"]) == 0
    few = TransitionDataset.load("few/CartPole-v1")
    assert list(zip(few.episode.tolist(), few.step.tolist())) == keys[:4]
    np.testing.assert_allclose(few.label, [0.0, 0.25, 0.5, 0.75])


def test_cli_labels_without_a_model_and_bad_counts(cartpole_ds: TransitionDataset, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = cartpole_ds.save(tmp_path / "data" / "CartPole-v1")
    assert entry(["--data", str(data), "--labels", "3", "--out", str(tmp_path / "q")]) == 0
    assert "raw features" in " ".join(capsys.readouterr().out.split())
    for bad in ("0", str(len(cartpole_ds) + 1)):
        assert entry(["--data", str(data), "--labels", bad, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert f"--labels {bad}: expected 1 to {len(cartpole_ds)}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_blank_labels_in_a_jsonl_file_are_skipped(cartpole_ds: TransitionDataset, tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    labels.write_label_file(path, cartpole_ds.subset(slice(0, 5)), blank=True)
    assert all('"label": null' in line for line in path.read_text().splitlines())
    text = path.read_text().splitlines()
    text[1] = text[1].replace("null", "2.5")
    path.write_text("\n".join(text) + "\n")
    labeled = labels.apply(cartpole_ds, f"file:{path}")
    assert len(labeled) == 1 and labeled.label[0] == 2.5
