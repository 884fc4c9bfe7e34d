"""The reward-training loop: every step takes a sub-batch from each task and sums their losses.

Named steps: :func:`_setup` (heads, splits, statistics), :func:`_epoch`, :func:`_validate`, then the best
validation epoch's weights are kept (:func:`_fit`) and every task gets held-out metrics (:func:`_report`).
A task with constant labels predicts its mean exactly (``label_std`` 0): it gets a head and metrics, but no
share of the batches and no say in early stopping.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlrm import metrics
from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import PreferenceDataset
from rlrm.errors import ConfigError
from rlrm.model.network import ModelConfig, RewardModel, check_label_transform, head_key
from rlrm.tracking import NullTracker, Tracker
from rlrm.train import bradley_terry as bt
from rlrm.train.heldout import predict_dataset, task_metrics
from rlrm.train.weighting import TASK_WEIGHTING, TaskWeighting, make_weighting

SAMPLING = ("balanced", "proportional")


@dataclass
class TrainConfig:
    """Reward-training settings.

    :param sampling: ``balanced`` (every task gets the same share of each batch) or ``proportional``
        (shares follow dataset sizes).
    :param patience: epochs without validation improvement before stopping (0 disables early stopping).
    :param freeze_encoder: train only heads and new stems (few-shot: a new task on a trained encoder).
    :param min_epoch_steps: optimizer steps per epoch, at least: a small dataset gets epochs of several passes (an
        epoch is then a validation period), so 64 labels train for ``epochs * min_epoch_steps`` steps (1,000 by
        default) rather than ~50.
    :param task_weighting: how tasks share the update of the shared weights (:mod:`rlrm.train.weighting`).
    :param pref_batch: preference pairs per step and task (Bradley-Terry loss; :mod:`rlrm.train.bradley_terry`).
    :param finetune_lr_scale: when extending a trained model without freezing it, its existing weights learn at
        ``lr * finetune_lr_scale`` (new heads and stems at ``lr``), so a few labels adjust the encoder
        rather than overwrite what it learned from the other tasks.
    :param label_transform: for the tasks this training adds: ``none``, or ``symlog`` (the head fits
        ``sign(y) log(1 + |y|)``; for rewards with rare large bonuses over small dense terms,
        :data:`rlrm.model.network.LABEL_TRANSFORMS`). A task the model has keeps its own.
    """

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_frac: float = 0.1
    seed: int = 0
    sampling: str = "balanced"
    patience: int = 5
    freeze_encoder: bool = False
    min_epoch_steps: int = 20
    # uncertainty: the best training-task r2 on all three families in benchmarks/RESULTS.md (label efficiency)
    task_weighting: str = "uncertainty"
    finetune_lr_scale: float = 0.1
    pref_batch: int = 32
    label_transform: str = "none"

    def __post_init__(self) -> None:
        check_label_transform(self.label_transform)
        if self.sampling not in SAMPLING:
            raise ConfigError(f"sampling {self.sampling!r}: expected one of {SAMPLING}")
        if self.task_weighting not in TASK_WEIGHTING:
            raise ConfigError(f"task_weighting {self.task_weighting!r}: expected one of {', '.join(TASK_WEIGHTING)}")
        if self.pref_batch < 1:
            raise ConfigError(f"pref_batch must be >= 1 preference pairs, got {self.pref_batch}")
        if self.min_epoch_steps < 1 or not 0 < self.finetune_lr_scale <= 1:
            raise ConfigError(f"min_epoch_steps must be >= 1 and finetune_lr_scale in (0, 1], got "
                              f"{self.min_epoch_steps} and "
                              f"{self.finetune_lr_scale}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError(f"epochs, batch_size and lr must be positive (got {self.epochs}, {self.batch_size}, "
                              f"{self.lr})")
        if not 0.0 <= self.val_frac < 1.0:
            raise ConfigError(f"val_frac must be in [0, 1), got {self.val_frac}")


@dataclass
class TrainResult:
    """What training produced: the model (best validation epoch), per-task metrics, the loss history."""

    model: RewardModel
    metrics: dict[str, dict[str, Any]]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    transitions_per_s: float = 0.0


def split_seed(task: str, seed: int) -> int:
    """The seed of ``task``'s train/validation split: a stable hash of its name and ``seed``, so its held-out
    episodes do not depend on the other tasks trained beside it (Python's ``hash()`` changes per process)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{task}".encode()).digest()[:8], "little")


@dataclass
class _TaskData:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    train: TransitionDataset
    val: TransitionDataset
    share: int = 0
    z_train: torch.Tensor | None = None  # standardized labels
    z_val: torch.Tensor | None = None
    perm: torch.Tensor | None = None
    pos: int = 0


def _next_indices(td: _TaskData, k: int, gen: torch.Generator) -> torch.Tensor:
    """The next ``k`` indices of an endless sequence of shuffled passes over the task's training rows."""
    n = len(td.y_train)
    out = []
    while k > 0:
        if td.perm is None or td.pos >= n:
            td.perm, td.pos = torch.randperm(n, generator=gen), 0
        take = min(k, n - td.pos)
        out.append(td.perm[td.pos:td.pos + take])
        td.pos += take
        k -= take
    return out[0] if len(out) == 1 else torch.cat(out)


def _shares(sizes: list[int], batch: int, sampling: str) -> list[int]:
    if sampling == "balanced":
        base = [batch // len(sizes)] * len(sizes)
    else:
        total = sum(sizes)
        base = [int(batch * s / total) for s in sizes]
    for i in range(batch - sum(base)):  # hand out the remainder
        base[i % len(base)] += 1
    return [max(1, b) for b in base]


@dataclass
class _Setup:
    """Everything an epoch needs: all tasks' data, the ones that train (non-constant labels), the optimizer."""

    data: list[_TaskData]
    trained: list[_TaskData]
    opt: torch.optim.Optimizer
    steps: int
    gen: torch.Generator
    val_episodes: dict[str, list[int]]
    weighting: TaskWeighting
    prefs: list[bt.PreferenceData] = field(default_factory=list)


def train_reward_model(datasets: Sequence[TransitionDataset], config: TrainConfig | None = None,
                       model: RewardModel | None = None, model_config: ModelConfig | None = None,
                       tracker: Tracker | None = None, progress: bool = True,
                       preferences: Sequence[tuple[PreferenceDataset, TransitionDataset]] = (),
                       validation: Mapping[str, np.ndarray] | None = None) -> TrainResult:
    """Train (or extend) a reward model on the labeled transitions and segment preferences of one or more tasks.

    :param datasets: labeled transitions (regression on the labels), at most one dataset per task.
    :param preferences: ``(preferences, the transitions they point into)`` per task, at most one per task
        (Bradley-Terry loss); a task may have labels, preferences or both, and every task shares the encoder. The
        transitions' own labels are not trained on unless the dataset is also in ``datasets``.
    :param model: an existing model to extend: tasks it lacks get new heads; with
        ``config.freeze_encoder`` only the new heads/stems are trained. A task it has keeps the validation
        episodes stored with it.
    :param validation: per task of ``datasets``, a boolean mask of its rows held out for validation, instead of
        the episode split (the online loop holds out a share of each round's transitions: its rounds span one or
        two episodes).
    :return: a :class:`TrainResult` whose model holds the weights of the best validation epoch.
    """
    cfg = config or TrainConfig()
    names = [ds.task.name for ds in datasets]
    pref_names = [ds.task.name for _, ds in preferences]
    if not datasets and not preferences:
        raise ConfigError("no datasets or preferences to train on")
    for what, seen in (("datasets", names), ("preference sets", pref_names)):
        if len(set(seen)) != len(seen):
            raise ConfigError(f"two {what} for the same task: {seen}; merge them (rlrm.data.dataset.concat "
                              "for datasets) or rename a task")
    torch.manual_seed(cfg.seed)
    model = model if model is not None else RewardModel(model_config)
    start = time.perf_counter()
    setup = _setup(model, datasets, cfg, preferences, validation or {})
    history, best_epoch, t_train = _fit(model, setup, cfg, tracker or NullTracker(), progress)
    for pd in setup.prefs:
        if pd.name not in names:  # preferences alone fix the reward up to shift and scale
            bt.standardize(model, pd)
    seen = len(history) * setup.steps * sum(d.share for d in setup.trained)
    results = _report(model, setup, cfg, history, best_epoch)
    return TrainResult(model, results, history, best_epoch, time.perf_counter() - start,
                       seen / t_train if t_train > 0 else 0.0)


def _setup(model: RewardModel, datasets: Sequence[TransitionDataset], cfg: TrainConfig,
           preferences: Sequence[tuple[PreferenceDataset, TransitionDataset]] = (),
           validation: Mapping[str, np.ndarray] | None = None) -> _Setup:
    """Add heads for new tasks, split each dataset, fit what is new (statistics, label scales), build the optimizer."""
    stored = dict(model.meta.get("training", {}).get("validation_episodes") or {})
    everything = [*datasets, *(ds for _, ds in preferences)]
    new_tasks = list(dict.fromkeys(ds.task.name for ds in everything if ds.task.name not in model.tasks))
    groups_before = set(model.groups)
    for ds in everything:
        if ds.task.name in new_tasks and ds.task.name not in model.tasks:
            model.add_task(ds.task, ds.obs_space, ds.action_space).label_transform = cfg.label_transform
    for _, ds in preferences:
        if model.tasks[ds.task.name].label_transform != "none":
            raise ConfigError(f"task {ds.task.name!r}: preferences fix a reward up to shift and scale, which a "
                              f"{model.tasks[ds.task.name].label_transform} label transform does not commute with; "
                              "train preferences without --label-transform")
    new_groups = set(model.groups) - groups_before
    masks = validation or {}
    data = [_task_data(model, ds, cfg, stored.get(ds.task.name) if ds.task.name not in new_tasks else None,
                       masks.get(ds.task.name)) for ds in datasets]
    val_of = {d.name: np.unique(d.val.episode) for d in data}
    prefs = [bt.prepare(model, p, ds, _pref_val_episodes(ds, cfg, val_of, stored, new_tasks), cfg.pref_batch)
             for p, ds in preferences]
    # Statistics come from training rows only, and only for what is new: a trained group keeps its own.
    for gid in new_groups:
        x = torch.cat([d.x_train for d in data if model.tasks[d.name].group == gid]
                      + [pd.x[torch.from_numpy(pd.train_rows)] for pd in prefs
                         if model.tasks[pd.name].group == gid]).double()
        model.set_normalization(gid, x.mean(0).numpy(), x.std(0, unbiased=False).numpy(), x.min(0).values.numpy(),
                                x.max(0).values.numpy())
    for d in data:
        if d.name in new_tasks:
            model.set_label_scale(d.name, float(d.y_train.mean()), float(d.y_train.std(unbiased=False)))
        info = model.tasks[d.name]  # heads learn standardized labels (one fused mse per task)
        d.z_train = (d.y_train - info.label_mean) / (info.label_std or 1.0)
        d.z_val = (d.y_val - info.label_mean) / (info.label_std or 1.0)
    trained = [d for d in data if model.tasks[d.name].label_std > 0]
    if cfg.freeze_encoder:  # a trained task's head is frozen too: its loss could move nothing
        trained = [d for d in trained if d.name in new_tasks]
        prefs = [pd for pd in prefs if pd.name in new_tasks]
    if any(model.tasks[pd.name].label_std == 0 for pd in prefs):
        bad = next(pd.name for pd in prefs if model.tasks[pd.name].label_std == 0)
        raise ConfigError(f"task {bad!r}: its labels are constant, so its reward is that constant; preferences "
                          "cannot change it (train the preferences under another task name)")
    for d, s in zip(trained, _shares([len(d.y_train) for d in trained], cfg.batch_size, cfg.sampling)
                    if trained else []):
        d.share = s
    _set_trainable(model, cfg, new_tasks, new_groups)
    groups = {model.tasks[name].group for name in [*(d.name for d in trained), *(pd.name for pd in prefs)]}
    shared = [p for gid in sorted(groups) for p in model.stems[gid].parameters()]
    weighting = make_weighting(cfg.task_weighting, [*(d.name for d in trained),
                                                    *(f"{pd.name} (preferences)" for pd in prefs)],
                               [*shared, *model.encoder.parameters()], cfg.seed)
    opt = _optimizer(model, cfg, new_tasks, new_groups, weighting)
    steps = max(1, math.ceil(sum(len(d.y_train) for d in trained) / cfg.batch_size),
                *(math.ceil(pd.n_train / cfg.pref_batch) for pd in prefs), cfg.min_epoch_steps)
    val_episodes = {**stored, **{pd.name: np.unique(pd.val_transitions.episode).tolist() for pd in prefs},
                    **{d.name: np.setdiff1d(d.val.episode, d.train.episode).tolist() for d in data}}
    return _Setup(data, trained, opt, steps, torch.Generator().manual_seed(cfg.seed), val_episodes, weighting,
                  prefs)


def _pref_val_episodes(ds: TransitionDataset, cfg: TrainConfig, val_of: dict[str, np.ndarray],
                       stored: dict[str, list[int]], new_tasks: list[str]) -> np.ndarray:
    """Validation episodes of a preference task: its labeled dataset's, else the stored ones of a task the model
    has, else a split of its transitions by :func:`split_seed`."""
    name = ds.task.name
    if name in val_of:
        return val_of[name]
    if name not in new_tasks and stored.get(name):
        return np.asarray(stored[name], np.int64)
    _, val = ds.split_by_episode(cfg.val_frac, seed=split_seed(name, cfg.seed))
    return np.unique(val.episode)


def _task_data(model: RewardModel, ds: TransitionDataset, cfg: TrainConfig,
               val_episodes: list[int] | None, val_mask: np.ndarray | None = None) -> _TaskData:
    """Split ``ds`` by ``val_mask`` if given, else by episode (the stored validation episodes of a task the model
    has, if the data hold any of them, else by :func:`split_seed`), and compute its features."""
    if val_mask is not None:
        val_mask = np.asarray(val_mask, bool)
        if val_mask.shape != (len(ds),):
            raise ConfigError(f"task {ds.task.name!r}: validation mask of shape {val_mask.shape}, expected "
                              f"({len(ds)},), one flag per transition")
    in_val = val_mask if val_mask is not None else np.isin(ds.episode, np.asarray(val_episodes or [], np.int64))
    if in_val.any():
        train, val = ds.subset(~in_val), ds.subset(in_val)
    else:
        train, val = ds.split_by_episode(cfg.val_frac, seed=split_seed(ds.task.name, cfg.seed))
    if len(train) == 0:
        raise ConfigError(f"task {ds.task.name!r}: no training transitions after the validation split")
    feats = [torch.from_numpy(model.features(ds.task.name, d.obs, d.action, d.next_obs, d.terminated))
             for d in (train, val)]
    head = model.tasks[ds.task.name]  # labels in the units the head is fit in (its label transform)
    return _TaskData(ds.task.name, feats[0], torch.from_numpy(head.transform(train.label).astype(np.float32)),
                     feats[1], torch.from_numpy(head.transform(val.label).astype(np.float32)), train, val)


def _set_trainable(model: RewardModel, cfg: TrainConfig, new_tasks: list[str], new_groups: set[str]) -> None:
    if cfg.freeze_encoder:
        model.requires_grad_(False)
        for name in new_tasks:
            model.heads[head_key(name)].requires_grad_(True)
        for gid in new_groups:
            model.stems[gid].requires_grad_(True)


def _optimizer(model: RewardModel, cfg: TrainConfig, new_tasks: list[str], new_groups: set[str],
               weighting: TaskWeighting) -> torch.optim.Optimizer:
    """Adam over what trains: new heads/stems (and a new model's everything) at ``lr``; a trained model's existing
    weights, when not frozen, at ``lr * finetune_lr_scale``."""
    new = {id(p) for name in new_tasks for p in model.heads[head_key(name)].parameters()}
    new |= {id(p) for gid in new_groups for p in model.stems[gid].parameters()}
    extending = len(new_tasks) < len(model.tasks) or not new_tasks
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: the encoder is frozen and every task already has a head")
    fresh = [p for p in params if id(p) in new or not extending]
    old = [p for p in params if id(p) not in new and extending]
    groups = [{"params": fresh + weighting.parameters(), "lr": cfg.lr}]
    if old:
        groups.append({"params": old, "lr": cfg.lr * cfg.finetune_lr_scale})
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _fit(model: RewardModel, setup: _Setup, cfg: TrainConfig, tracker: Tracker,
         progress: bool) -> tuple[list[dict[str, float]], int, float]:
    """Epochs until ``cfg.epochs`` or early stopping; loads the best validation epoch's weights.

    :return: (history, best epoch, seconds spent in training steps). No epoch runs when every task's labels
        are constant: there is nothing to fit.
    """
    best = (math.inf, 0, copy.deepcopy(model.state_dict()))
    history: list[dict[str, float]] = []
    t_train = 0.0
    epochs = range(1, cfg.epochs + 1) if setup.trained or setup.prefs else range(0)
    bar = tqdm(epochs, desc="train reward", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        train_loss = _epoch(model, setup)
        t_train += time.perf_counter() - t0
        row = {"epoch": epoch, "train/loss": train_loss, **_validate(model, setup),
               **setup.weighting.state()}
        row["val/loss"] = row.get("val/loss", train_loss)
        history.append(row)
        tracker.log(row, step=epoch)
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{row['val/loss']:.4f}")
        if row["val/loss"] < best[0] - 1e-7:
            best = (row["val/loss"], epoch, copy.deepcopy(model.state_dict()))
        elif cfg.patience and epoch - best[1] >= cfg.patience:
            break
    model.load_state_dict(best[2])
    model.eval()
    model.requires_grad_(True)
    return history, best[1], t_train


def _epoch(model: RewardModel, setup: _Setup) -> float:
    """One pass of ``setup.steps`` optimizer steps; each batch holds every trained task's share. Returns the mean
    loss."""
    model.train()
    total = sum(d.share for d in setup.trained)
    terms = len(setup.trained) + len(setup.prefs)
    weights = [d.share / total * len(setup.trained) / terms for d in setup.trained] + [1 / terms] * len(setup.prefs)
    running = 0.0
    for _ in range(setup.steps):
        losses = []
        for d in setup.trained:
            idx = _next_indices(d, d.share, setup.gen)
            losses.append(F.mse_loss(model.forward_standardized(d.name, d.x_train[idx]), d.z_train[idx]))
        losses += [bt.loss(model, pd, setup.gen) for pd in setup.prefs]
        setup.opt.zero_grad(set_to_none=True)
        loss = setup.weighting.backward(losses, weights)
        setup.opt.step()
        running += float(loss.detach())
    model.eval()
    return running / setup.steps


@torch.no_grad()
def _validate(model: RewardModel, setup: _Setup) -> dict[str, float]:
    """Validation loss per trained task (standardized units; preferences: cross-entropy), R² from the same numbers,
    preference accuracy, and the mean loss."""
    row: dict[str, float] = {}
    losses = []
    for pd in setup.prefs:
        out = bt.validate(model, pd)
        if out:
            row[f"val/{pd.name}/pref_loss"], row[f"val/{pd.name}/pref_acc"] = out["loss"], out["acc"]
            losses.append(out["loss"])
    for d in setup.trained:
        if not len(d.y_val):
            continue
        loss = float(F.mse_loss(model.forward_standardized(d.name, d.x_val), d.z_val))
        row[f"val/{d.name}/loss"] = loss
        losses.append(loss)
        var = float(d.y_val.var(unbiased=False))
        if var > 1e-12:  # mse = loss * label_std², R² = 1 - mse / var(labels)
            row[f"val/{d.name}/r2"] = 1.0 - loss * model.tasks[d.name].label_std ** 2 / var
    if losses:
        row["val/loss"] = float(np.mean(losses))
    return row


def _report(model: RewardModel, setup: _Setup, cfg: TrainConfig, history: list[dict[str, float]],
            best_epoch: int) -> dict[str, dict[str, Any]]:
    """Held-out metrics of every task (constant ones too), recorded in the model's metadata with the config."""
    results: dict[str, dict[str, Any]] = {}
    for d in setup.data:
        results[d.name] = {"n_train": len(d.train), "n_val": len(d.val), **task_metrics(model, d.val)}
        results[d.name]["train_r2"] = metrics.r2(predict_dataset(model, d.train), d.train.label)
    for pd in setup.prefs:
        if pd.name not in results:  # preferences only: the transitions' labels are the teacher's reward, if any;
            # r2/mse against them mean nothing for a reward known up to shift and scale
            quality = task_metrics(model, pd.val_transitions)
            results[pd.name] = {"n_train": len(pd.train_rows), "n_val": len(pd.val_transitions), **quality,
                                "mse": float("nan"), "r2": float("nan"), "feedback": "preferences"}
        else:
            results[pd.name]["feedback"] = "labels+preferences"
        results[pd.name].update(bt.report(model, pd))
    model.meta["training"] = {**asdict(cfg), "best_epoch": best_epoch, "epochs_run": len(history),
                              "datasets": {d.name: d.train.info for d in setup.data},
                              "preferences": {pd.name: {**pd.prefs.info, "pairs": len(pd.prefs),
                                                        "sources": pd.prefs.sources} for pd in setup.prefs},
                              "constant_labels": [d.name for d in setup.data if not d.share],
                              "validation_episodes": setup.val_episodes,
                              "steps_per_epoch": setup.steps, "weighting": setup.weighting.state()}
    model.meta["metrics"] = results
    return results
