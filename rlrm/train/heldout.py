"""Held-out metrics of a reward model, per task: fit to the labels (mse, R², Spearman, return ranking) and the EPIC
distance to the function behind the labels where rlrm knows it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rlrm import metrics
from rlrm import spaces as sp
from rlrm.data.dataset import TransitionDataset
from rlrm.errors import ConfigError, LabelError
from rlrm.model.network import RewardModel
from rlrm.rewards import true_reward_fn

#: EPIC settings of the held-out metrics: a cost of a few tenths of a second per task after every training
EPIC_TRANSITIONS = 1000
EPIC_SAMPLES = 64


@torch.no_grad()
def predict_dataset(model: RewardModel, ds: TransitionDataset, chunk: int = 65536) -> np.ndarray:
    """Model rewards for every transition of ``ds`` (task = ``ds.task.name``)."""
    feats = model.features(ds.task.name, ds.obs, ds.action, ds.next_obs, ds.terminated)
    out = [model(ds.task.name, torch.from_numpy(feats[i:i + chunk])).numpy() for i in range(0, len(feats), chunk)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def epic_to_labels(model: RewardModel, ds: TransitionDataset) -> tuple[float, str]:
    """EPIC distance (:func:`rlrm.metrics.epic_distance`) between the model's reward for ``ds.task`` and the function
    that labeled ``ds`` (``ds.label_source``: ``env`` for an env whose reward rlrm knows as a function of the
    transition, or an ``rlrm:`` labeler), on ``ds``'s transitions (at most :data:`EPIC_TRANSITIONS` of them).

    :return: the distance and ``""``, or NaN and a note saying why there is none.
    """
    try:
        truth = true_reward_fn(ds.label_source, ds.task.env_id)
    except LabelError:
        truth = None
    if truth is None:
        return float("nan"), f"no EPIC: rlrm does not know the function behind labels {ds.label_source!r}"
    value = metrics.epic_distance(model.reward_fn(ds.task.name), truth, ds.obs, ds.action, ds.next_obs,
                                  ds.terminated, n_samples=EPIC_SAMPLES, max_transitions=EPIC_TRANSITIONS)
    if np.isnan(value):
        why = "fewer than two transitions" if len(ds) < 2 else "a reward is constant on these transitions"
        return value, f"no EPIC: {why}"
    return value, ""


def task_metrics(model: RewardModel, ds: TransitionDataset) -> dict[str, float]:
    """mse, r2, spearman, return-ranking accuracy and EPIC distance (:func:`epic_to_labels`; NaN where the labels'
    function is unknown) of ``model`` on ``ds`` (labels are the truth)."""
    return _metrics_and_note(model, ds)[0]


def _metrics_and_note(model: RewardModel, ds: TransitionDataset) -> tuple[dict[str, float], str]:
    if len(ds) == 0:
        return {"mse": float("nan"), "r2": float("nan"), "spearman": float("nan"), "ranking_acc": float("nan"),
                "epic": float("nan"), "episodes": 0}, "no transitions"
    pred = predict_dataset(model, ds)
    epic, note = epic_to_labels(model, ds)
    return {
        "mse": metrics.mse(pred, ds.label),
        "r2": metrics.r2(pred, ds.label),
        "spearman": metrics.spearman(pred, ds.label),
        "ranking_acc": metrics.ranking_accuracy(ds.episode_returns(pred), ds.episode_returns(ds.label)),
        "epic": epic,
        "episodes": ds.n_episodes,
    }, note


def check_heads(model: RewardModel, datasets: list[TransitionDataset]) -> None:
    """Raise :class:`ConfigError` unless every dataset's task has a head in ``model`` that takes its spaces (the
    message names the task, and the heads the model has)."""
    for ds in datasets:
        if ds.task.name not in model.tasks:
            raise ConfigError(f"the reward model has no head for task {ds.task.name!r} (of a dataset given); it has "
                              f"heads for: {', '.join(sorted(model.tasks)) or 'none'}")
        group = model.group_of(ds.task.name)
        for what, expected, actual in (("observation", group.obs_space, ds.obs_space),
                                       ("action", group.action_space, ds.action_space)):
            if sp.layout(expected) != sp.layout(actual):
                raise ConfigError(f"the reward model's head for task {ds.task.name!r} expects the {what} space "
                                  f"{expected}, but the dataset has {actual}")


def evaluate_model(model: RewardModel, datasets: list[TransitionDataset]) -> dict[str, dict[str, Any]]:
    """Metrics per task over whole datasets (e.g. freshly collected held-out data): ``n`` (transitions), the
    metrics of :func:`task_metrics`, the ``label_source``, and a ``note`` when EPIC is NaN.

    Two datasets of one task are reported apart, the second as ``"<task> (2)"``.

    :raise ConfigError: a dataset whose task has no head in ``model`` (see :func:`check_heads`).
    """
    check_heads(model, datasets)
    out: dict[str, dict[str, Any]] = {}
    for ds in datasets:
        key, i = ds.task.name, 1
        while key in out:
            i += 1
            key = f"{ds.task.name} ({i})"
        values, note = _metrics_and_note(model, ds)
        row: dict[str, Any] = {"n": len(ds), **values, "label_source": ds.label_source}
        if note:
            row["note"] = note
        out[key] = row
    return out
