"""Ensembles through the CLIs: train_reward --ensemble K (labels and preferences), train_agent --uncertainty."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlrm import collect, queries, train_agent, train_reward
from rlrm import model as rm
from rlrm.model.ensemble import RewardEnsemble


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def data(workdir: Path) -> Path:
    assert collect.entry(["--task", "Pendulum-v1", "--steps", "2000", "--n-envs", "4", "--preferences", "150",
                          "--segment-length", "10", "--out", "data", "--no-progress"]) == 0
    return workdir / "data"


def test_ensemble_of_three_in_one_file_with_labels_and_preferences(data: Path):
    code = train_reward.entry(["--data", str(data), "--preferences", str(data), "--ensemble", "3", "--epochs", "2",
                               "--encoder", "16", "--out", "ens.safetensors", "--no-progress"])
    assert code == 0
    model = rm.load("ens.safetensors")
    assert isinstance(model, RewardEnsemble) and model.k == 3
    task = json.loads(Path("ens.metrics.json").read_text())["tasks"]["Pendulum-v1"]
    assert task["member_std"] > 0 and np.isfinite(task["r2"]) and 0 <= task["pref_acc"] <= 1


def test_queries_pick_by_disagreement_of_an_ensemble(data: Path):
    assert train_reward.entry(["--data", str(data), "--ensemble", "2", "--epochs", "1", "--encoder", "16",
                               "--out", "ens.safetensors", "--no-progress"]) == 0
    code = queries.entry(["--data", str(data / "Pendulum-v1"), "--model", "ens.safetensors", "--n", "3",
                          "--length", "5", "--select", "disagreement", "--out", "q", "--width", "64"])
    assert code == 0
    assert json.loads(Path("q/query_set.json").read_text())["ensemble_members"] == 2


@pytest.mark.parametrize("argv, words", [
    (["--ensemble", "0"], ["--ensemble", "at least 1"]),
    (["--ensemble", "2", "--init", "m.safetensors"], ["--ensemble", "cannot extend"]),
])
def test_bad_ensemble_flags(data: Path, capsys, argv, words):
    assert train_reward.entry(["--data", str(data), "--epochs", "1", "--encoder", "8", "--out", "m.safetensors",
                               "--no-progress"]) == 0
    capsys.readouterr()
    assert train_reward.entry(["--data", str(data), *argv, "--out", "other.safetensors", "--no-progress"]) != 0
    line = _one_line_error(capsys)
    assert all(w in line for w in words), line
    assert not Path("other.safetensors").exists()


def test_uncertainty_needs_an_ensemble_and_travels_into_the_run(data: Path, capsys):
    assert train_reward.entry(["--data", str(data), "--epochs", "1", "--encoder", "8", "--out", "one.safetensors",
                               "--no-progress"]) == 0
    assert train_reward.entry(["--data", str(data), "--ensemble", "2", "--epochs", "1", "--encoder", "8",
                               "--out", "ens.safetensors", "--no-progress"]) == 0
    capsys.readouterr()
    base = ["--env", "Pendulum-v1", "--algo", "ppo", "-n", "256", "--n-envs", "2", "--params", "n_steps:128",
            "batch_size:64", "--eval-episodes", "1", "--output-dir", "runs", "--no-progress", "--wandb-mode",
            "disabled"]
    assert train_agent.entry([*base, "--reward-model", "one.safetensors", "--uncertainty", "0.5"]) != 0
    assert "ensemble" in _one_line_error(capsys)
    assert train_agent.entry([*base, "--reward-model", "ens.safetensors", "--uncertainty", "-0.5"]) == 0
    [config] = Path("runs").rglob("config.json")
    assert json.loads(config.read_text())["shaping"]["uncertainty"] == -0.5
