"""The agent-quality suite as one number (issue #12): normalized scores pooled from the stages' recorded reports.

Each stage of ``benchmarks/agent_quality.py`` (and the online-feedback runs reported with ``python -m rlrm.report``)
wrote a ``scores.csv``: one row per run, normalized within its own grid (random policy = 0, the mean of that grid's
true-reward agents of the same task, algorithm and budget = 1). This script picks, per task, which file and which
learned reward source count for the suite, pools those rows and computes the IQM and mean with 95% stratified
bootstrap intervals (rliable, via :mod:`rlrm.rl.quality`; the strata are the task · algo · budget groups).

Two definitions of "the learned reward", stated before pooling (a source chosen per task after seeing every
result would flatter the aggregate, so both are reported):

- ``offline``: the learned reward from uniformly random data only (one multi-task model per stage; the classic
  stage's model had no MuJoCo data, the MuJoCo stage's model has it).
- ``rlrm``: what rlrm offers for each task: the same, except LunarLander's reward trained on a behaviour mix
  (random + true-reward agents, 25 % random actions) and MountainCarContinuous's learned online from the agent's own
  transitions (``--feedback labels``, symlog labels): the two tasks where random data never reach what the reward
  pays for.

    python benchmarks/suite_aggregate.py    # prints the tables; writes agent_quality_suite/ (JSON, 2 PNGs)
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlrm import atomic
from rlrm.rl import plots, quality

HERE = Path(__file__).resolve().parent

# (scores.csv folder, task, learned source) per task, per definition; the true-reward rows of the same file and task
# are the reference source
_OFFLINE = {
    "CartPole-v1": ("agent_quality", "learned"),
    "Acrobot-v1": ("agent_quality", "learned"),
    "Pendulum-v1": ("agent_quality", "learned"),
    "CartPole-v1/x0.75": ("agent_quality", "learned"),
    "MountainCarContinuous-v0": ("agent_quality", "learned"),
    "LunarLander-v3": ("agent_quality_lunar_mix", "learned (rm_multitask)"),
    "HalfCheetah-v5": ("agent_quality_mujoco", "learned (rm_multitask)"),
    "Hopper-v5": ("agent_quality_mujoco", "learned (rm_multitask)"),
}
DEFINITIONS: dict[str, dict[str, tuple[str, str]]] = {
    "offline": _OFFLINE,
    "rlrm": _OFFLINE | {
        "LunarLander-v3": ("agent_quality_lunar_mix", "learned (rm_mix)"),
        "MountainCarContinuous-v0": ("agent_quality_mcc_online",
                                     "learned (no model file; labels feedback, budget 2000; label_transform=symlog)"),
    },
}


def read_rows(folder: Path) -> list[dict[str, Any]]:
    with (folder / "scores.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["normalized_score"] = float(r["normalized_score"]) if r["normalized_score"] else math.nan
        r["true_return"] = float(r["true_return"])
        r["group"] = quality.group_of(r["task"], r["algo"], int(r["timesteps"]))
    return rows


def pick(definition: dict[str, tuple[str, str]], root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of each task's file and learned source (renamed ``learned``) plus its true-reward rows; tasks with
    no rows in their file are returned as missing."""
    cache: dict[str, list[dict[str, Any]]] = {}
    rows, missing = [], []
    for task, (folder, source) in definition.items():
        if not (root / folder / "scores.csv").is_file():
            missing.append(task)
            continue
        all_rows = cache.setdefault(folder, read_rows(root / folder))
        mine = [r for r in all_rows if r["task"] == task and r["source"] in (source, quality.TRUE)]
        if not any(r["source"] == source for r in mine):
            missing.append(task)
            continue
        rows += [{**r, "source": "learned" if r["source"] == source else quality.TRUE, "file": folder,
                  "learned_source": source} for r in mine]
    return rows, missing


def per_task(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for group in dict.fromkeys(r["group"] for r in rows):
        mine = [r for r in rows if r["group"] == group]
        learned = [r for r in mine if r["source"] == "learned"]
        true = [r for r in mine if r["source"] == quality.TRUE]
        scores = [r["normalized_score"] for r in learned]
        out.append({"group": group, "file": mine[0]["file"], "learned_source": mine[0]["learned_source"],
                    "learned_runs": len(learned), "true_runs": len(true),
                    "random": float(mine[0]["random_return"]),
                    "true_return": float(np.mean([r["true_return"] for r in true])) if true else math.nan,
                    "learned_return": float(np.mean([r["true_return"] for r in learned])),
                    "score_mean": float(np.nanmean(scores)) if scores else math.nan,
                    "scores": [round(s, 3) for s in scores]})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=HERE, help="the folder holding the stages' report folders")
    p.add_argument("--out", type=Path, default=HERE / "agent_quality_suite")
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    pooled: dict[str, dict[str, np.ndarray]] = {}
    summary: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "reps": a.reps,
                               "seed": a.seed, "definitions": {}}
    for name, definition in DEFINITIONS.items():
        rows, missing = pick(definition, a.root)
        groups = quality.scores_by_source(rows)
        pooled[f"learned ({name})"] = groups["learned"]
        pooled[quality.TRUE] = groups[quality.TRUE]
        intervals = quality.interval_estimates(groups, reps=a.reps, seed=a.seed)
        tasks = per_task(rows)
        summary["definitions"][name] = {"tasks": tasks, "missing": missing, "aggregate": intervals}
        print(f"\n## {name}: learned reward per task as defined in the script; missing: {', '.join(missing) or '-'}")
        print("| task · algo · budget | runs (learned+true) | random | true-reward agents | learned-reward agents | "
              "score (mean) | per-seed |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for t in tasks:
            seeds = " ".join(f"{s:.2f}" for s in t["scores"])
            print(f"| {t['group']} | {t['learned_runs']}+{t['true_runs']} | {t['random']:.1f} | {t['true_return']:.1f} "
                  f"| {t['learned_return']:.1f} | {t['score_mean']:.2f} | {seeds} |")
        print("| reward | runs | groups | IQM [95% CI] | mean [95% CI] |\n|---|---:|---:|---|---|")
        for src, est in intervals.items():
            i, m = est["iqm"], est["mean"]
            print(f"| {src} | {est['runs']} | {est['groups']} | {i['point']:.3f} [{i['low']:.3f}, {i['high']:.3f}] | "
                  f"{m['point']:.3f} [{m['low']:.3f}, {m['high']:.3f}] |")
    atomic.write_json(a.out / "summary.json", summary)
    bars = {f"learned ({name})": d["aggregate"]["learned"] for name, d in summary["definitions"].items()}
    bars[quality.TRUE] = summary["definitions"]["rlrm"]["aggregate"][quality.TRUE]
    plots.aggregate_intervals(bars, a.out / "aggregate.png")
    taus = quality.profile_taus(pooled)
    plots.performance_profiles(quality.performance_profiles(pooled, taus, reps=a.reps, seed=a.seed),
                               a.out / "performance_profile.png")
    print(f"\nwrote {a.out / 'summary.json'}")


if __name__ == "__main__":
    main()
