"""``RewardEnsemble``: K reward models of one structure whose spread says where the reward is uncertain.

Members share tasks, input groups and architecture (so one features fill serves them all), but each has its
own weights, feature statistics and label scales (each trains on its own bootstrap of the data, see
:mod:`rlrm.train.ensemble`). The ensemble's reward is the members' mean, its uncertainty their std (ddof 0),
both in label units.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rlrm.errors import ConfigError
from rlrm.model.features import InputGroup
from rlrm.model.network import RewardModel, TaskHead
from rlrm.model.numpy_ensemble import NumpyEnsembleRewardFn

#: at most this many members (a model file asking for more is refused before anything is built)
MAX_MEMBERS = 64


def structure(model: RewardModel) -> dict[str, Any]:
    """What members must share: architecture, input groups (spaces), tasks and their groups."""
    d = model.describe()
    return {"config": d["config"], "groups": d["groups"],
            "tasks": {t: (h["task"], h["group"]) for t, h in d["tasks"].items()}}


class RewardEnsemble:
    """K ≥ 2 :class:`RewardModel` members of one structure; rewards are their mean, uncertainty their std.

    Reads like a model where code only reads: :attr:`tasks`, :attr:`groups`, :meth:`head_info` and
    :meth:`group_of` are member 0's (label scales differ per member: see each member's own), :meth:`features`
    and :meth:`forward` (the members' mean, differentiable) take the same arguments, :meth:`reward_fn` gives the
    fast NumPy function. :attr:`meta` is the ensemble's own (training config, metrics of the mean).
    """

    def __init__(self, members: Sequence[RewardModel], meta: dict[str, Any] | None = None) -> None:
        members = list(members)
        if len(members) < 2 or len(members) > MAX_MEMBERS:
            raise ConfigError(f"a reward ensemble needs 2 to {MAX_MEMBERS} members, got {len(members)}")
        first = structure(members[0])
        for i, m in enumerate(members[1:], 1):
            if structure(m) != first:
                raise ConfigError(f"ensemble member {i} differs in structure (config, spaces or tasks) from member 0; "
                                  "expected members of one structure")
        self.members = members
        self.meta: dict[str, Any] = dict(meta or {})

    # ------------------------------------------------------------------ what code reads from a model
    @property
    def k(self) -> int:
        """Number of members."""
        return len(self.members)

    @property
    def config(self) -> Any:
        return self.members[0].config

    @property
    def tasks(self) -> dict[str, TaskHead]:
        return self.members[0].tasks

    @property
    def groups(self) -> dict[str, InputGroup]:
        return self.members[0].groups

    def head_info(self, task: str) -> TaskHead:
        """Member 0's :class:`TaskHead` of ``task`` (its task and group are every member's)."""
        return self.members[0].head_info(task)

    def group_of(self, task: str) -> InputGroup:
        return self.members[0].group_of(task)

    def eval(self) -> RewardEnsemble:
        for m in self.members:
            m.eval()
        return self

    # ------------------------------------------------------------------ computation
    def features(self, task: str, obs: Any, action: Any, next_obs: Any, done: Any) -> np.ndarray:
        """Raw features of a batch (the same for every member)."""
        return self.members[0].features(task, obs, action, next_obs, done)

    def forward(self, task: str, features: torch.Tensor) -> torch.Tensor:
        """The members' mean reward (label units) of feature rows, shape ``(n,)``."""
        return torch.stack([m(task, features) for m in self.members]).mean(0)

    __call__ = forward

    @torch.no_grad()
    def predict_members(self, task: str, obs: Any, action: Any, next_obs: Any, done: Any) -> np.ndarray:
        """Every member's rewards, float32 ``(K, n)``."""
        feats = torch.from_numpy(self.features(task, obs, action, next_obs, done))
        return torch.stack([m(task, feats) for m in self.members]).numpy().astype(np.float32, copy=False)

    def predict(self, task: str, obs: Any, action: Any, next_obs: Any, done: Any,
                return_std: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Mean reward over members, float32 ``(n,)``; with ``return_std`` also their std (ddof 0)."""
        y = self.predict_members(task, obs, action, next_obs, done).astype(np.float64)
        mean = y.mean(0).astype(np.float32)
        return (mean, y.std(0).astype(np.float32)) if return_std else mean

    def reward_fn(self, task: str, dtype: str = "auto", compiled: bool = True) -> NumpyEnsembleRewardFn:
        """The fast NumPy function of ``task``: ``__call__`` gives the mean, ``with_std`` (mean, std) of one
        evaluation; a snapshot of the current weights.

        :param dtype: as :meth:`RewardModel.reward_fn`; ``"auto"`` computes in float64 if any member needs it.
        :param compiled: as :meth:`RewardModel.reward_fn`.
        """
        fns = [m.reward_fn(task, dtype, compiled=False) for m in self.members]
        if len({f.dtype for f in fns}) > 1:
            fns = [m.reward_fn(task, "float64", compiled=False) for m in self.members]
        gid = self.head_info(task).group
        return NumpyEnsembleRewardFn.from_members(fns, [[*m.stems[gid], *m.encoder] for m in self.members], compiled)

    # ------------------------------------------------------------------ (de)serialization helpers
    def describe(self) -> dict[str, Any]:
        """JSON-friendly description: member 0's structure at the top (so readers of ``tasks`` need not know
        ensembles), ``ensemble`` (K), and every member's own description under ``members``."""
        return {**self.members[0].describe(), "meta": copy.deepcopy(self.meta), "ensemble": self.k,
                "members": [m.describe() for m in self.members]}


def predict_members(model: RewardModel | RewardEnsemble, task: str, obs: Any, action: Any, next_obs: Any,
                    done: Any) -> np.ndarray:
    """``(K, n)`` member rewards of an ensemble, or ``(1, n)`` of a single model, so callers treat both alike."""
    if isinstance(model, RewardEnsemble):
        return model.predict_members(task, obs, action, next_obs, done)
    return model.predict(task, obs, action, next_obs, done)[None]
