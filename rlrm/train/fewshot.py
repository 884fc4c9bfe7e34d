"""New tasks on a trained model: a head on the frozen encoder, full fine-tuning, a combination of earlier heads, or
the best of them.

- ``frozen``: only the new heads (and stems for new spaces) train; every earlier head predicts bit-identically.
- ``finetune``: the whole model trains on the given data, its existing weights at
  ``lr * finetune_lr_scale``; earlier heads move with the encoder (how much is reported per head, in
  ``meta["adaptation"]["old_heads"]``). Give the earlier tasks' datasets too to keep them fitted.
- ``span``: each new head is a linear combination of the earlier heads of its input group, fitted in closed form
  (:mod:`rlrm.train.span`): no training, every earlier head bit-identical; right when the new reward is close to
  such a combination (a new target within a family's), from about as many labels as there are earlier heads.
- ``auto``: every mode that applies, on the same held-out data; the lower validation loss of the new tasks wins
  (``span`` applies when every new task has earlier heads to combine and plain label units). Under cross-validation
  (few labels, below) the choice follows the one-standard-error rule (Hastie et al., *Elements of Statistical
  Learning*, 7.10): the simplest mode whose score is within one standard error of the best one's, simplest first
  in :data:`SIMPLEST_FIRST`. On 4-8 labels the scores of the modes differ by less than their noise, and picking
  the minimum then chose a trained head in a third of the runs where ``span`` was better (benchmarks/RESULTS.md).
  The standard error is that of the paired difference (every mode predicts the same out-of-fold transitions): a
  difference made by one left-out label alone is never more than one standard error, where the best mode's own
  spread had let one bad fold of 4-8 labels rule ``span`` out (every such choice on CartPole was worse than
  ``span`` on the test set; benchmarks/RESULTS.md, session 11).

Held-out data at every N: with at least :data:`CV_BELOW` labeled transitions and :data:`CV_EPISODES` episodes per
new task, the usual split by episode (with early stopping). Below that, a validation split would be a handful of
rows or one or two episodes, which can be unlike the rest and stop training after a few steps (measured: a frozen
head stopped at r2 0.66 where full training gives 0.999), so the choice is made by K-fold cross-validation (folds
of whole episodes when there are enough, else of contiguous rows), the chosen mode is then trained on every label
for the full budget, and the reported metrics of the new tasks are the out-of-fold ones.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from rlrm import metrics
from rlrm.data.dataset import TransitionDataset
from rlrm.errors import ConfigError
from rlrm.model.network import RewardModel
from rlrm.tracking import Tracker
from rlrm.train.heldout import predict_dataset, task_metrics
from rlrm.train.loop import TrainConfig, TrainResult, split_seed, train_reward_model
from rlrm.train.span import span_basis, span_model

MODES = ("auto", "frozen", "finetune", "span")
#: below this many labeled transitions (of the smallest new task) choices are made by cross-validation
CV_BELOW = 512
#: ... or fewer episodes than this (a 10% validation split would hold fewer than 5 of them)
CV_EPISODES = 50
FOLDS = 4
#: fewest fitted parameters first: a combination of earlier heads, a new head, the whole model
SIMPLEST_FIRST = ("span", "frozen", "finetune")


def extend_model(base: RewardModel, datasets: Sequence[TransitionDataset], config: TrainConfig,
                 mode: str = "auto", tracker: Tracker | None = None, progress: bool = True) -> TrainResult:
    """Add the tasks of ``datasets`` that ``base`` lacks (see module docstring); ``base`` is not modified.

    :param mode: ``auto``, ``frozen``, ``finetune`` or ``span``.
    :return: the result of the chosen mode; ``result.model.meta["adaptation"]`` records the mode, each
        candidate's validation score and how far earlier heads moved.
    """
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    new = [ds for ds in datasets if ds.task.name not in base.tasks]
    if not new:
        raise ConfigError(f"every task given already has a head in the model ({', '.join(base.tasks)}); "
                          "frozen, fine-tuned, span and automatic modes add new tasks")
    spannable = _spannable(base, new, config)
    if mode == "span" and spannable is not None:
        raise ConfigError(f"mode span: {spannable}")
    candidates = (["frozen", "finetune"] + (["span"] if spannable is None else [])) if mode == "auto" else [mode]
    small = cross_validates(new)
    if small:
        oofs = {m: _out_of_fold(base, datasets, new, config, m) for m in candidates}
        errors = {m: _cv_errors(oof, new) for m, oof in oofs.items()}
        scores = {m: float(np.mean(e)) for m, e in errors.items()}
        chosen = one_standard_error_choice(errors)
        spread: dict[str, Any] = {"standard_errors": paired_standard_errors(errors),
                                  "rule": "simplest within one standard error of the best (paired)"}
        result = _train(base, datasets, _full_budget(config), chosen, tracker, progress)
        for ds in new:
            result.metrics[ds.task.name].update(_metrics_from(oofs[chosen][ds.task.name], ds),
                                                validation=f"{FOLDS}-fold")
        validation = f"{FOLDS}-fold cross-validation (fewer than {CV_BELOW} labels or {CV_EPISODES} episodes)"
    else:
        results = {m: _train(base, datasets, config, m, tracker, progress) for m in candidates}
        scores = {m: _val_score(r, new) for m, r in results.items() if m != "span"}
        if "span" in results:
            scores["span"], held = _span_held_out(base, new, config)
            results["span"].metrics.update(held)
        chosen = min(scores, key=lambda m: scores[m])
        result = results[chosen]
        spread = {"rule": "lowest validation loss"}
        validation = "held-out episodes"
    result.model.meta["adaptation"] = {
        "mode": chosen, "requested": mode, "validation": validation,
        "scores": {m: float(s) for m, s in scores.items()},
        **spread,
        "new_tasks": [ds.task.name for ds in new],
        "old_heads": old_head_changes(base, result.model, datasets)}
    result.model.meta["metrics"] = result.metrics
    return result


def cross_validates(new: Sequence[TransitionDataset]) -> bool:
    """Whether new tasks with these datasets are validated by K-fold cross-validation (see module docstring)."""
    return min(len(ds) for ds in new) < CV_BELOW or min(ds.n_episodes for ds in new) < CV_EPISODES


def _spannable(base: RewardModel, new: Sequence[TransitionDataset], config: TrainConfig) -> str | None:
    """``None`` if span applies to every new task, else why not."""
    if config.label_transform != "none":
        return f"new heads with label_transform {config.label_transform} are not linear in the earlier heads"
    for ds in new:
        if not span_basis(base, ds):
            return (f"task {ds.task.name!r} has no earlier head to combine (a trained task with the same observation "
                    "and action spaces, labels in plain units and not constant)")
    return None


def _train(base: RewardModel, datasets: Sequence[TransitionDataset], config: TrainConfig, mode: str,
           tracker: Tracker | None, progress: bool) -> TrainResult:
    if mode == "span":
        return _span_result(base, datasets)
    cfg = replace(config, freeze_encoder=mode == "frozen")
    return train_reward_model(datasets, cfg, model=copy.deepcopy(base), tracker=tracker, progress=progress)


def _span_result(base: RewardModel, datasets: Sequence[TransitionDataset]) -> TrainResult:
    """Every new task's head fitted by :func:`rlrm.train.span.span_model` on all its labels; metrics of every task
    on the given transitions (in-sample: nothing is held out)."""
    model = _span_model(base, datasets)
    return TrainResult(model=model, metrics={ds.task.name: {"n_train": len(ds), "n_val": 0, **task_metrics(model, ds),
                                                            "validation": "in-sample"} for ds in datasets})


def _span_model(base: RewardModel, datasets: Sequence[TransitionDataset]) -> RewardModel:
    """``base`` with a span head for every task of ``datasets`` it lacks."""
    model = base
    for ds in datasets:
        if ds.task.name not in base.tasks:
            model = span_model(model, ds)
    return model


def _span_held_out(base: RewardModel, new: Sequence[TransitionDataset],
                   config: TrainConfig) -> tuple[float, dict[str, dict[str, Any]]]:
    """Span fitted on the training episodes of the split the trained modes validate on: its mean 1 - r2 on the
    held-out episodes (lower is better) and each new task's held-out metrics."""
    scores, held = [], {}
    for ds in new:
        train, val = ds.split_by_episode(config.val_frac, seed=split_seed(ds.task.name, config.seed))
        model = span_model(base, train)
        scores.append(_cv_score({ds.task.name: predict_dataset(model, val)}, [val]))
        held[ds.task.name] = {"n_train": len(train), "n_val": len(val), **task_metrics(model, val),
                              "validation": "held-out episodes"}
    return float(np.mean(scores)), held


def _full_budget(config: TrainConfig) -> TrainConfig:
    """Every label trains, for every epoch: there is no validation split to stop on."""
    return replace(config, val_frac=0.0, patience=0)


def _val_score(result: TrainResult, new: Sequence[TransitionDataset]) -> float:
    """Mean over new tasks of validation mse / variance of the validation labels (1 - r2); lower is better."""
    scores = [1.0 - result.metrics[ds.task.name]["r2"] for ds in new
              if np.isfinite(result.metrics[ds.task.name].get("r2", np.nan))]
    return float(np.mean(scores)) if scores else float(np.mean([result.metrics[ds.task.name]["mse"] for ds in new]))


def folds(ds: TransitionDataset, k: int, seed: int) -> np.ndarray:
    """A fold number per transition: whole episodes when there are at least ``k``, else contiguous blocks."""
    rng = np.random.default_rng(split_seed(ds.task.name, seed))
    eps = np.unique(ds.episode)
    if len(eps) >= k:
        fold_of = dict(zip(rng.permutation(eps).tolist(), np.arange(len(eps)) % k))
        return np.array([fold_of[e] for e in ds.episode.tolist()], np.int64)
    if len(ds) < k:
        raise ConfigError(f"task {ds.task.name!r}: {len(ds)} labeled transitions; at least {k} are needed to "
                          "hold some out")
    return (np.arange(len(ds)) * k // len(ds)).astype(np.int64)


def _out_of_fold(base: RewardModel, datasets: Sequence[TransitionDataset], new: Sequence[TransitionDataset],
                 config: TrainConfig, mode: str) -> dict[str, np.ndarray]:
    """Predictions for every transition of each new task by a model that did not train on it."""
    fold_ids = {ds.task.name: folds(ds, FOLDS, config.seed) for ds in new}
    pred = {ds.task.name: np.zeros(len(ds), np.float64) for ds in new}
    for k in range(FOLDS):
        train_sets = [ds.subset(fold_ids[ds.task.name] != k) if ds.task.name in fold_ids else ds for ds in datasets]
        model = (_span_model(base, train_sets) if mode == "span"  # predictions only: no metrics per fold
                 else _train(base, train_sets, _full_budget(config), mode, None, False).model)
        for ds in new:
            held = fold_ids[ds.task.name] == k
            if held.any():
                pred[ds.task.name][held] = predict_dataset(model, ds.subset(held))
    return pred


def _cv_score(oof: dict[str, np.ndarray], new: Sequence[TransitionDataset]) -> float:
    """Mean over new tasks of out-of-fold mse / label variance (1 - r2); lower is better."""
    return float(np.mean(_cv_errors(oof, new)))


def _cv_errors(oof: dict[str, np.ndarray], new: Sequence[TransitionDataset]) -> np.ndarray:
    """Per transition, its squared out-of-fold error over its task's label variance, weighted so that every new task
    counts equally: the mean is :func:`_cv_score`."""
    parts = []
    for ds in new:
        var = float(np.var(ds.label))
        err = (np.asarray(oof[ds.task.name], np.float64) - ds.label) ** 2
        parts.append(err / (var if var > 1e-12 else 1.0) * (sum(len(d) for d in new) / (len(new) * len(ds))))
    return np.concatenate(parts)


def _standard_error(errors: np.ndarray) -> float:
    return float(np.std(errors, ddof=1) / np.sqrt(len(errors))) if len(errors) > 1 else 0.0


def paired_standard_errors(errors: dict[str, np.ndarray]) -> dict[str, float]:
    """Per mode, the standard error of its per-transition errors minus the best mode's (0 for the best)."""
    best = min(errors, key=lambda m: float(np.mean(errors[m])))
    return {m: _standard_error(e - errors[best]) for m, e in errors.items()}


def one_standard_error_choice(errors: dict[str, np.ndarray]) -> str:
    """The first mode of :data:`SIMPLEST_FIRST` whose mean error exceeds the lowest by at most one standard error
    of their paired difference (:func:`paired_standard_errors`).

    :param errors: per mode, the per-transition errors of :func:`_cv_errors` on the same transitions (lower is
        better).
    """
    means = {m: float(np.mean(e)) for m, e in errors.items()}
    best = min(means, key=lambda m: means[m])
    se = paired_standard_errors(errors)
    return next(m for m in SIMPLEST_FIRST if m in means and means[m] - means[best] <= se[m])


def _metrics_from(pred: np.ndarray, ds: TransitionDataset) -> dict[str, Any]:
    return {"mse": metrics.mse(pred, ds.label), "r2": metrics.r2(pred, ds.label),
            "spearman": metrics.spearman(pred, ds.label),
            "ranking_acc": metrics.ranking_accuracy(ds.episode_returns(pred), ds.episode_returns(ds.label)),
            "n_val": len(ds)}


def old_head_changes(before: RewardModel, after: RewardModel,
                     datasets: Sequence[TransitionDataset]) -> dict[str, dict[str, float]]:
    """How far each earlier head's predictions moved, on the given transitions of its input group.

    :return: per earlier task: ``max_abs_change``, ``mean_abs_change`` and the mean relative to its label scale
        (``rel_change``); 0 everywhere for a frozen encoder. Tasks with no transitions of their spaces here
        are left out.
    """
    out: dict[str, dict[str, float]] = {}
    for name, head in before.tasks.items():
        same = [ds for ds in datasets if after.tasks[ds.task.name].group == head.group]
        if not same:
            continue
        deltas = np.concatenate([np.abs(predict_dataset(after, _as_task(ds, head.task))
                                        - predict_dataset(before, _as_task(ds, head.task))) for ds in same])
        out[name] = {"max_abs_change": float(deltas.max(initial=0.0)), "mean_abs_change": float(deltas.mean()),
                     "rel_change": float(deltas.mean() / head.label_std) if head.label_std > 0 else 0.0}
    return out


def _as_task(ds: TransitionDataset, task: Any) -> TransitionDataset:
    return replace(ds, task=task)
