"""Did sharing help? Each task's multi-task model against a model trained on that task alone.

A task's split depends only on its name and the seed (:func:`rlrm.train.loop.split_seed`), so a single-task model
trained with the same config holds out the same episodes, and the two r2 values compare like for like.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rlrm.data.dataset import TransitionDataset
from rlrm.model.network import ModelConfig
from rlrm.train.loop import TrainConfig, TrainResult, train_reward_model

#: a task shows negative transfer when its multi-task held-out r2 is lower than its single-task r2 by more than this
MARGIN = 0.01


def single_task_comparison(result: TrainResult, datasets: Sequence[TransitionDataset], config: TrainConfig,
                           architecture: ModelConfig, progress: bool = False) -> dict[str, dict[str, float]]:
    """Train one model per task (non-constant labels, two tasks or more) and add to ``result.metrics[task]``:
    ``single_task_r2``, ``transfer_r2`` (multi-task minus single-task r2) and ``negative_transfer`` (worse by
    more than :data:`MARGIN`). Also stored in ``result.model.meta["single_task"]``.
    """
    out: dict[str, dict[str, float]] = {}
    if len(datasets) < 2:
        return out
    for ds in datasets:
        name = ds.task.name
        if result.model.tasks[name].label_std == 0:
            continue  # constant labels: both predict the constant exactly
        alone = train_reward_model([ds], config, model_config=architecture, progress=progress)
        single, multi = alone.metrics[name]["r2"], result.metrics[name]["r2"]
        delta = multi - single if np.isfinite(single) and np.isfinite(multi) else float("nan")
        out[name] = {"single_task_r2": single, "transfer_r2": delta,
                     "negative_transfer": bool(np.isfinite(delta) and delta < -MARGIN)}
        result.metrics[name].update(out[name])
    result.model.meta["single_task"] = out
    return out
