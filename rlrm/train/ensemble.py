"""Train a :class:`~rlrm.model.RewardEnsemble`: K members, each with its own seed and bootstrap of the data.

Steps (:func:`train_ensemble`):

1. Hold out episodes per task with the loop's own split (:func:`~rlrm.train.loop.split_seed` of the base seed),
   so the ensemble's held-out episodes are the ones a single model trained with that config holds out, and no
   member ever trains on them.
2. Per member ``i``: resample the remaining episodes of each task with replacement (whole episodes: neighbouring
   transitions are not independent), then train with seed ``seed + i`` (its own initialization, batches and
   early-stopping split).
3. Metrics of the ensemble's mean on the held-out episodes, as the loop reports them, plus the members' mean std.

Bootstrap by resampling, not by weighting: the loop takes datasets, not weights. An episode drawn twice is copied
under a new episode id (ids are renumbered in draw order), so the dataset stays valid (sorted, one end per
episode). The price: two copies of one episode may fall on both sides of a member's early-stopping split, which
makes that member's validation loss optimistic (it may stop later); the held-out metrics are not affected.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import EQUAL, LEFT, PreferenceDataset
from rlrm.errors import ConfigError
from rlrm.model.ensemble import RewardEnsemble
from rlrm.model.network import ModelConfig
from rlrm.train.heldout import task_metrics
from rlrm.train.loop import TrainConfig, TrainResult, split_seed, train_reward_model


@dataclass
class EnsembleTrainResult:
    """What :func:`train_ensemble` produced: the ensemble, held-out metrics of its mean per task, and each
    member's own :class:`TrainResult`. ``history``/``best_epoch`` are member 0's (the fields a
    :class:`TrainResult` reader expects); ``seconds`` is the total."""

    model: RewardEnsemble
    metrics: dict[str, dict[str, Any]]
    members: list[TrainResult] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    transitions_per_s: float = 0.0


def bootstrap_episodes(ds: TransitionDataset, rng: np.random.Generator) -> TransitionDataset:
    """``ds``'s episodes drawn with replacement, as many as it has; each draw gets its own episode id
    ``0..n-1`` (a repeated episode is copied), rows sorted by (episode, step)."""
    _, starts, lengths = np.unique(ds.episode, return_index=True, return_counts=True)
    draws = np.sort(rng.integers(0, len(starts), size=len(starts)))
    lens = lengths[draws]
    offsets = np.repeat(np.cumsum(lens) - lens, lens)  # where each draw's rows begin in the result
    rows = np.repeat(starts[draws], lens) + np.arange(int(lens.sum())) - offsets
    boot = ds.subset(rows)
    boot = replace(boot, episode=np.repeat(np.arange(len(draws), dtype=np.int64), lens))
    boot.validate("bootstrap")
    return boot


def train_ensemble(datasets: Sequence[TransitionDataset], k: int, config: TrainConfig | None = None,
                   model_config: ModelConfig | None = None, progress: bool = True,
                   **train_kwargs: Any) -> EnsembleTrainResult | TrainResult:
    """Train ``k`` reward models on bootstrap resamples of ``datasets`` (see the module docstring).

    :param k: members; 1 trains one model on all the data (a plain :class:`TrainResult`).
    :param train_kwargs: passed to every :func:`~rlrm.train.loop.train_reward_model` call (``tracker``,
        ``preferences``...). Preference pairs touching a held-out episode are held out from every member; the
        others are not resampled: every member gets them all.
    :raise ConfigError: ``k < 1``, or what the loop refuses.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"ensemble size: expected a member count of at least 1, got {k!r}")
    cfg = config or TrainConfig()
    if k == 1:
        return train_reward_model(datasets, cfg, model_config=model_config, progress=progress, **train_kwargs)
    if "model" in train_kwargs:
        raise ConfigError("model: an ensemble trains new members; extending a trained model takes k = 1")
    start = time.perf_counter()
    splits = {ds.task.name: ds.split_by_episode(cfg.val_frac, seed=split_seed(ds.task.name, cfg.seed))
              for ds in datasets}
    pref_splits = [_split_preferences(p, ds, splits, cfg) for p, ds in train_kwargs.pop("preferences", ())]
    results = []
    for i in range(k):
        rng = np.random.default_rng([cfg.seed, i])
        resampled = [bootstrap_episodes(train, rng) for train, _ in splits.values()]
        results.append(train_reward_model(resampled, replace(cfg, seed=cfg.seed + i), model_config=model_config,
                                          progress=progress, preferences=[(train, ds) for train, _, ds in pref_splits],
                                          **train_kwargs))
    ensemble = RewardEnsemble([r.model for r in results])
    metrics = {name: _heldout(ensemble, train, held) for name, (train, held) in splits.items()}
    for _, held, ds in pref_splits:
        metrics.setdefault(ds.task.name, {"feedback": "preferences"}).update(_pref_heldout(ensemble, held, ds))
    ensemble.meta = {"training": {**asdict(cfg), "ensemble": k, "bootstrap": "episodes", "member_seeds":
                                  [cfg.seed + i for i in range(k)],
                                  "members": [{"best_epoch": r.best_epoch, "epochs_run": len(r.history)}
                                              for r in results],
                                  "validation_episodes": {n: np.unique(h.episode).tolist()
                                                          for n, (_, h) in splits.items()}},
                     "metrics": metrics}
    seconds = time.perf_counter() - start
    return EnsembleTrainResult(ensemble, metrics, results, results[0].history, results[0].best_epoch, seconds,
                               float(np.mean([r.transitions_per_s for r in results])))


def _split_preferences(prefs: PreferenceDataset, ds: TransitionDataset,
                       splits: dict[str, tuple[TransitionDataset, TransitionDataset]], cfg: TrainConfig
                       ) -> tuple[PreferenceDataset, PreferenceDataset | None, TransitionDataset]:
    """(training pairs, held-out pairs or None, transitions): a pair is held out if a side touches a held-out
    episode (the task's labeled dataset's, else a split of the preferences' transitions by ``split_seed``)."""
    name = ds.task.name
    held_eps = np.unique(splits[name][1].episode) if name in splits else np.unique(
        ds.split_by_episode(cfg.val_frac, seed=split_seed(name, cfg.seed))[1].episode)
    left, right = prefs.segment_rows(ds)
    in_held = np.isin(ds.episode, held_eps)
    mask = left >= 0
    held = (in_held[left.clip(0)] & mask).any(1) | (in_held[right.clip(0)] & mask).any(1)
    if held.all():
        raise ConfigError(f"task {name!r}: every preference pair touches a held-out episode; give more pairs")

    def part(keep: np.ndarray) -> PreferenceDataset:
        return PreferenceDataset.from_pairs(ds, prefs.pairs.subset(keep), prefs.label[keep],
                                            [prefs.sources[j] for j in prefs.source[keep]], prefs.dataset_dir,
                                            prefs.info)

    return part(~held), part(held) if held.any() else None, ds


def _pref_heldout(ensemble: RewardEnsemble, held: PreferenceDataset | None, ds: TransitionDataset
                  ) -> dict[str, Any]:
    """Preference accuracy of the ensemble's mean on held-out pairs (answered left or right)."""
    if held is None:
        return {"pref_acc": float("nan"), "n_pairs_val": 0}
    rewards = ensemble.predict(ds.task.name, ds.obs, ds.action, ds.next_obs, ds.terminated)
    left, right = held.segment_returns(rewards)
    decided = held.label != EQUAL
    correct = (left > right) == (held.label == LEFT)
    return {"pref_acc": float(correct[decided].mean()) if decided.any() else float("nan"),
            "n_pairs_val": len(held)}


def _heldout(ensemble: RewardEnsemble, train: TransitionDataset, held: TransitionDataset) -> dict[str, Any]:
    """The loop's held-out metrics of the ensemble's mean, and the members' mean std on those transitions."""
    row: dict[str, Any] = {"n_train": len(train), "n_val": len(held), **task_metrics(ensemble, held)}
    if len(held):
        _, std = ensemble.predict(held.task.name, held.obs, held.action, held.next_obs, held.terminated,
                                  return_std=True)
        row["member_std"] = float(np.mean(std))
    return row
