"""The reward-training loop: every step takes a sub-batch from each task and sums their losses."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlrm.data.dataset import TransitionDataset
from rlrm.errors import ConfigError
from rlrm.model.network import ModelConfig, RewardModel, head_key
from rlrm.tracking import NullTracker, Tracker
from rlrm.train.heldout import task_metrics

SAMPLING = ("balanced", "proportional")


@dataclass
class TrainConfig:
    """Reward-training settings.

    :param sampling: ``balanced`` (every task gets the same share of each batch) or ``proportional``
        (shares follow dataset sizes).
    :param patience: epochs without validation improvement before stopping (0 disables early stopping).
    :param freeze_encoder: train only heads and new stems (few-shot: a new task on a trained encoder).
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

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING:
            raise ConfigError(f"sampling {self.sampling!r}: expected one of {SAMPLING}")
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


def train_reward_model(datasets: Sequence[TransitionDataset], config: TrainConfig | None = None,
                       model: RewardModel | None = None, model_config: ModelConfig | None = None,
                       tracker: Tracker | None = None, progress: bool = True) -> TrainResult:
    """Train (or extend) a reward model on the datasets of one or more tasks.

    :param model: an existing model to extend: tasks it lacks get new heads; with
        ``config.freeze_encoder`` only the new heads/stems are trained.
    :return: a :class:`TrainResult` whose model holds the weights of the best validation epoch.
    """
    cfg = config or TrainConfig()
    tracker = tracker or NullTracker()
    if not datasets:
        raise ConfigError("no datasets to train on")
    names = [ds.task.name for ds in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"two datasets for the same task: {names}; merge them or rename a task")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = model if model is not None else RewardModel(model_config)
    new_tasks = [ds for ds in datasets if ds.task.name not in model.tasks]
    new_groups = set()
    for ds in new_tasks:
        before = set(model.groups)
        model.add_task(ds.task, ds.obs_space, ds.action_space)
        new_groups |= set(model.groups) - before

    data: list[_TaskData] = []
    for i, ds in enumerate(datasets):
        train, val = ds.split_by_episode(cfg.val_frac, seed=cfg.seed + i)
        if len(train) == 0:
            raise ConfigError(f"task {ds.task.name!r}: no training transitions after the validation split")
        feats = [torch.from_numpy(model.features(ds.task.name, d.obs, d.action, d.next_obs, d.terminated))
                 for d in (train, val)]
        data.append(_TaskData(ds.task.name, feats[0], torch.from_numpy(np.asarray(train.label)), feats[1],
                              torch.from_numpy(np.asarray(val.label)), train, val))
    # Statistics come from training rows only, and only for what is new: a trained group keeps its own.
    for gid in new_groups:
        x = torch.cat([d.x_train for d in data if model.tasks[d.name].group == gid]).double()
        model.set_normalization(gid, x.mean(0).numpy(), x.std(0, unbiased=False).numpy())
    for d in data:
        if any(d.name == ds.task.name for ds in new_tasks):
            model.set_label_scale(d.name, float(d.y_train.mean()), float(d.y_train.std(unbiased=False)))

    if cfg.freeze_encoder:
        model.requires_grad_(False)
        for ds in new_tasks:
            model.heads[head_key(ds.task.name)].requires_grad_(True)
        for gid in new_groups:
            model.stems[gid].requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: the encoder is frozen and every task already has a head")
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    shares = _shares([len(d.y_train) for d in data], cfg.batch_size, cfg.sampling)
    for d, s in zip(data, shares):
        d.share = s
    total = sum(shares)
    steps = max(1, math.ceil(sum(len(d.y_train) for d in data) / cfg.batch_size))
    # the heads learn standardized labels (one fused mse per task, no per-step rescaling); a task with constant
    # labels (label_std 0) predicts its mean exactly, and its head learns z = 0 at scale 1 (unused, harmless)
    scales = {d.name: model.tasks[d.name].label_std or 1.0 for d in data}
    for d in data:
        mean = model.tasks[d.name].label_mean
        d.z_train = (d.y_train - mean) / scales[d.name]
        d.z_val = (d.y_val - mean) / scales[d.name]

    best = (math.inf, 0, copy.deepcopy(model.state_dict()))
    history: list[dict[str, float]] = []
    seen = 0
    t_train = 0.0
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.epochs + 1), desc="train reward", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        t0 = time.perf_counter()
        running = 0.0
        for _ in range(steps):
            loss = None
            for d in data:
                idx = _next_indices(d, d.share, gen)
                term = F.mse_loss(model.forward_standardized(d.name, d.x_train[idx]), d.z_train[idx])
                term = term * (d.share / total) if len(data) > 1 else term
                loss = term if loss is None else loss + term
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(loss.detach())
        t_train += time.perf_counter() - t0
        seen += steps * total
        model.eval()
        val = _val_losses(model, data)
        row = {"epoch": epoch, "train/loss": running / steps, **{f"val/{k}/loss": v for k, v in val.items()}}
        for d in data:  # R² from the same numbers: mse = loss * scale², R² = 1 - mse / var(labels)
            var = float(d.y_val.var(unbiased=False)) if len(d.y_val) else 0.0
            if d.name in val and var > 1e-12 and model.tasks[d.name].label_std > 0:
                row[f"val/{d.name}/r2"] = 1.0 - val[d.name] * scales[d.name] ** 2 / var
        val_loss = float(np.mean(list(val.values()))) if val else row["train/loss"]
        row["val/loss"] = val_loss
        history.append(row)
        tracker.log(row, step=epoch)
        bar.set_postfix(train=f"{row['train/loss']:.4f}", val=f"{val_loss:.4f}")
        if val_loss < best[0] - 1e-7:
            best = (val_loss, epoch, copy.deepcopy(model.state_dict()))
        elif cfg.patience and epoch - best[1] >= cfg.patience:
            break
    model.load_state_dict(best[2])
    model.eval()
    model.requires_grad_(True)
    results = {}
    for d in data:
        results[d.name] = {"n_train": len(d.train), "n_val": len(d.val), **task_metrics(model, d.val)}
        results[d.name]["train_r2"] = task_metrics(model, d.train)["r2"]
    model.meta["training"] = {**asdict(cfg), "best_epoch": best[1], "epochs_run": len(history),
                              "datasets": {d.name: d.train.info for d in data}}
    model.meta["metrics"] = results
    return TrainResult(model, results, history, best[1], time.perf_counter() - start,
                       seen / t_train if t_train > 0 else 0.0)


@torch.no_grad()
def _val_losses(model: RewardModel, data: list[_TaskData]) -> dict[str, float]:
    out = {}
    for d in data:
        if len(d.y_val):
            out[d.name] = float(F.mse_loss(model.forward_standardized(d.name, d.x_val), d.z_val))
    return out
