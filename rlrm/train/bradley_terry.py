"""Learning a task's reward from segment preferences: the Bradley-Terry model (Christiano et al. 2017).

``P(left preferred) = sigmoid(sum_t r(left_t) - sum_t r(right_t))``, fitted by cross-entropy to the answers (left 1,
right 0, equal 0.5), with ``r`` the head's output in its standardized units. Pairs are held out by episode: a pair
with a side in a validation episode is a validation pair, so no validation state is trained on.

A reward learned from preferences alone is known only up to shift and scale; after training, such a task's head is
standardized on its training transitions (mean 0, std 1: :func:`standardize`), so an agent sees a unit-scale reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import EQUAL, PreferenceDataset
from rlrm.errors import ConfigError
from rlrm.model.network import RewardModel


@dataclass
class PreferenceData:
    """One task's preference pairs, split by episode, with the features of every transition they point into."""

    name: str
    prefs: PreferenceDataset
    transitions: TransitionDataset
    x: torch.Tensor  # features of every transition, (n_rows, d)
    train_rows: np.ndarray  # transitions of training episodes
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # left rows, right rows, mask, target
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    val_transitions: TransitionDataset
    share: int = 32
    perm: torch.Tensor | None = None
    pos: int = 0

    @property
    def n_train(self) -> int:
        return len(self.train[3])

    @property
    def n_val(self) -> int:
        return len(self.val[3])


def prepare(model: RewardModel, prefs: PreferenceDataset, ds: TransitionDataset, val_episodes: np.ndarray,
            share: int) -> PreferenceData:
    """Bind ``prefs`` to ``ds``, compute features, and split the pairs: validation if a side is in ``val_episodes``."""
    name = ds.task.name
    if prefs.task_name != name:
        raise ConfigError(f"preferences of task {prefs.task_name!r} point into a dataset of task {name!r}")
    left, right = prefs.segment_rows(ds)
    mask = left >= 0
    in_val = np.isin(ds.episode, val_episodes)
    val_pair = (in_val[left.clip(0)] & mask).any(1) | (in_val[right.clip(0)] & mask).any(1)
    if val_pair.all():
        raise ConfigError(f"task {name!r}: every preference pair touches a validation episode; give more pairs or "
                          "a smaller val_frac")
    target = prefs.label_targets()

    def part(keep: np.ndarray) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(left[keep].clip(0)), torch.from_numpy(right[keep].clip(0)),
                torch.from_numpy(mask[keep].astype(np.float32)), torch.from_numpy(target[keep]))

    x = torch.from_numpy(model.features(name, ds.obs, ds.action, ds.next_obs, ds.terminated))
    return PreferenceData(name, prefs, ds, x, np.flatnonzero(~in_val), part(~val_pair), part(val_pair),  # type: ignore[arg-type]
                          ds.subset(in_val), share)


def logits(model: RewardModel, pd: PreferenceData, part: tuple[torch.Tensor, ...], idx: Any = slice(None)
           ) -> torch.Tensor:
    """``sum r(left) - sum r(right)`` of the pairs ``idx`` of ``part`` (the head's standardized units)."""
    left, right, mask = part[0][idx], part[1][idx], part[2][idx]
    n, width = left.shape
    rows = torch.cat([left.reshape(-1), right.reshape(-1)])
    r = model.forward_standardized(pd.name, pd.x[rows]).view(2, n, width) * mask
    return r[0].sum(1) - r[1].sum(1)


def loss(model: RewardModel, pd: PreferenceData, gen: torch.Generator) -> torch.Tensor:
    """Bradley-Terry cross-entropy on the next ``pd.share`` training pairs (shuffled passes)."""
    n = pd.n_train
    if pd.perm is None or pd.pos + pd.share > n:
        pd.perm, pd.pos = torch.randperm(n, generator=gen), 0
    idx = pd.perm[pd.pos:pd.pos + pd.share]
    pd.pos += pd.share
    return F.binary_cross_entropy_with_logits(logits(model, pd, pd.train, idx), pd.train[3][idx])


@torch.no_grad()
def validate(model: RewardModel, pd: PreferenceData) -> dict[str, float]:
    """Validation cross-entropy and preference accuracy (pairs answered left or right)."""
    if not pd.n_val:
        return {}
    z = logits(model, pd, pd.val)
    target = pd.val[3]
    decided = target != 0.5
    acc = float(((z > 0) == (target > 0.5))[decided].float().mean()) if decided.any() else float("nan")
    return {"loss": float(F.binary_cross_entropy_with_logits(z, target)), "acc": acc}


@torch.no_grad()
def standardize(model: RewardModel, pd: PreferenceData) -> None:
    """Map the head's output to mean 0, std 1 on the task's training transitions (stored as its label scale)."""
    h = model.forward_standardized(pd.name, pd.x[torch.from_numpy(pd.train_rows)]).double()
    mean, std = float(h.mean()), float(h.std(unbiased=False))
    if std < 1e-8:
        model.set_label_scale(pd.name, 0.0, 1.0)
        return
    info = model.head_info(pd.name)
    info.label_mean, info.label_std = -mean / std, 1.0 / std
    info.info["standardized"] = "preferences: mean 0, std 1 on the training transitions"


def report(model: RewardModel, pd: PreferenceData) -> dict[str, Any]:
    """Held-out preference metrics of a task (accuracy, and the pair counts)."""
    out = validate(model, pd)
    return {"pref_acc": out.get("acc", float("nan")), "pref_loss": out.get("loss", float("nan")),
            "n_pairs_train": pd.n_train, "n_pairs_val": pd.n_val,
            "n_equal": int((pd.prefs.label == EQUAL).sum())}
