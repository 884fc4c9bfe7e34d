"""``RewardModel``: input adapters per space → one shared encoder → one head per task.

Layout::

    features = [adapter(obs), adapter(action), adapter(next_obs), done]   (numpy, rlrm.spaces)
    x = (clip(features, low, high) - mean) / std   per input group (tasks with the same spaces share one);
                                                 low/high = mean -/+ CLIP std, or the value of a feature
                                                 that was constant in the training data
    h = stem[group](x)                           Linear + activation (+ LayerNorm): maps any spaces to width[0]
    z = encoder(h)                               shared by every task
    r = head[task](z) * label_std + label_mean   one Linear per task, in label units (label_std 0: constant)

Adding a task adds a head (and a stem if its spaces are new) without touching the encoder.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from rlrm import spaces as sp
from rlrm.errors import ConfigError, ModelFileError, SpaceError
from rlrm.model.features import INPUTS, InputGroup
from rlrm.model.numpy_fn import NumpyRewardFn
from rlrm.tasks import Task

#: activation names accepted in model configs and agent hyperparameters (``policy_kwargs.activation_fn``)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU,
                                           "elu": nn.ELU, "leaky_relu": nn.LeakyReLU}
#: standardized inputs are clipped to +-CLIP (as VecNormalize does): no input can take the network far outside the
#: region its data covered, where an agent would find rewards the data never showed
CLIP = 10.0
#: the std of a feature is at least this fraction of its scale (|mean| + range in the data), and at least STD_MIN
STD_FLOOR = 1e-3
STD_MIN = 1e-6


@dataclass
class ModelConfig:
    """Architecture. ``encoder``: layer widths (the first is the stems' output); ``inputs``: a subset of
    ``obs, action, next_obs, done`` (``done`` is the terminated flag; on by default, since a reward paid when
    an episode ends cannot be told from the state alone)."""

    # 64x64 by default: enough for the shipped tasks and cheap on the wrapper's hot path, where every step pays
    # the MLP's arithmetic (benchmarks/RESULTS.md).
    encoder: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "relu"
    layer_norm: bool = False
    inputs: list[str] = field(default_factory=lambda: ["obs", "action", "next_obs", "done"])

    def __post_init__(self) -> None:
        if not self.encoder or any(int(w) <= 0 for w in self.encoder):
            raise ConfigError(f"encoder widths must be positive integers, got {self.encoder}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation {self.activation!r} unknown; expected one of {sorted(ACTIVATIONS)}")
        bad = [i for i in self.inputs if i not in INPUTS]
        if bad or not self.inputs or len(set(self.inputs)) != len(self.inputs):
            raise ConfigError(f"inputs {self.inputs}: expected distinct names from {list(INPUTS)}")
        self.encoder = [int(w) for w in self.encoder]
        self.inputs = [i for i in INPUTS if i in self.inputs]  # canonical order


#: how a head's labels are transformed before standardization: ``none``, or ``symlog`` (``sign(y) log(1 + |y|)``,
#: as DreamerV3 does for rewards): a rare large bonus (a goal's +100) then no longer dwarfs the small dense
#: rewards around it (an action cost of -0.1 a^2) in the standardized targets, so both are fit
LABEL_TRANSFORMS = ("none", "symlog")


def symlog(y: np.ndarray) -> np.ndarray:
    """``sign(y) * log(1 + |y|)``, elementwise (float64 in, float64 out for float64)."""
    return np.sign(y) * np.log1p(np.abs(y))


def symexp(y: Any) -> Any:
    """The inverse of :func:`symlog`: ``sign(y) * (exp(|y|) - 1)``, for NumPy arrays and torch tensors."""
    if isinstance(y, torch.Tensor):
        return torch.sign(y) * torch.expm1(torch.abs(y))
    return np.sign(y) * np.expm1(np.abs(y))


def check_label_transform(name: str) -> str:
    if name not in LABEL_TRANSFORMS:
        raise ConfigError(f"label_transform {name!r}: expected one of {list(LABEL_TRANSFORMS)}")
    return name


@dataclass
class TaskHead:
    """What the model knows of a task: its definition, input group, label scale and label transform (the head
    predicts ``(transform(r) - label_mean) / label_std``)."""

    task: Task
    group: str
    label_mean: float = 0.0
    label_std: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)
    label_transform: str = "none"

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task.to_dict(), "group": self.group, "label_mean": self.label_mean,
                "label_std": self.label_std, "info": self.info, "label_transform": self.label_transform}

    def transform(self, labels: np.ndarray) -> np.ndarray:
        """Labels in the units the head's scale is fit in (float64)."""
        y = np.asarray(labels, np.float64)
        return symlog(y) if self.label_transform == "symlog" else y


def _block(n_in: int, n_out: int, cfg: ModelConfig) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(n_in, n_out), ACTIVATIONS[cfg.activation]()]
    if cfg.layer_norm:
        layers.append(nn.LayerNorm(n_out))
    return layers


class RewardModel(nn.Module):
    """A multi-task reward model (see module docstring).

    Two faces: :meth:`forward` (differentiable, on feature tensors, for training) and :meth:`predict`
    (no-grad, numpy batches in, numpy rewards out, for environments). :meth:`reward_fn` gives a fast
    NumPy-only :class:`rlrm.reward_fn.RewardFn` for wrappers.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        widths = self.config.encoder
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += _block(a, b, self.config)
        self.encoder = nn.Sequential(*layers)
        self.stems = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.groups: dict[str, InputGroup] = {}
        self.tasks: dict[str, TaskHead] = {}
        self.meta: dict[str, Any] = {}  # training config, metrics summary, provenance

    # ------------------------------------------------------------------ structure
    def add_task(self, task: Task, obs_space: spaces.Space, action_space: spaces.Space) -> TaskHead:
        """Add a head for ``task`` (and an input group + stem if its spaces are new); returns the head info."""
        if task.name in self.tasks:
            raise ConfigError(f"the model already has a head for task {task.name!r}")
        gid = self.group_for(obs_space, action_space)
        if gid is None:
            gid = f"g{len(self.groups)}"
            group = InputGroup(gid, obs_space, action_space, self.config.inputs)
            self.groups[gid] = group
            self.stems[gid] = nn.Sequential(*_block(group.dim, self.config.encoder[0], self.config))
            self.register_buffer(f"norm_mean_{gid}", torch.zeros(group.dim))
            self.register_buffer(f"norm_std_{gid}", torch.ones(group.dim))
            self.register_buffer(f"norm_low_{gid}", torch.full((group.dim,), -CLIP))
            self.register_buffer(f"norm_high_{gid}", torch.full((group.dim,), CLIP))
        head = TaskHead(task, gid)
        self.tasks[task.name] = head
        self.heads[head_key(task.name)] = nn.Linear(self.config.encoder[-1], 1)
        return head

    def group_for(self, obs_space: spaces.Space, action_space: spaces.Space) -> str | None:
        """The id of the input group that takes these spaces (a task with them shares its stem), if any."""
        probe = InputGroup("?", obs_space, action_space, self.config.inputs)
        return next((g.id for g in self.groups.values() if g.signature == probe.signature), None)

    def group_of(self, task: str) -> InputGroup:
        """The input group (adapters) a task uses."""
        return self.groups[self.head_info(task).group]

    def head_info(self, task: str) -> TaskHead:
        """The :class:`TaskHead` of ``task``; a clear error if the model has none."""
        try:
            return self.tasks[task]
        except KeyError:
            raise ConfigError(f"the reward model has no head for task {task!r}; it has: "
                              f"{', '.join(self.tasks) or 'none'}") from None

    def set_normalization(self, gid: str, mean: np.ndarray, std: np.ndarray, low: np.ndarray | None = None,
                          high: np.ndarray | None = None) -> None:
        """Fix the feature standardization of an input group: ``(clip(x, lo, hi) - mean) / std``.

        Continuous features get ``std`` floored at ``STD_FLOOR * (|mean| + range)`` (so a nearly constant one cannot
        turn a small change into a huge input) and bounds ``mean -/+ CLIP * std``; one-hot codes and flags keep mean
        0, std 1. A feature constant in the data (``low == high``) is clipped to that value: a value never seen
        in training cannot move the reward.

        :param low: smallest value of each feature in the training data (with ``high``; default: unknown).
        :param high: largest value of each feature in the training data.
        """
        cont = self.groups[gid].continuous
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        span = np.zeros_like(mean) if low is None or high is None else np.asarray(high, np.float64) - low
        floor = np.maximum(STD_FLOOR * (np.abs(mean) + span), STD_MIN)
        mean = np.where(cont, mean, 0.0)
        std = np.where(cont, np.maximum(std, floor), 1.0)
        lo, hi = mean - CLIP * std, mean + CLIP * std
        if low is not None and high is not None:
            const = np.asarray(low) == np.asarray(high)
            lo, hi = np.where(const, low, lo), np.where(const, high, hi)
        for name, value in (("mean", mean), ("std", std), ("low", lo), ("high", hi)):
            getattr(self, f"norm_{name}_{gid}").copy_(torch.from_numpy(value.astype(np.float32)))

    def widen_normalization(self, gid: str, features: np.ndarray) -> list[int]:
        """Let an input group see ``features`` (raw rows, as :meth:`features` gives them) that fall outside its clip
        bounds: each such feature is re-standardized on these rows (a flag, such as ``done`` never set in the first
        data, is just unclipped) and the stem's first layer re-expressed, so the network is unchanged for every input
        inside the old bounds. For a model that keeps learning from new states (the online loop); the first data's
        bounds would otherwise hide the new region for good. Returns the indices of the widened features."""
        x = np.asarray(features, np.float64)
        if not len(x):
            return []
        lo_old, hi_old = (t.double().numpy() for t in self.clip_bounds(gid))
        lo_new, hi_new = x.min(0), x.max(0)
        outside = (lo_new < lo_old) | (hi_new > hi_old)
        if not outside.any():
            return []
        cont = self.groups[gid].continuous
        mean_old, std_old = (t.double().numpy() for t in self.normalization(gid))
        low, high = np.minimum(lo_new, lo_old), np.maximum(hi_new, hi_old)
        floor = np.maximum(STD_FLOOR * (np.abs(x.mean(0)) + high - low), STD_MIN)
        mean = np.where(outside & cont, x.mean(0), mean_old)
        # the new bounds hold the old ones and every row: mean -/+ CLIP * std covers [low, high]
        cover = np.maximum(mean - low, high - mean) / CLIP
        std = np.where(outside & cont, np.maximum.reduce([x.std(0), std_old, floor, cover]), std_old)
        lo = np.where(outside, np.where(cont, mean - CLIP * std, -CLIP), lo_old)
        hi = np.where(outside, np.where(cont, mean + CLIP * std, CLIP), hi_old)
        first = self.stems[gid][0]
        assert isinstance(first, nn.Linear)
        with torch.no_grad():  # W (x - m) / s + b = W' (x - m') / s' + b'
            w = first.weight.double()
            first.bias.add_((w @ torch.from_numpy((mean - mean_old) / std_old)).to(first.bias.dtype))
            first.weight.mul_(torch.from_numpy(std / std_old).to(first.weight.dtype))
        for name, value in (("mean", mean), ("std", std), ("low", lo), ("high", hi)):
            getattr(self, f"norm_{name}_{gid}").copy_(torch.from_numpy(value.astype(np.float32)))
        return np.flatnonzero(outside).tolist()

    def normalization(self, gid: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (mean, std) of an input group's standardization."""
        return getattr(self, f"norm_mean_{gid}"), getattr(self, f"norm_std_{gid}")

    def clip_bounds(self, gid: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (low, high) bounds an input group's raw features are clipped to before standardization."""
        return getattr(self, f"norm_low_{gid}"), getattr(self, f"norm_high_{gid}")

    def set_label_scale(self, task: str, mean: float, std: float) -> None:
        """Set the label scale a head's output is mapped to (the head learns standardized labels).

        ``std`` ~0 (constant labels, like CartPole's +1 on every step) stores ``label_std = 0``: the task then
        predicts ``mean`` exactly, whatever its head says. The data carry nothing beyond that constant, and
        the head's residual (~1e-3) would only add state-dependent noise to the reward, which is enough to
        send an agent along another learning path than the one the true reward gives.
        """
        info = self.head_info(task)
        info.label_mean, info.label_std = float(mean), float(std) if std > 1e-8 else 0.0

    # ------------------------------------------------------------------ computation
    def features(self, task: str, obs: Any, action: Any, next_obs: Any, done: Any) -> np.ndarray:
        """Raw (unnormalized) features of a batch for ``task``'s input group."""
        return self.group_of(task).features(obs, action, next_obs, done)

    def embed(self, task: str, features: torch.Tensor) -> torch.Tensor:
        """Shared representation ``z`` of feature rows (normalization, stem, encoder)."""
        gid = self.head_info(task).group
        mean, std = self.normalization(gid)
        low, high = self.clip_bounds(gid)
        return self.encoder(self.stems[gid]((torch.clamp(features, low, high) - mean) / std))

    def forward_standardized(self, task: str, features: torch.Tensor) -> torch.Tensor:
        """The head's raw output: rewards in standardized label units, ``(r - label_mean) / label_std``.

        Training fits this to standardized labels, so tasks with different reward scales weigh alike.
        """
        return self.heads[head_key(task)](self.embed(task, features)).squeeze(-1)

    def forward(self, task: str, features: torch.Tensor) -> torch.Tensor:
        """Differentiable rewards (label units) of feature rows, shape ``(n,)``."""
        info = self.head_info(task)
        y = self.forward_standardized(task, features) * info.label_std + info.label_mean
        return symexp(y) if info.label_transform == "symlog" else y

    @torch.no_grad()
    def predict(self, task: str, obs: Any, action: Any, next_obs: Any, done: Any) -> np.ndarray:
        """Rewards of a batch of transitions (no grad), float32 array of shape ``(n,)``."""
        feats = self.features(task, obs, action, next_obs, done)
        return self.forward(task, torch.from_numpy(feats)).numpy().astype(np.float32, copy=False)

    def reward_fn(self, task: str, dtype: str = "auto", compiled: bool = True) -> NumpyRewardFn:
        """A fast NumPy :class:`~rlrm.reward_fn.RewardFn` for ``task`` built from the current weights (a snapshot:
        later training is not seen).

        :param dtype: ``"float32"``, ``"float64"``, or ``"auto"`` (float32 unless the input standardization has
            large offsets; see :mod:`rlrm.model.numpy_fn`).
        :param compiled: use the compiled kernel for the default network (:mod:`rlrm.model.compiled`); False: the
            NumPy path only.
        """
        info = self.head_info(task)
        mean, std, low, high = (t.detach().double().numpy() for t in (*self.normalization(info.group),
                                                                      *self.clip_bounds(info.group)))
        return NumpyRewardFn.from_layers(self.groups[info.group], mean, std, low, high,
                                         [*self.stems[info.group], *self.encoder], self.heads[head_key(task)],
                                         info.label_mean, info.label_std, task, dtype,
                                         symexp_output=info.label_transform == "symlog", compiled=compiled)

    # ------------------------------------------------------------------ (de)serialization helpers
    def describe(self) -> dict[str, Any]:
        """JSON-friendly description (saved beside the weights)."""
        return {"config": asdict(self.config), "groups": {g: grp.to_json() for g, grp in self.groups.items()},
                "tasks": {t: h.to_json() for t, h in self.tasks.items()}, "meta": copy.deepcopy(self.meta)}

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> RewardModel:
        """Build an (untrained) model with the structure of :meth:`describe` output."""
        try:
            model = cls(ModelConfig(**d["config"]))
            group_spaces = {g: (sp.space_from_json(v["obs_space"]), sp.space_from_json(v["action_space"]))
                            for g, v in d["groups"].items()}
            for name, h in d["tasks"].items():
                obs_space, act_space = group_spaces[h["group"]]
                head = model.add_task(Task.from_dict(h["task"]), obs_space, act_space)
                if head.group != h["group"]:
                    raise ModelFileError(f"task {name!r}: input group {h['group']!r} does not match its spaces")
                head.label_mean, head.label_std = float(h["label_mean"]), float(h["label_std"])
                head.label_transform = check_label_transform(str(h.get("label_transform", "none")))
                head.info = dict(h.get("info") or {})
            model.meta = dict(d.get("meta") or {})
        except (KeyError, TypeError, ValueError, SpaceError, ConfigError) as err:
            raise ModelFileError(f"malformed model description: {type(err).__name__}: {err}") from None
        return model


def head_key(task: str) -> str:
    """ModuleDict keys may not contain '.'; task names may."""
    return "t_" + task.replace(".", "__dot__")
