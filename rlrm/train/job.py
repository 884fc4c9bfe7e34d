"""A whole reward-training job: load and check datasets, train, save the model and its metrics file, log to W&B.
Returns what it did; the CLI prints it (and shows :class:`~rlrm.train.checks.DataWarning` lines)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rlrm import atomic
from rlrm import model as rm
from rlrm.data.dataset import TransitionDataset, concat, find_datasets
from rlrm.data.feedback import load_feedback
from rlrm.data.preferences import PreferenceDataset
from rlrm.errors import ConfigError
from rlrm.model.network import ModelConfig
from rlrm.tracking import Tracker, WandbOptions, init_wandb
from rlrm.train.checks import DataWarning, check_env_spaces, data_warnings
from rlrm.train.ensemble import train_ensemble
from rlrm.train.fewshot import MODES, extend_model
from rlrm.train.loop import TrainConfig, TrainResult, train_reward_model
from rlrm.train.transfer import single_task_comparison


def load_datasets(paths: Sequence[str | os.PathLike], tasks: Sequence[str] = ()) -> list[TransitionDataset]:
    """Load every dataset under ``paths``, keeping only ``tasks`` if given; several of one task are joined
    (:func:`merge_by_task`)."""
    return merge_by_task([ds for _, ds in _load(paths, tasks)])


def _load(paths: Sequence[str | os.PathLike], tasks: Sequence[str]) -> list[tuple[Path, TransitionDataset]]:
    found = [(Path(d), TransitionDataset.load(d)) for d in find_datasets(paths)]
    if tasks:
        have = {ds.task.name for _, ds in found}
        missing = [t for t in tasks if t not in have]
        if missing:
            raise ConfigError(f"tasks {missing}: no dataset for these under {list(map(str, paths))}; "
                              f"found {sorted(have)}")
        found = [(d, ds) for d, ds in found if ds.task.name in tasks]
    return found


def merge_by_task(datasets: Sequence[TransitionDataset]) -> list[TransitionDataset]:
    """One dataset per task: the folders of one task (e.g. random data and an agent's) joined by
    :func:`rlrm.data.dataset.concat`, in the order the tasks first appear."""
    groups: dict[str, list[TransitionDataset]] = {}
    for ds in datasets:
        groups.setdefault(ds.task.name, []).append(ds)
    return [concat(group) for group in groups.values()]


def metrics_path(out: str | os.PathLike) -> Path:
    """Where :func:`train_job` writes the metrics of model file ``out``: ``<model stem>.metrics.json`` beside it, so
    two models trained into one folder keep one file each."""
    out = Path(out)
    return out.with_name(f"{out.stem}.metrics.json")


def check_writable(out: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` naming ``out`` if the model and its metrics file cannot be written there: its
    folder (or the nearest existing folder above it) must take a new file. Creates nothing."""
    out = Path(out)
    for path in (out, metrics_path(out)):
        if path.is_dir():
            raise ConfigError(f"out {out}: {path} is a directory; expected a model file path such as "
                              f"{out / 'reward_model.safetensors'}")
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"out {out}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".rlrm-write-check-")
    except OSError as err:
        raise ConfigError(f"out {out}: cannot write into {folder}: {err.strerror or err}") from None
    os.close(fd)
    os.unlink(probe)


def train_job(data: Sequence[str | os.PathLike], out: str | os.PathLike, config: TrainConfig,
              model_config: ModelConfig | None = None, *, tasks: Sequence[str] = (),
              init: str | os.PathLike | None = None, adapt: str = "auto", single_task_baselines: bool = False,
              preferences: Sequence[str | os.PathLike] = (), preference_data: str | os.PathLike | None = None,
              ensemble: int = 1,
              wandb: WandbOptions | None = None, progress: bool = True) -> TrainResult:
    """Train on the datasets under ``data`` and write ``out`` plus ``<stem>.metrics.json`` beside it.

    Before any long step: ``out`` must be writable, ``init`` loadable, every dataset's spaces those of its task's
    env. Likely problems with the data are issued as :class:`DataWarning` (see :func:`data_warnings`).

    :param model_config: the architecture of a new model (default :class:`ModelConfig`); not with ``init``.
    :param init: an existing model file to extend with the tasks it lacks; it keeps its architecture. Tasks it
        has train on (all weights) when no task is new.
    :param adapt: how new tasks join ``init``'s model: ``auto`` (the better of the two by validation loss),
        ``frozen`` (heads on the frozen encoder) or ``finetune`` (see :mod:`rlrm.train.fewshot`).
    :param preferences: preference folders, folders of them or JSONL answer files (Bradley-Terry loss; see
        :mod:`rlrm.data.feedback`); a task may have labels (``data``), preferences, or both. A preference-only task
        joining ``init``'s model gets a head on its frozen encoder unless ``adapt`` is ``finetune`` (the automatic
        choice compares labels' validation losses).
    :param preference_data: the transition dataset of JSONL answer files (default: their ``query_set.json``).
    :param ensemble: K > 1 trains K members, each on its own bootstrap of the episodes, into one model file
        (:mod:`rlrm.train.ensemble`); not with ``init``.
    :param single_task_baselines: also train one model per task alone, on the same split, and report per task
        whether sharing helped or hurt (negative transfer; :mod:`rlrm.train.transfer`).
    """
    out = Path(out)
    check_writable(out)
    if init is not None and model_config is not None:
        raise ConfigError(f"model_config: a model extended from init ({init}) keeps its own architecture; "
                          "give one or the other")
    if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1:
        raise ConfigError(f"ensemble: expected a member count of at least 1, got {ensemble!r}")
    if ensemble > 1 and init is not None:
        raise ConfigError(f"ensemble {ensemble}: an ensemble trains new members; it cannot extend init ({init})")
    if adapt not in MODES:
        raise ConfigError(f"adapt {adapt!r}: expected one of {', '.join(MODES)}")
    if init is None and adapt != "auto":
        raise ConfigError(f"adapt {adapt!r}: a frozen encoder, fine-tuning or a span of earlier heads needs a trained "
                          "model to start from (init)")
    base = rm.load(init) if init else None
    found = _load(data, tasks) if data or not preferences else []
    check_env_spaces([ds for _, ds in found], [d for d, _ in found])
    datasets = merge_by_task([ds for _, ds in found])
    feedback = [(p, ds) for p, ds in load_feedback(preferences, preference_data) if not tasks or ds.task.name in tasks]
    if preferences and not feedback:
        raise ConfigError(f"preferences: none for tasks {list(tasks)} in {list(map(str, preferences))}")
    check_env_spaces([ds for _, ds in feedback], [p.dataset_dir or Path("?") for p, _ in feedback])
    architecture = base.config if base is not None else (model_config or ModelConfig())
    tracker = init_wandb(wandb, job_type="train_reward", directory=out.parent,
                         config={"train": asdict(config), "model": asdict(architecture), "init": str(init or ""),
                                 "data": [str(p) for p in data], "preferences": [str(p) for p in preferences],
                                 "tasks": sorted({ds.task.name for ds in [*datasets, *(d for _, d in feedback)]})})
    try:
        for line in data_warnings(datasets):
            warnings.warn(line, DataWarning, stacklevel=2)
        if ensemble > 1:
            result = train_ensemble(datasets, ensemble, config, architecture, progress=progress, tracker=tracker,
                                    preferences=feedback)
        else:
            result = _train(datasets, config, base, architecture, adapt, tracker, progress, feedback)
        if single_task_baselines:
            single_task_comparison(result, datasets, config, architecture, progress=progress)
        _write(out, result)
        _log(tracker, out, result)
    finally:
        tracker.finish()
    return result


def _train(datasets: list[TransitionDataset], config: TrainConfig, base: rm.RewardModel | None,
           architecture: ModelConfig, adapt: str, tracker: Tracker, progress: bool,
           feedback: Sequence[tuple[PreferenceDataset, TransitionDataset]] = ()) -> TrainResult:
    """A new model; new tasks on ``base`` (:func:`extend_model`); or more training of ``base``'s own tasks."""
    if adapt == "span" and (feedback or base is None or all(ds.task.name in base.tasks for ds in datasets)):
        raise ConfigError("adapt span: combines earlier heads into heads for new tasks from scalar labels; expected "
                          "--init and labeled data of a task the model lacks"
                          + (", not preferences" if feedback else ""))
    if feedback:
        if base is not None and any(ds.task.name not in base.tasks for _, ds in feedback):
            config = replace(config, freeze_encoder=adapt != "finetune")
        return train_reward_model(datasets, config, model=base, model_config=architecture, tracker=tracker,
                                  progress=progress, preferences=feedback)
    if base is not None and any(ds.task.name not in base.tasks for ds in datasets):
        return extend_model(base, datasets, config, adapt, tracker, progress)
    if base is not None and adapt == "frozen":
        raise ConfigError(f"every task given already has a head in the model ({', '.join(base.tasks)}); with a "
                          "frozen encoder there is nothing to train")
    return train_reward_model(datasets, config, model=base, model_config=architecture, tracker=tracker,
                              progress=progress)


def _write(out: Path, result: TrainResult) -> None:
    """The model file and its metrics file, both or neither (a failure names ``out`` and the cause)."""
    report: dict[str, Any] = {"model": str(out), "best_epoch": result.best_epoch,
                              "epochs_run": len(result.history), "seconds": round(result.seconds, 2),
                              "transitions_per_s": round(result.transitions_per_s), "tasks": result.metrics}
    for key in ("adaptation", "single_task"):
        if key in result.model.meta:
            report[key] = result.model.meta[key]
    try:
        rm.save(result.model, out)
        try:
            atomic.write_json(metrics_path(out), report)
        except BaseException:
            with contextlib.suppress(OSError):
                out.unlink()
            raise
    except OSError as err:
        raise ConfigError(f"out {out}: cannot write the model: {err.strerror or err}") from None


def _log(tracker: Tracker, out: Path, result: TrainResult) -> None:
    tracker.summary({f"{t}/{k}": v for t, m in result.metrics.items() for k, v in m.items()})
    tracker.table("metrics", [{"task": t, **m} for t, m in result.metrics.items()])
    tracker.artifact(out, name=f"reward-model-{out.stem}", type="reward_model")
