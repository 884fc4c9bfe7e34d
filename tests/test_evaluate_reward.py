"""Reward models evaluated on labeled data: ``python -m rlrm.evaluate --data DIR --reward-model M`` and
:func:`rlrm.train.heldout.evaluate_model` (r2, Spearman, return ranking, EPIC), the EPIC column of training's
metrics.json, and the CLI's bad-input cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rlrm import metrics
from rlrm import model as rm
from rlrm.data.dataset import TransitionDataset
from rlrm.evaluate import entry
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.rewards import true_reward_fn
from rlrm.train.heldout import evaluate_model, task_metrics
from rlrm.train.job import metrics_path, train_job
from rlrm.train.loop import TrainConfig, train_reward_model

PROG = "python -m rlrm.evaluate"
SMALL = ModelConfig(encoder=[16, 16])


@pytest.fixture(scope="module")
def cartpole_python_labels(cartpole_ds: TransitionDataset) -> TransitionDataset:
    """CartPole transitions labeled by a Python function rlrm does not know (so: no EPIC)."""
    return cartpole_ds.with_labels(-np.abs(cartpole_ds.next_obs[:, 0]), "python:my_rewards:centered")


@pytest.fixture(scope="module")
def trained(pendulum_ds: TransitionDataset, cartpole_python_labels: TransitionDataset) -> RewardModel:
    return train_reward_model([pendulum_ds, cartpole_python_labels], TrainConfig(epochs=5, seed=0),
                              model_config=SMALL, progress=False).model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, trained: RewardModel, pendulum_ds: TransitionDataset,
          cartpole_python_labels: TransitionDataset, acrobot_ds: TransitionDataset) -> dict[str, Path]:
    """The model file, a folder with its two datasets, and a folder with a dataset of a task it has no head for."""
    root = tmp_path_factory.mktemp("evaluate_reward")
    rm.save(trained, root / "model.safetensors")
    pendulum_ds.save(root / "data" / "pendulum")
    cartpole_python_labels.save(root / "data" / "cartpole")
    acrobot_ds.save(root / "other" / "acrobot")
    return {"model": root / "model.safetensors", "data": root / "data", "other": root / "other", "root": root}


def _one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    rc = entry(list(args))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert out == ""  # nothing half done
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), err
    return lines[0]


# --------------------------------------------------------------------------- library
def test_evaluate_model_reports_epic_where_the_labels_function_is_known(
        trained: RewardModel, pendulum_ds: TransitionDataset, cartpole_python_labels: TransitionDataset) -> None:
    res = evaluate_model(trained, [pendulum_ds, cartpole_python_labels])
    pend, cart = res["Pendulum-v1"], res["CartPole-v1"]
    assert pend["n"] == len(pendulum_ds) and cart["n"] == len(cartpole_python_labels)
    assert {"r2", "spearman", "ranking_acc", "epic", "label_source"} <= set(pend)
    # the trained head is close to Pendulum's reward, and much closer than an untrained one
    assert 0.0 <= pend["epic"] < 0.4
    untrained = RewardModel(SMALL)
    untrained.add_task(pendulum_ds.task, pendulum_ds.obs_space, pendulum_ds.action_space)
    assert task_metrics(untrained, pendulum_ds)["epic"] > pend["epic"] + 0.2
    assert "note" not in pend
    # the same number as EPIC computed directly against the shipped Pendulum reward
    truth = true_reward_fn("env", "Pendulum-v1")
    assert truth is not None
    direct = metrics.epic_distance(trained.reward_fn("Pendulum-v1"), truth, pendulum_ds.obs, pendulum_ds.action,
                                   pendulum_ds.next_obs, pendulum_ds.terminated, max_transitions=1000)
    assert pend["epic"] == pytest.approx(direct, abs=1e-6)
    # python: labels: rlrm does not know their function, so no EPIC, and a note says why
    assert math.isnan(cart["epic"]) and "python:my_rewards:centered" in cart["note"]
    assert cart["r2"] > 0.0


def test_two_datasets_of_one_task_are_reported_apart(trained: RewardModel, pendulum_ds: TransitionDataset) -> None:
    half = pendulum_ds.subset(slice(0, 1000))
    res = evaluate_model(trained, [pendulum_ds, half])
    assert list(res) == ["Pendulum-v1", "Pendulum-v1 (2)"] and res["Pendulum-v1 (2)"]["n"] == 1000


def test_training_metrics_carry_epic(pendulum_ds: TransitionDataset, files: dict[str, Path]) -> None:
    out = files["root"] / "job" / "model.safetensors"
    train_job([files["data"] / "pendulum"], out, TrainConfig(epochs=2), SMALL, progress=False)
    report = json.loads(metrics_path(out).read_text())
    epic = report["tasks"]["Pendulum-v1"]["epic"]
    assert isinstance(epic, float) and 0.0 <= epic <= 1.0
    assert rm.load(out).meta["metrics"]["Pendulum-v1"]["epic"] == pytest.approx(epic)


# --------------------------------------------------------------------------- CLI
def test_cli_prints_a_table_and_writes_json(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out_json = files["root"] / "eval" / "metrics.json"
    rc = entry(["--reward-model", str(files["model"]), "--data", str(files["data"]), "--json", str(out_json)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Pendulum-v1" in out and "CartPole-v1" in out and "epic" in out
    assert "rlrm does not know the function behind labels 'python:my_rewards:centered'" in " ".join(out.split())
    doc = json.loads(out_json.read_text())
    tasks = doc["tasks"]
    assert set(tasks) == {"Pendulum-v1", "CartPole-v1"}
    assert tasks["Pendulum-v1"]["n"] == 2000 and 0.0 <= tasks["Pendulum-v1"]["epic"] < 0.4
    assert tasks["CartPole-v1"]["epic"] is None and tasks["CartPole-v1"]["note"]
    assert doc["reward_model"] == str(files["model"])


def test_cli_tasks_filter(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out_json = files["root"] / "eval" / "pendulum.json"
    rc = entry(["--reward-model", str(files["model"]), "--data", str(files["data"]), "--tasks", "Pendulum-v1",
                "--json", str(out_json)])
    assert rc == 0, capsys.readouterr().err
    assert list(json.loads(out_json.read_text())["tasks"]) == ["Pendulum-v1"]


def test_cli_bad_inputs_are_one_line_errors(files: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    model, data = str(files["model"]), str(files["data"])
    assert "got neither" in _one_line_error(capsys, "--reward-model", model)
    assert "got both" in _one_line_error(capsys, "--agent", str(tmp_path / "agent.zip"), "--data", data)
    assert "--data needs --reward-model" in _one_line_error(capsys, "--data", data)
    line = _one_line_error(capsys, "--reward-model", model, "--data", str(files["other"]))
    assert "no head for task 'Acrobot-v1'" in line and "CartPole-v1, Pendulum-v1" in line and model in line
    line = _one_line_error(capsys, "--reward-model", model, "--data", str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in line and "not found" in line
    line = _one_line_error(capsys, "--reward-model", model, "--data", data, "--tasks", "Hopper-v4")
    assert line.startswith(f"{PROG}: error: --tasks ['Hopper-v4']")
    assert "--episodes goes with --agent" in _one_line_error(capsys, "--reward-model", model, "--data", data,
                                                             "--episodes", "3")
    assert "--json goes with --data" in _one_line_error(capsys, "--agent", str(tmp_path / "a.zip"), "--json", "x")
    line = _one_line_error(capsys, "--reward-model", str(tmp_path / "none.safetensors"), "--data", data)
    assert "none.safetensors" in line
    assert not (tmp_path / "x").exists()
