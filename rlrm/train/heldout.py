"""Held-out metrics of a reward model, per task."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rlrm import metrics
from rlrm.data.dataset import TransitionDataset
from rlrm.model.network import RewardModel


@torch.no_grad()
def predict_dataset(model: RewardModel, ds: TransitionDataset, chunk: int = 65536) -> np.ndarray:
    """Model rewards for every transition of ``ds`` (task = ``ds.task.name``)."""
    feats = model.features(ds.task.name, ds.obs, ds.action, ds.next_obs, ds.terminated)
    out = [model(ds.task.name, torch.from_numpy(feats[i:i + chunk])).numpy() for i in range(0, len(feats), chunk)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def task_metrics(model: RewardModel, ds: TransitionDataset) -> dict[str, float]:
    """mse, r2, spearman and return-ranking accuracy of ``model`` on ``ds`` (labels are the truth)."""
    if len(ds) == 0:
        return {"mse": float("nan"), "r2": float("nan"), "spearman": float("nan"), "ranking_acc": float("nan"),
                "episodes": 0}
    pred = predict_dataset(model, ds)
    return {
        "mse": metrics.mse(pred, ds.label),
        "r2": metrics.r2(pred, ds.label),
        "spearman": metrics.spearman(pred, ds.label),
        "ranking_acc": metrics.ranking_accuracy(ds.episode_returns(pred), ds.episode_returns(ds.label)),
        "episodes": ds.n_episodes,
    }


def evaluate_model(model: RewardModel, datasets: list[TransitionDataset]) -> dict[str, dict[str, Any]]:
    """Metrics per task over whole datasets (e.g. freshly collected held-out data)."""
    return {ds.task.name: {"n": len(ds), **task_metrics(model, ds)} for ds in datasets}
