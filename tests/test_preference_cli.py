"""Preferences through the CLIs: collect --preferences/--teacher, train_reward --preferences (folders, JSONL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlrm import collect, train_reward
from rlrm.data.preferences import PreferenceDataset, write_preference_file


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def collected(workdir: Path) -> Path:
    code = collect.entry(["--task", "Pendulum-v1", "--steps", "2000", "--n-envs", "4", "--preferences", "120",
                          "--segment-length", "10", "--teacher", "mistake:eps=0.1", "--out", "data",
                          "--no-progress"])
    assert code == 0
    return workdir / "data"


def test_collect_writes_a_preference_set_beside_the_dataset(capsys, collected: Path):
    prefs = PreferenceDataset.load(collected / "Pendulum-v1.preferences")
    assert len(prefs) == 120 and prefs.sources == ["teacher:mistake:eps=0.1"]
    assert prefs.dataset_dir is not None and prefs.dataset_dir.resolve() == (collected / "Pendulum-v1").resolve()
    assert "pairs" in capsys.readouterr().out


def test_train_reward_on_preferences_alone(collected: Path, capsys):
    code = train_reward.entry(["--preferences", str(collected), "--out", "m.safetensors", "--epochs", "3",
                               "--encoder", "32", "--no-progress"])
    assert code == 0
    task = json.loads(Path("m.metrics.json").read_text())["tasks"]["Pendulum-v1"]
    assert task["feedback"] == "preferences" and task["n_pairs_val"] > 0 and 0 <= task["pref_acc"] <= 1
    assert "pref_acc" in capsys.readouterr().out


def test_data_folder_with_a_preference_set_inside_still_loads_as_labels(collected: Path):
    code = train_reward.entry(["--data", str(collected), "--out", "m.safetensors", "--epochs", "1", "--encoder", "16",
                               "--no-progress"])
    assert code == 0
    assert json.loads(Path("m.metrics.json").read_text())["tasks"]["Pendulum-v1"].get("feedback") is None


def test_answers_jsonl_with_its_dataset(collected: Path):
    prefs = PreferenceDataset.load(collected / "Pendulum-v1.preferences")
    write_preference_file("answers.jsonl", prefs)
    code = train_reward.entry(["--preferences", "answers.jsonl", "--preference-data", str(collected / "Pendulum-v1"),
                               "--out", "m.safetensors", "--epochs", "2", "--encoder", "16", "--no-progress"])
    assert code == 0
    meta = json.loads(Path("m.metrics.json").read_text())["tasks"]["Pendulum-v1"]
    assert meta["n_pairs_train"] + meta["n_pairs_val"] == len(prefs)


@pytest.mark.parametrize("argv, words", [
    (["--preferences", "answers.jsonl"], ["query_set.json", "--preference-data"]),
    (["--preferences", "nowhere"], ["nowhere", "not found"]),
    ([], ["--data", "--preferences"]),
])
def test_bad_preference_inputs_are_one_line(collected: Path, capsys, argv, words):
    write_preference_file("answers.jsonl", PreferenceDataset.load(collected / "Pendulum-v1.preferences"))
    capsys.readouterr()
    assert train_reward.entry([*argv, "--out", "m.safetensors", "--no-progress"]) != 0
    line = _one_line_error(capsys)
    assert all(w in line for w in words), line
    assert not Path("m.safetensors").exists()


def test_a_teacher_spec_that_does_not_parse_fails_before_collecting(workdir: Path, capsys):
    code = collect.entry(["--task", "Pendulum-v1", "--steps", "200", "--preferences", "10", "--teacher",
                          "stochastic:beta=-1", "--out", "data", "--no-progress"])
    assert code != 0
    assert "stochastic:beta=-1" in _one_line_error(capsys)
    assert not (workdir / "data").exists()
