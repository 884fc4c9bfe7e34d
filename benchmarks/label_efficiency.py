"""Label efficiency (issue #9): does a shared encoder make a new task cheap? Measured on held-out tasks.

Per family (CartPole cart position, HalfCheetah velocity, PointGoal goal), all on one env each:

1. Label efficiency. One model is pretrained on the family's training tasks (``--pretrain`` labels per task).
   Each held-out task gets a pool of labeled transitions (its own collection seed) and a test set of fresh
   episodes (a third seed). For N labels drawn at random from the pool (a new draw per seed), four methods:
   ``frozen`` (head on the frozen encoder), ``finetune``, ``auto`` (``extend_model(..., "auto")``, the library's
   choice) and ``scratch`` (a single-task model with the same training config and its best learning rate of
   :data:`SCRATCH_LRS`, picked on the test set: this favours scratch). ``auto`` is one honest
   ``extend_model`` call; ``frozen``/``finetune`` are the model ``extend_model(..., mode)`` returns (where it
   cross-validates, ``rlrm.train.fewshot.cross_validates``: its final full-budget training, without the
   cross-validation that only feeds its reported metrics), reused from ``auto`` where it chose that mode,
   trained once more otherwise.
2. Task weighting: ``equal``/``uncertainty``/``pcgrad`` on the training tasks with ``--weighting-labels`` per task;
   held-out r2 of the training tasks, and of the held-out tasks from a frozen head fitted on 64 labels.
3. Transfer (CartPole): an encoder trained on one task alone, then a frozen head for every task from 64 labels.
4. Heterogeneous sharing: the ``classic`` suite, one multi-task model vs one model per env
   (:func:`rlrm.train.transfer.single_task_comparison`).

States are collected once per family and split (train / pool / test by collection seed); every task of the
family labels the same states with its own reward function (a family shares one env, so this is how a user
would label a new task on data already collected). Metrics are on the test set: r2, mse and EPIC
(:func:`rlrm.train.heldout.task_metrics`).

    python benchmarks/label_efficiency.py --quick        # smoke run (~3 min)
    python benchmarks/label_efficiency.py                # full run
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import io
import json
import math
import platform
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rlrm import atomic, metrics
from rlrm.data import labels as labelers
from rlrm.data.behaviour import builtin_policy
from rlrm.data.dataset import TransitionDataset
from rlrm.data.rollout import collect
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.tasks import Task, load_catalog
from rlrm.train import fewshot
from rlrm.train.fewshot import cross_validates, extend_model
from rlrm.train.heldout import epic_to_labels, predict_dataset
from rlrm.train.label_choice import choose_labels
from rlrm.train.loop import TrainConfig, train_reward_model
from rlrm.train.span import span_model
from rlrm.train.transfer import single_task_comparison

SCRATCH_LRS = (1e-3, 3e-3, 1e-2)
METHODS = ("frozen", "finetune", "span", "auto", "scratch")
WEIGHTINGS = ("equal", "uncertainty", "pcgrad")
TARGET_R2 = 0.95
TARGET_RATIO = 10.0


@dataclass(frozen=True)
class Family:
    """A task family: its suites and the behaviour policy that collects its data (``None``: random actions)."""

    name: str
    train_suite: str
    heldout_suite: str
    policy: str | None


FAMILIES = {
    "cartpole": Family("cartpole", "cartpole_position", "cartpole_position_heldout", "rlrm:cartpole_wander"),
    "cheetah": Family("cheetah", "cheetah_velocity", "cheetah_velocity_heldout", None),
    "point": Family("point", "point_goal", "point_goal_heldout", None),
}


@dataclass(frozen=True)
class Budget:
    """Sizes of one benchmark run (``--quick`` shrinks them)."""

    pretrain: int = 20_000
    pool: int = 8_192
    test: int = 5_000
    ns: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    weighting_labels: int = 2_000
    weighting_seeds: int = 3
    classic: int = 20_000
    classic_seeds: int = 3
    pretrain_epochs: int = 15
    fewshot_epochs: int = 10
    weighting_epochs: int = 10
    #: train new-task methods with the library's TrainConfig defaults (>= 1,000 steps) instead of 100 steps
    library_defaults: bool = False
    efficiency_only: bool = False
    #: train the scratch baseline (off: a re-measure of the new-task methods on the draws of an earlier run)
    scratch: bool = True
    #: train the new-task methods (off: scratch only, e.g. more seeds where only scratch's curve is needed)
    new_task_methods: bool = True
    #: the first label-draw seed (more seeds for an earlier run: start where it stopped)
    first_seed: int = 0
    #: how a point's N labeled transitions are chosen from the pool (:data:`SELECTIONS`)
    select: str = "random"


QUICK = Budget(pretrain=2_000, pool=1_200, test=1_000, ns=(16, 64, 1024), weighting_labels=500, weighting_seeds=1,
               classic=2_000, classic_seeds=1, pretrain_epochs=3, fewshot_epochs=5,
               weighting_epochs=3)


#: the per-transition out-of-fold errors per mode that the last automatic choice compared (a row's
#: ``choice_errors``, JSON): any other rule's choice can be scored from them offline (``auto_choice.py --score``)
CHOICE_ERRORS: list[dict[str, list[float]]] = []
_library_choice = fewshot.one_standard_error_choice


def _recording_choice(errors: dict[str, np.ndarray]) -> str:
    CHOICE_ERRORS.append({m: np.asarray(e, np.float64).tolist() for m, e in errors.items()})
    return _library_choice(errors)


fewshot.one_standard_error_choice = _recording_choice


def fewshot_config(budget: Budget, seed: int, lr: float | None = None) -> TrainConfig:
    """The one training config of every new-task method (scratch too, at its own lr): at small N an epoch is
    ``min_epoch_steps`` steps, so N <= 1280 trains for ``epochs * 10`` steps."""
    if budget.library_defaults:
        return TrainConfig(lr=lr or TrainConfig.lr, seed=seed)
    return TrainConfig(epochs=budget.fewshot_epochs, min_epoch_steps=10, batch_size=128, lr=lr or 3e-3, seed=seed)


def pretrain_config(budget: Budget, seed: int, weighting: str = "equal", batch: int = 512) -> TrainConfig:
    return TrainConfig(epochs=budget.pretrain_epochs, batch_size=batch, lr=1e-3, seed=seed, task_weighting=weighting)


# ---------------------------------------------------------------------------------------------------------------
# Data: one collection of states per family and split, labeled by every task of the family
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class FamilyData:
    """States of one family (train / pool / test collections) and its tasks; :meth:`labeled` labels them."""

    family: Family
    train_tasks: list[Task]
    heldout_tasks: list[Task]
    states: dict[str, TransitionDataset]

    def labeled(self, task: Task, split: str) -> TransitionDataset:
        return labelers.apply(replace(self.states[split], task=task), task.labeler)


SPLIT_SEEDS = {"train": 1, "pool": 2, "test": 3}


def collect_family(family: Family, budget: Budget) -> FamilyData:
    cat = load_catalog()
    train, held = cat.suite(family.train_suite), cat.suite(family.heldout_suite)
    sizes = {"train": budget.pretrain, "pool": budget.pool, "test": budget.test}
    states = {}
    for split, seed in SPLIT_SEEDS.items():
        policy = builtin_policy(family.policy, train[0], 8, seed) if family.policy else None
        states[split] = collect(train[0], sizes[split], policy, n_envs=8, seed=seed, progress=False,
                                policy_name=family.policy or "random")
    return FamilyData(family, train, held, states)


def draw_index(size: int, n: int, seed: int, salt: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` random rows of ``size`` (the draw of :func:`draw`)."""
    rng = np.random.default_rng([seed, salt, n])
    return np.sort(rng.choice(size, size=min(n, size), replace=False))


#: ``random``: a uniform draw per seed (:func:`draw_index`). ``kcenter``: the library's
#: :func:`rlrm.train.label_choice.choose_labels` (greedy farthest-point from a random first transition, per seed and
#: N) in the space each method learns in: for the new-task methods the pretrained model's rewards of the family's
#: training tasks (what a span head mixes), for scratch (no model) the raw input features. Only the chosen
#: transitions are labeled, as a person would label them.
SELECTIONS = ("random", "kcenter")


def choose(base: RewardModel, pool: TransitionDataset, n: int, seed: int, select: str,
           scratch: bool = False) -> TransitionDataset:
    """The ``n`` labeled transitions of one point (see :data:`SELECTIONS`)."""
    if select == "random":
        return draw(pool, n, seed)
    first = int(np.random.default_rng([seed, 7, n]).integers(2**31))  # a draw per (seed, N), as draw_index
    return pool.subset(choose_labels(pool, n, None if scratch else base, first))


def draw(ds: TransitionDataset, n: int, seed: int, salt: int = 0) -> TransitionDataset:
    """``n`` random transitions of ``ds`` (sorted, so the subset keeps the dataset's (episode, step) order)."""
    return ds.subset(draw_index(len(ds), n, seed, salt))


def test_metrics(model: RewardModel, test: TransitionDataset, epic: bool = True) -> dict[str, float]:
    """r2 and mse of ``model`` on ``test`` (its task's head), and the EPIC distance to the labeling function."""
    pred = predict_dataset(model, test)
    out = {"r2": metrics.r2(pred, test.label), "mse": metrics.mse(pred, test.label)}
    out["epic"] = epic_to_labels(model, test)[0] if epic else float("nan")
    return out


def mode_model(base: RewardModel, ds: TransitionDataset, cfg: TrainConfig, mode: str) -> RewardModel:
    """The model ``extend_model(base, [ds], cfg, mode)`` returns, without the cross-validation it runs below
    cross-validated sizes only to report out-of-fold metrics (the final model is the full-budget training)."""
    if mode == "span":
        return span_model(base, ds)
    if cross_validates([ds]):
        cfg = replace(cfg, val_frac=0.0, patience=0)
    cfg = replace(cfg, freeze_encoder=mode == "frozen")
    return train_reward_model([ds], cfg, model=copy.deepcopy(base), progress=False).model


def scratch_config(cfg: TrainConfig, ds: TransitionDataset, lr: float) -> TrainConfig:
    """Scratch trains as the final model of ``extend_model`` does: every label, full budget, where it would
    cross-validate."""
    cfg = replace(cfg, lr=lr)
    return replace(cfg, val_frac=0.0, patience=0) if cross_validates([ds]) else cfg


# ---------------------------------------------------------------------------------------------------------------
# 1. Label efficiency
# ---------------------------------------------------------------------------------------------------------------

def pretrain(fd: FamilyData, budget: Budget) -> tuple[RewardModel, list[dict[str, Any]]]:
    """The family's base model on every training task; rows of its test r2 per training task."""
    datasets = [fd.labeled(t, "train") for t in fd.train_tasks]
    result = train_reward_model(datasets, pretrain_config(budget, 0), model_config=ModelConfig(), progress=False)
    rows = [{"family": fd.family.name, "task": t.name, **test_metrics(result.model, fd.labeled(t, "test"))}
            for t in fd.train_tasks]
    return result.model, rows


def one_point(base: RewardModel, pool: TransitionDataset, test: TransitionDataset, n: int, seed: int,
              budget: Budget) -> Iterator[dict[str, Any]]:
    """Rows of the four methods for ``n`` labels of one held-out task and seed."""
    ds = choose(base, pool, n, seed, budget.select)
    cfg = fewshot_config(budget, seed)
    if budget.new_task_methods:
        t0 = time.perf_counter()
        CHOICE_ERRORS.clear()
        auto = extend_model(base, [ds], cfg, "auto", progress=False)
        chosen = auto.model.meta["adaptation"]["mode"]
        yield {"method": "auto", "lr": cfg.lr, "chosen": chosen, "seconds": time.perf_counter() - t0,
               "choice_errors": json.dumps(CHOICE_ERRORS[0]) if CHOICE_ERRORS else "",
               **test_metrics(auto.model, test)}
        for mode in ("frozen", "finetune", "span"):
            t0 = time.perf_counter()
            model = auto.model if mode == chosen else mode_model(base, ds, cfg, mode)
            yield {"method": mode, "lr": cfg.lr, "chosen": "", "seconds": time.perf_counter() - t0,
                   **test_metrics(model, test)}
    if not budget.scratch:
        return
    ds = choose(base, pool, n, seed, budget.select, scratch=True)
    best: tuple[float, float, RewardModel | None] = (-math.inf, float("nan"), None)
    for lr in SCRATCH_LRS:
        t0 = time.perf_counter()
        model = train_reward_model([ds], scratch_config(cfg, ds, lr), progress=False).model
        m = test_metrics(model, test, epic=False)
        yield {"method": f"scratch@{lr:g}", "lr": lr, "chosen": "", "seconds": time.perf_counter() - t0, **m}
        if m["r2"] > best[0] or best[2] is None:
            best = (m["r2"], lr, model)
    assert best[2] is not None
    yield {"method": "scratch", "lr": best[1], "chosen": "best lr on test", "seconds": 0.0,
           **test_metrics(best[2], test)}


def label_efficiency(fd: FamilyData, base: RewardModel, budget: Budget, seeds: int,
                     done: list[dict[str, Any]], checkpoint: Path) -> list[dict[str, Any]]:
    """Rows of every (held-out task, seed, N); ``done + rows`` is rewritten to ``checkpoint`` after each point."""
    rows: list[dict[str, Any]] = []
    grid = [(t, s, n) for t in fd.heldout_tasks for s in range(budget.first_seed, budget.first_seed + seeds)
            for n in budget.ns]
    for task, seed, n in tqdm(grid, desc=f"label efficiency {fd.family.name}", unit="point"):
        pool, test = fd.labeled(task, "pool"), fd.labeled(task, "test")
        for row in one_point(base, pool, test, n, seed, budget):
            rows.append({"family": fd.family.name, "task": task.name, "seed": seed, "n": n, **row})
        write_csv(checkpoint, done + rows)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# 2. Task weighting, 3. transfer table
# ---------------------------------------------------------------------------------------------------------------

def frozen_head_r2(base: RewardModel, fd: FamilyData, task: Task, n: int, seed: int, budget: Budget) -> float:
    """Test r2 of a head fitted on ``n`` pool labels of ``task`` on ``base``'s frozen encoder (the head is named
    ``<task>@head`` so that a task ``base`` already has gets a fresh one)."""
    fresh = replace(task, name=f"{task.name}@head")
    ds = draw(fd.labeled(fresh, "pool"), n, seed, salt=1)
    model = mode_model(base, ds, fewshot_config(budget, seed), "frozen")
    return test_metrics(model, fd.labeled(fresh, "test"), epic=False)["r2"]


def task_weighting(fd: FamilyData, budget: Budget) -> list[dict[str, Any]]:
    rows = []
    grid = [(w, s) for w in WEIGHTINGS for s in range(budget.weighting_seeds)]
    for weighting, seed in tqdm(grid, desc=f"task weighting {fd.family.name}", unit="run"):
        datasets = [draw(fd.labeled(t, "train"), budget.weighting_labels, seed, salt=i + 2)
                    for i, t in enumerate(fd.train_tasks)]
        t0 = time.perf_counter()
        cfg = replace(pretrain_config(budget, seed, weighting, batch=256), epochs=budget.weighting_epochs)
        model = train_reward_model(datasets, cfg, progress=False).model
        seconds = time.perf_counter() - t0
        train_r2 = [test_metrics(model, fd.labeled(t, "test"), epic=False)["r2"] for t in fd.train_tasks]
        held_r2 = [frozen_head_r2(model, fd, t, 64, seed, budget) for t in fd.heldout_tasks]
        rows.append({"family": fd.family.name, "weighting": weighting, "seed": seed, "seconds": seconds,
                     "train_r2": float(np.mean(train_r2)), "heldout_r2": float(np.mean(held_r2))})
    return rows


def transfer_table(fd: FamilyData, base: RewardModel, budget: Budget) -> list[dict[str, Any]]:
    """r2 of a frozen 64-label head for task j on an encoder trained on task i alone (and on all of them)."""
    rows = []
    encoders = [(t.name, None) for t in fd.train_tasks] + [("all training tasks", base)]
    targets = fd.train_tasks + fd.heldout_tasks
    for name, model in tqdm(encoders, desc="transfer", unit="encoder"):
        if model is None:
            task = next(t for t in fd.train_tasks if t.name == name)
            model = train_reward_model([fd.labeled(task, "train")], pretrain_config(budget, 0, batch=256),
                                       progress=False).model
        for target in targets:
            rows.append({"encoder": name, "task": target.name,
                         "r2": frozen_head_r2(model, fd, target, 64, 0, budget)})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# 4. Heterogeneous sharing
# ---------------------------------------------------------------------------------------------------------------

def heterogeneous(budget: Budget) -> list[dict[str, Any]]:
    tasks = load_catalog().suite("classic")
    datasets = [collect(t, budget.classic, None, n_envs=8, seed=0, progress=False) for t in tasks]
    rows = []
    for seed in tqdm(range(budget.classic_seeds), desc="classic suite", unit="seed"):
        cfg = replace(pretrain_config(budget, seed, batch=256), epochs=budget.fewshot_epochs)
        result = train_reward_model(datasets, cfg, model_config=ModelConfig(), progress=False)
        single_task_comparison(result, datasets, cfg, ModelConfig())
        for ds in datasets:
            m = result.metrics[ds.task.name]
            rows.append({"task": ds.task.name, "seed": seed, "multi_r2": m["r2"], "multi_mse": m["mse"],
                         "single_r2": m.get("single_task_r2", float("nan")),
                         "constant_labels": result.model.tasks[ds.task.name].label_std == 0})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Summary: bootstrap intervals, label ratios, tables, figure
# ---------------------------------------------------------------------------------------------------------------

def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval of the mean of ``values`` (NaN-free); one value: no interval."""
    x = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float("nan"), float("nan")
    means = np.random.default_rng(seed).choice(x, size=(n_boot, len(x)), replace=True).mean(1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def labels_to_reach(ns: Sequence[int], curve: Sequence[float], target: float) -> float:
    """Labels at which ``curve`` (mean r2 per N) first reaches ``target``, interpolated log-linearly between grid
    points; ``ns[0]`` when it starts above, ``inf`` when it never does."""
    for k, (n, v) in enumerate(zip(ns, curve)):
        if v >= target:
            if k == 0:
                return float(n)
            lo_n, lo_v = ns[k - 1], curve[k - 1]
            frac = (target - lo_v) / (v - lo_v)
            return float(math.exp(math.log(lo_n) + frac * (math.log(n) - math.log(lo_n))))
    return math.inf


def seed_means(rows: list[dict[str, Any]], family: str, method: str, n: int, key: str) -> list[float]:
    """Per seed, the mean of ``key`` over the family's held-out tasks (the unit the bootstrap resamples)."""
    by_seed: dict[int, list[float]] = {}
    for r in rows:
        if r["family"] == family and r["method"] == method and r["n"] == n:
            by_seed.setdefault(r["seed"], []).append(r[key])
    return [float(np.mean(v)) for _, v in sorted(by_seed.items())]


def summarize(rows: list[dict[str, Any]], families: Sequence[str], ns: Sequence[int]) -> list[dict[str, Any]]:
    out = []
    for fam in families:
        for method in METHODS:
            for n in ns:
                r2 = bootstrap_ci(seed_means(rows, fam, method, n, "r2"))
                epic = bootstrap_ci(seed_means(rows, fam, method, n, "epic"))
                chosen = [r["chosen"] for r in rows if r["family"] == fam and r["method"] == "auto" and r["n"] == n]
                out.append({"family": fam, "method": method, "n": n, "r2": r2[0], "r2_lo": r2[1], "r2_hi": r2[2],
                            "epic": epic[0], "epic_lo": epic[1], "epic_hi": epic[2],
                            "seeds": len(seed_means(rows, fam, method, n, "r2")),
                            "auto_finetune_share": float(np.mean([c == "finetune" for c in chosen]))
                            if method == "auto" else None,
                            "auto_span_share": float(np.mean([c == "span" for c in chosen]))
                            if method == "auto" else None})
    return out


def curve(summary: list[dict[str, Any]], fam: str, method: str, ns: Sequence[int]) -> list[float]:
    by_n = {r["n"]: r["r2"] for r in summary if r["family"] == fam and r["method"] == method}
    return [by_n[n] for n in ns]


def ratios(summary: list[dict[str, Any]], fam: str, ns: Sequence[int]) -> list[dict[str, Any]]:
    """Per N: the labels scratch needs to reach auto's r2 at N, and its ratio to N."""
    auto, scratch = curve(summary, fam, "auto", ns), curve(summary, fam, "scratch", ns)
    out = []
    for n, r2 in zip(ns, auto):
        need = labels_to_reach(ns, scratch, r2)
        out.append({"family": fam, "n": n, "auto_r2": r2, "scratch_labels": need,
                    "ratio": need / n if np.isfinite(need) else math.inf,
                    "scratch_below_grid": need == ns[0] and scratch[0] >= r2})
    return out


def target_check(summary: list[dict[str, Any]], fam: str, ns: Sequence[int]) -> dict[str, Any]:
    """Labels auto and scratch need to reach r2 >= TARGET_R2 and whether auto needs TARGET_RATIO times fewer."""
    n_auto = labels_to_reach(ns, curve(summary, fam, "auto", ns), TARGET_R2)
    scratch = curve(summary, fam, "scratch", ns)
    n_scratch = labels_to_reach(ns, scratch, TARGET_R2)
    if not np.isfinite(n_auto) or np.all(np.isnan(scratch)):  # no scratch rows (--no-scratch): no ratio
        ratio = float("nan")
    elif np.isfinite(n_scratch):
        ratio = n_scratch / n_auto
    else:  # scratch never reaches the target on the grid: the ratio is at least ns[-1] / n_auto
        ratio = ns[-1] / n_auto
    met = bool(np.isfinite(ratio) and ratio >= TARGET_RATIO)
    return {"family": fam, "auto_labels_to_0.95": n_auto, "scratch_labels_to_0.95": n_scratch, "ratio": ratio,
            "met": met, "auto_starts_above": n_auto == ns[0], "scratch_reached": bool(np.isfinite(n_scratch))}


def fmt_n(x: float, ns: Sequence[int]) -> str:
    if not np.isfinite(x):
        return f"> {ns[-1]}"
    return f"<= {ns[0]}" if x <= ns[0] else f"{x:.0f}"


def fmt_ci(v: float, lo: float, hi: float) -> str:
    if not np.isfinite(v):
        return "-"
    return f"{v:.3f}" if not np.isfinite(lo) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown_tables(summary: list[dict[str, Any]], families: Sequence[str], ns: Sequence[int]) -> str:
    lines = []
    for fam in families:
        rows = {(r["method"], r["n"]): r for r in summary if r["family"] == fam}
        rat = {r["n"]: r for r in ratios(summary, fam, ns)}
        lines += [f"**{fam}**: held-out (test-set) r2 / EPIC, mean over seeds of the mean over held-out tasks, "
                  "[95% bootstrap interval over seeds]", "",
                  "| N | frozen r2 | finetune r2 | span r2 | auto r2 (finetune / span chosen) | scratch r2 | auto EPIC "
                  "| scratch EPIC | scratch labels for auto's r2 | ratio |", "|---" * 10 + "|"]
        for n in ns:
            a = rows[("auto", n)]
            cells = [fmt_ci(rows[(m, n)]["r2"], rows[(m, n)]["r2_lo"], rows[(m, n)]["r2_hi"]) for m in METHODS]
            cells[METHODS.index("auto")] += (f" ({a['auto_finetune_share']:.0%} / "
                                             f"{(a.get('auto_span_share') or 0.0):.0%})")
            s = rows[("scratch", n)]
            need = rat[n]["scratch_labels"]
            ratio = f"{rat[n]['ratio']:.1f}x" if np.isfinite(rat[n]["ratio"]) else f"> {ns[-1] / n:.0f}x"
            lines.append(f"| {n} | {' | '.join(cells)} | {fmt_ci(a['epic'], a['epic_lo'], a['epic_hi'])} | "
                         f"{fmt_ci(s['epic'], s['epic_lo'], s['epic_hi'])} | {fmt_n(need, ns)} | {ratio} |")
        lines.append("")
    lines += ["| family | auto labels to r2 0.95 | scratch labels to r2 0.95 | ratio | target (>= 10x) met? |",
              "|---|---|---|---|---|"]
    for fam in families:
        t = target_check(summary, fam, ns)
        ratio = f"{t['ratio']:.1f}x" if np.isfinite(t["ratio"]) else ("-" if math.isnan(t["ratio"]) else "inf")
        bound = t["auto_starts_above"] or not t.get("scratch_reached", True)
        ratio = f">= {ratio}" if bound and np.isfinite(t["ratio"]) else ratio
        lines.append(f"| {fam} | {fmt_n(t['auto_labels_to_0.95'], ns)} | {fmt_n(t['scratch_labels_to_0.95'], ns)} | "
                     f"{ratio} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def weighting_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| family | weighting | training tasks r2 | held-out tasks r2 (frozen head, 64 labels) | s/run |",
             "|---|---|---|---|---|"]
    for fam in dict.fromkeys(r["family"] for r in rows):
        for w in WEIGHTINGS:
            rs = [r for r in rows if r["family"] == fam and r["weighting"] == w]
            tr, ho = bootstrap_ci([r["train_r2"] for r in rs]), bootstrap_ci([r["heldout_r2"] for r in rs])
            lines.append(f"| {fam} | {w} | {fmt_ci(*tr)} | {fmt_ci(*ho)} | "
                         f"{np.mean([r['seconds'] for r in rs]):.1f} |")
    for w in WEIGHTINGS:
        rs = [r for r in rows if r["weighting"] == w]
        lines.append(f"| all | {w} | {np.mean([r['train_r2'] for r in rs]):.4f} | "
                     f"{np.mean([r['heldout_r2'] for r in rs]):.4f} | |")
    return "\n".join(lines) + "\n"


def transfer_markdown(rows: list[dict[str, Any]]) -> str:
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    short = [t.split("/")[-1] for t in tasks]
    lines = [f"| encoder \\ head for | {' | '.join(short)} |", "|---" * (len(tasks) + 1) + "|"]
    for e in encoders:
        vals = {r["task"]: r["r2"] for r in rows if r["encoder"] == e}
        lines.append(f"| {e.split('/')[-1]} | {' | '.join(f'{vals[t]:.3f}' for t in tasks)} |")
    return "\n".join(lines) + "\n"


def classic_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| task | labels | multi-task r2 | single-task r2 | multi-task mse |", "|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        const = rs[0]["constant_labels"]
        lines.append(f"| {task} | {'constant' if const else 'varying'} | "
                     f"{fmt_ci(*bootstrap_ci([r['multi_r2'] for r in rs]))} | "
                     f"{fmt_ci(*bootstrap_ci([r['single_r2'] for r in rs]))} | "
                     f"{np.mean([r['multi_mse'] for r in rs]):.3g} |")
    return "\n".join(lines) + "\n"


def figure(summary: list[dict[str, Any]], families: Sequence[str], ns: Sequence[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 4), squeeze=False)
    for ax, fam in zip(axes[0], families):
        for method in METHODS:
            rs = sorted((r for r in summary if r["family"] == fam and r["method"] == method), key=lambda r: r["n"])
            x = [r["n"] for r in rs]
            ax.plot(x, [r["r2"] for r in rs], marker="o", label=method)
            lo = [r["r2_lo"] if np.isfinite(r["r2_lo"]) else r["r2"] for r in rs]
            hi = [r["r2_hi"] if np.isfinite(r["r2_hi"]) else r["r2"] for r in rs]
            ax.fill_between(x, lo, hi, alpha=0.2)
        ax.axhline(TARGET_R2, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_ylim(max(-0.2, min(r["r2"] for r in summary if r["family"] == fam) - 0.05), 1.01)
        ax.set_xlabel("labels of the new task (N)")
        ax.set_ylabel("held-out r2 (test episodes)")
        ax.set_title(fam)
        ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic.temp_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_bytes(path, buf.getvalue().encode())


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV written by :func:`write_csv`, numbers parsed (to recompute the summary)."""
    def value(v: str) -> Any:
        if v in ("True", "False"):
            return v == "True"
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v
    with path.open() as f:
        return [{k: value(v) for k, v in r.items()} for r in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""
    model = next((line.split(":", 1)[1].strip() for line in run(["lscpu"]).splitlines()
                  if line.startswith("Model name")), platform.processor())
    return {"cpu": model, "cores": str(torch.get_num_threads()), "python": platform.python_version(),
            "torch": torch.__version__, "commit": run(["git", "rev-parse", "--short", "HEAD"]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_family(name: str, budget: Budget, seeds: int, out: Path, rows: dict[str, list[dict[str, Any]]]) -> None:
    t0 = time.perf_counter()
    fd = collect_family(FAMILIES[name], budget)
    n = sum(len(d) for d in fd.states.values())
    print(f"{name}: collected {n} transitions in {time.perf_counter() - t0:.0f} s")
    base, pre = pretrain(fd, budget)
    rows["pretrain"] += pre
    print(f"{name}: pretrained, test r2 of the training tasks {np.mean([r['r2'] for r in pre]):.4f}")
    rows["runs"] += label_efficiency(fd, base, budget, seeds, rows["runs"], out / "runs.csv")
    write_csv(out / "runs.csv", rows["runs"])
    if budget.efficiency_only:
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s")
        return
    rows["weighting"] += task_weighting(fd, budget)
    write_csv(out / "weighting.csv", rows["weighting"])
    if name == "cartpole":
        rows["transfer"] += transfer_table(fd, base, budget)
        write_csv(out / "transfer_cartpole.csv", rows["transfer"])
    print(f"{name}: done in {time.perf_counter() - t0:.0f} s")


def report(rows: dict[str, list[dict[str, Any]]], families: Sequence[str], budget: Budget, out: Path,
           info: dict[str, Any]) -> str:
    summary = summarize(rows["runs"], families, budget.ns)
    write_csv(out / "summary.csv", summary)
    checks = [target_check(summary, f, budget.ns) for f in families]
    atomic.write_json(out / "summary.json", {**info, "targets": checks,
                                             "ratios": [r for f in families for r in ratios(summary, f, budget.ns)],
                                             "pretrain": rows["pretrain"]})
    figure(summary, families, budget.ns, out / "label_efficiency.png")
    text = ["### Label efficiency", "", markdown_tables(summary, families, budget.ns),
            "### Task weighting", "", weighting_table(rows["weighting"]) if rows["weighting"] else "",
            "### Transfer (CartPole)", "", transfer_markdown(rows["transfer"]) if rows["transfer"] else "",
            "### Heterogeneous sharing (classic)", "", classic_table(rows["classic"]) if rows["classic"] else ""]
    md = "\n".join(text)
    atomic.write_bytes(out / "tables.md", md.encode())
    return md


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--seeds", type=int, default=5, help="seeds of the label-efficiency runs")
    p.add_argument("--cheetah-seeds", type=int, default=None, help="seeds for HalfCheetah (default: --seeds)")
    p.add_argument("--skip-classic", action="store_true")
    p.add_argument("--ns", type=int, nargs="+", default=None, help="label counts (default 16 ... 4096)")
    p.add_argument("--library-budget", action="store_true", help="new-task methods train with the library's "
                   "TrainConfig defaults (lr 1e-3 for auto/frozen/finetune; >= 1,000 steps), label efficiency only")
    p.add_argument("--no-scratch", action="store_true", help="leave out the scratch baseline (the draws are the "
                   "same for the same family, seed and N: compare with an earlier run's scratch rows)")
    p.add_argument("--first-seed", type=int, default=0, help="first label-draw seed (add seeds to an earlier run)")
    p.add_argument("--scratch-only", action="store_true", help="train only the scratch baseline")
    p.add_argument("--select", choices=SELECTIONS, default="random", help="how the N labeled transitions are "
                   "chosen from the pool (default: at random; kcenter: spread out, see SELECTIONS)")
    p.add_argument("--summary-only", action="store_true", help="recompute the tables from --out's CSV files")
    p.add_argument("--out", type=Path, default=Path("benchmarks/label_efficiency"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    budget = QUICK if args.quick else Budget()
    if args.library_budget:
        budget = dataclasses.replace(budget, library_defaults=True, efficiency_only=True)
    if args.ns:
        budget = dataclasses.replace(budget, ns=tuple(args.ns))
    if args.no_scratch:
        budget = dataclasses.replace(budget, scratch=False)
    budget = dataclasses.replace(budget, first_seed=args.first_seed, new_task_methods=not args.scratch_only,
                                 select=args.select)
    seeds = 1 if args.quick else args.seeds
    names = {"runs": "runs.csv", "weighting": "weighting.csv", "transfer": "transfer_cartpole.csv",
             "classic": "classic.csv", "pretrain": "pretrain.csv"}
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
    info: dict[str, Any] = {"machine": machine(), "budget": budget.__dict__, "seeds": seeds,
                            "summary_only": args.summary_only}
    start = time.perf_counter()
    if args.summary_only:
        rows = {k: read_csv(args.out / f) if (args.out / f).exists() else [] for k, f in names.items()}
    else:
        for name in args.families:
            s = args.cheetah_seeds if name == "cheetah" and args.cheetah_seeds else seeds
            run_family(name, budget, s, args.out, rows)
            write_csv(args.out / "pretrain.csv", rows["pretrain"])
        if not args.skip_classic:
            rows["classic"] = heterogeneous(budget)
            write_csv(args.out / "classic.csv", rows["classic"])
    info["wall_s"] = time.perf_counter() - start
    print(report(rows, args.families, budget, args.out, info))
    print(f"wall time {info['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
