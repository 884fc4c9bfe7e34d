"""A whole reward-training job: load datasets, train, save the model and its metrics file, log to W&B.
Returns what it did; the CLI prints it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlrm import atomic
from rlrm import model as rm
from rlrm.data.dataset import TransitionDataset, find_datasets
from rlrm.errors import ConfigError
from rlrm.model.network import ModelConfig
from rlrm.tracking import WandbOptions, init_wandb
from rlrm.train.loop import TrainConfig, TrainResult, train_reward_model


def load_datasets(paths: Sequence[str | os.PathLike], tasks: Sequence[str] = ()) -> list[TransitionDataset]:
    """Load every dataset under ``paths``, keeping only ``tasks`` if given."""
    dirs = find_datasets(paths)
    datasets = [TransitionDataset.load(d) for d in dirs]
    if tasks:
        have = {ds.task.name for ds in datasets}
        missing = [t for t in tasks if t not in have]
        if missing:
            raise ConfigError(f"tasks {missing}: no dataset for these under {list(map(str, paths))}; "
                              f"found {sorted(have)}")
        datasets = [ds for ds in datasets if ds.task.name in tasks]
    return datasets


def train_job(data: Sequence[str | os.PathLike], out: str | os.PathLike, config: TrainConfig,
              model_config: ModelConfig | None = None, *, tasks: Sequence[str] = (),
              init: str | os.PathLike | None = None, wandb: WandbOptions | None = None,
              progress: bool = True) -> TrainResult:
    """Train on the datasets under ``data`` and write ``out`` plus ``metrics.json`` beside it.

    :param init: an existing model file to extend (new heads; see ``config.freeze_encoder``).
    """
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"out {out}: is a directory; expected a model file path such as "
                          f"{out / 'reward_model.safetensors'}")
    datasets = load_datasets(data, tasks)
    base = rm.load(init) if init else None
    tracker = init_wandb(wandb, job_type="train_reward", directory=out.parent,
                         config={"train": asdict(config), "model": asdict(model_config or ModelConfig()),
                                 "data": [str(p) for p in data], "tasks": [ds.task.name for ds in datasets]})
    try:
        result = train_reward_model(datasets, config, model=base, model_config=model_config, tracker=tracker,
                                    progress=progress)
        rm.save(result.model, out)
        rows = [{"task": t, **m} for t, m in result.metrics.items()]
        report: dict[str, Any] = {"model": str(out), "best_epoch": result.best_epoch,
                                  "epochs_run": len(result.history), "seconds": round(result.seconds, 2),
                                  "transitions_per_s": round(result.transitions_per_s), "tasks": result.metrics}
        atomic.write_json(out.parent / "metrics.json", report)
        tracker.summary({f"{t}/{k}": v for t, m in result.metrics.items() for k, v in m.items()})
        tracker.table("metrics", rows)
        tracker.artifact(out, name=f"reward-model-{out.stem}", type="reward_model")
    finally:
        tracker.finish()
    return result
