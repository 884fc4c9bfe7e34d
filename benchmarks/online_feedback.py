"""The online feedback loop (issue #11): does a reward model that follows the agent train agents on its targets?

Every run is one ``python -m rlrm.train_agent`` subprocess (1 torch thread, W&B off), one at a time, in
priority order; a finished run (its ``job.json`` in ``--work-dir``) is reused, so the command can be re-run to add
runs or to rebuild the report:

a. ``MountainCarContinuous-v0``, SAC (``agents/sac.yaml``, 50k steps): scalar labels from the env reward on the
   agent's own transitions (``--feedback labels --teacher env --budget 2000``, seeds 0/1/2), against SAC on a
   FIXED learned reward (the model trained once on 20k random transitions, as ``train_agent`` does without
   ``--feedback``; seed 0) and, optionally, on the true reward. The fixed run's wall time is the loop's
   baseline: overhead = the rounds' seconds (asking, retraining, swapping, relabelling; ``feedback.json``) over
   the run's training seconds. Target: true return >= 90 (mean of 3 seeds); overhead < 25 %.
b. ``Pendulum-v1``, SAC (``--timesteps``, default 10k): oracle preferences (200 queries, uniform), the same with
   ``mistake:eps=0.1``, and with ``--query disagreement``; SAC on the true reward per seed is the normalizer.
   Normalized = (run - random) / (true-reward run of the same seed - random), random = uniformly random actions
   (:func:`rlrm.rl.evaluation.random_returns`). Targets: >= 0.9 (oracle), >= 0.8 (mistake). Smaller budgets
   (``--small-budgets``) for both rules estimate the queries each needs.
c. ``HalfCheetah-v5``, SAC, oracle preferences (``--cheetah``: a reduced budget, stated in the report).

    python benchmarks/online_feedback.py                       # a + b: 16 runs, ~2.5 h on 2 shared cores
    python benchmarks/online_feedback.py --jobs mc_labels_s0   # only the named runs (then the report)
    python benchmarks/online_feedback.py --report              # no training: rebuild the report from the runs
    python benchmarks/online_feedback.py --quick               # tiny budgets: checks the script end to end

Raw results go to ``benchmarks/online_feedback/`` (summary.json, runs.csv, rounds.csv, curves.csv,
online_feedback.png); run folders to ``--work-dir``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlrm import atomic
from rlrm.rl.evaluation import random_returns
from rlrm.tasks import load_catalog

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MC, PEND, CHEETAH = "MountainCarContinuous-v0", "Pendulum-v1", "HalfCheetah-v5"


@dataclass
class Settings:
    """What one benchmark run does (see ``--help``)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    mc_timesteps: int = 50_000
    mc_budget: int = 2_000
    mc_true: bool = False
    mc_symlog: bool = False
    pend_timesteps: int = 10_000
    pend_budget: int = 200
    small_budgets: tuple[int, ...] = ()
    cheetah: bool = False
    cheetah_timesteps: int = 30_000
    cheetah_budget: int = 300
    eval_episodes: int = 10
    random_episodes: int = 50
    collect_steps: int = 20_000  # the fixed learned reward's random transitions (train_agent's default)


@dataclass(frozen=True)
class Job:
    """One ``train_agent`` run: ``group`` names the configuration (seeds are pooled within it)."""

    name: str
    group: str
    task: str
    seed: int
    args: tuple[str, ...] = field(default=())


def plan(s: Settings) -> list[Job]:
    """Every run, in priority order (a, then b, then c; the first seed of a first)."""
    mc = ("--task", MC, "--algo", "sac", "-n", str(s.mc_timesteps), "--eval-freq", str(s.mc_timesteps // 5))
    labels = ("--feedback", "labels", "--teacher", "env", "--budget", str(s.mc_budget))
    first, rest = s.seeds[0], s.seeds[1:]
    jobs = [Job(f"mc_labels_s{first}", "mc_labels", MC, first, mc + labels),
            Job(f"mc_fixed_s{first}", "mc_fixed", MC, first, (*mc, "--collect-steps", str(s.collect_steps)))]
    jobs += [Job(f"mc_labels_s{k}", "mc_labels", MC, k, mc + labels) for k in rest]
    pend = ("--task", PEND, "--algo", "sac", "-n", str(s.pend_timesteps), "--eval-freq", str(s.pend_timesteps // 5))
    prefs = ("--feedback", "preferences")
    variants = {"pend_oracle": ("--teacher", "oracle"), "pend_mistake": ("--teacher", "mistake:eps=0.1"),
                "pend_disagreement": ("--teacher", "oracle", "--query", "disagreement")}
    for k in s.seeds:
        jobs.append(Job(f"pend_true_s{k}", "pend_true", PEND, k, (*pend, "--reward", "true")))
        for group, extra in variants.items():
            jobs.append(Job(f"{group}_s{k}", group, PEND, k, pend + prefs + extra + ("--budget", str(s.pend_budget))))
    for budget in s.small_budgets:
        for k in s.seeds:
            for group in ("pend_oracle", "pend_disagreement"):
                jobs.append(Job(f"{group}_b{budget}_s{k}", f"{group}_b{budget}", PEND, k,
                                pend + prefs + variants[group] + ("--budget", str(budget))))
    if s.mc_true:  # the true-reward SAC of every seed: the labels runs' control
        jobs += [Job(f"mc_true_s{k}", "mc_true", MC, k, (*mc, "--reward", "true")) for k in s.seeds]
    if s.mc_symlog:  # the labels runs with the loop's model fitting symlog(label)
        jobs += [Job(f"mc_symlog_s{k}", "mc_symlog", MC, k, (*mc, *labels, "--label-transform", "symlog"))
                 for k in s.seeds]
    if s.cheetah:
        hc = ("--task", CHEETAH, "--algo", "sac", "-n", str(s.cheetah_timesteps),
              "--eval-freq", str(s.cheetah_timesteps // 5))
        jobs.append(Job(f"hc_oracle_s{first}", "hc_oracle", CHEETAH, first,
                        hc + prefs + ("--budget", str(s.cheetah_budget))))
        jobs.append(Job(f"hc_true_s{first}", "hc_true", CHEETAH, first, (*hc, "--reward", "true")))
    return jobs


# ---------------------------------------------------------------------------------------------------------- runs

def run_job(job: Job, work: Path, s: Settings) -> dict[str, Any]:
    """Train ``job`` (or reuse its finished record); returns its record (``job.json``)."""
    out = work / job.name
    record_path = out / "job.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "rlrm.train_agent", *job.args, "--seed", str(job.seed), "--eval-episodes",
           str(s.eval_episodes), "--output-dir", str(out), "--no-progress", "--wandb-mode", "disabled"]
    print(f"[{time.strftime('%H:%M:%S')}] {job.name}: {' '.join(cmd[2:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{job.name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = json.loads((out / "results.json").read_text())  # one run per command (no --baseline)
    record = {"job": asdict(job), "command": " ".join(["python", *cmd[1:]]), "wall_seconds": round(wall, 1),
              "result": rows[0], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    atomic.write_json(record_path, record)
    print(f"  true return {rows[0]['true_mean']:.1f} ± {rows[0]['true_std']:.1f}, train "
          f"{rows[0]['train_seconds']} s, wall {wall:.0f} s", flush=True)
    return record


def run_details(record: dict[str, Any]) -> dict[str, Any]:
    """A finished run's numbers: result, feedback rounds, loop seconds, evaluations, training episodes."""
    res = record["result"]
    run_dir = Path(res["run_dir"])
    evals = json.loads((run_dir / "evaluations.json").read_text())
    monitor = np.loadtxt(run_dir / "monitor" / "env0.monitor.csv", delimiter=",", skiprows=2, usecols=(0, 1),
                         ndmin=2)  # training episodes (stochastic policy): true return, length
    returns, lengths = monitor[:, 0], monitor[:, 1]
    d = {"name": record["job"]["name"], "group": record["job"]["group"], "task": res["task"],
         "seed": res["seed"], "timesteps": res["timesteps"], "true_mean": res["true_mean"],
         "true_std": res["true_std"], "learned_mean": res["learned_mean"], "train_seconds": res["train_seconds"],
         "wall_seconds": record["wall_seconds"], "curve": [(e["timesteps"], e["true_mean"]) for e in evals],
         "train_episodes": len(lengths), "train_episodes_short": int(np.sum(lengths < lengths.max(initial=0))),
         "train_return_last10": float(returns[-10:].mean()) if len(returns) else None,
         "train_curve": list(zip(np.cumsum(lengths).tolist(), returns.tolist())),
         "rounds": [], "queries": None}
    fb = run_dir / "feedback" / "feedback.json"
    if fb.is_file():
        state = json.loads(fb.read_text())
        rounds = state["history"]
        d.update(rounds=rounds, queries=state["queries"], loop=loop_seconds(rounds, res["train_seconds"]))
        if state["kind"] == "labels":
            d["labels_seen"] = labels_seen(run_dir / "feedback" / "queries.jsonl")
    return d


def loop_seconds(rounds: list[dict[str, Any]], train_seconds: float) -> dict[str, float]:
    """The loop's seconds inside training (rounds >= 1; round 0 is the pretraining, before training starts)."""
    inner = rounds[1:]
    total = sum(r.get("seconds", 0.0) for r in inner)
    retrain = sum(r.get("train_seconds", 0.0) for r in inner)
    relabel = sum((r.get("relabel") or {}).get("seconds", 0.0) for r in inner)
    return {"rounds": len(inner), "round_seconds": round(total, 2), "retrain_seconds": round(retrain, 2),
            "relabel_seconds": round(relabel, 2), "ask_and_other_seconds": round(total - retrain - relabel, 2),
            "pretrain_seconds": rounds[0].get("train_seconds", 0.0) if rounds else 0.0,
            "share_of_training": round(total / train_seconds, 4)}


def labels_seen(queries: Path) -> dict[str, Any]:
    """What the teacher's scalar labels held (``queries.jsonl``): per source (round 0: random-policy pretraining;
    later rounds: the agent's transitions), how many, their range, and how many exceed 1 (MountainCar's goal bonus
    is +100; every other step pays -0.1 a^2 <= 0)."""
    lines = [json.loads(line) for line in queries.read_text().splitlines() if line.strip()]
    round_of = {q["id"]: q["round"] for q in lines if q["kind"] == "query"}
    out = {}
    for source, keep in (("pretrain", lambda k: k == 0), ("agent", lambda k: k > 0)):
        x = np.array([a["label"] for a in lines if a["kind"] == "answer" and keep(round_of[a["id"]])])
        out[source] = {"labels": len(x), "above_1": int(np.sum(x > 1.0)),
                       "min": float(x.min()) if len(x) else None, "max": float(x.max()) if len(x) else None}
    return out


# -------------------------------------------------------------------------------------------------------- report

def random_baselines(tasks: set[str], episodes: int) -> dict[str, dict[str, float]]:
    """True return of uniformly random actions per task."""
    catalog = load_catalog()
    out = {}
    for name in sorted(tasks):
        r = random_returns(catalog.task(name), episodes, seed=12345)
        out[name] = {"mean": float(np.mean(r)), "std": float(np.std(r)), "episodes": episodes}
    return out


def normalized(runs: list[dict[str, Any]], random: dict[str, dict[str, float]]) -> None:
    """Add ``normalized`` to each run with a true-reward run of the same task, algo budget and seed."""
    refs = {(r["task"], r["seed"]): r["true_mean"] for r in runs if r["group"].endswith("_true")}
    for r in runs:
        ref = refs.get((r["task"], r["seed"]))
        if ref is not None:
            base = random[r["task"]]["mean"]
            r["normalized"] = (r["true_mean"] - base) / (ref - base)


def groups(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration: true return and normalized score, mean and spread over seeds."""
    out: dict[str, dict[str, Any]] = {}
    for g in dict.fromkeys(r["group"] for r in runs):
        rs = [r for r in runs if r["group"] == g]
        true = np.array([r["true_mean"] for r in rs])
        row = {"task": rs[0]["task"], "seeds": [r["seed"] for r in rs], "true_mean": float(true.mean()),
               "true_sd_over_seeds": float(true.std(ddof=1)) if len(rs) > 1 else None,
               "true_per_seed": true.tolist(), "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rs]))}
        norms = [r["normalized"] for r in rs if "normalized" in r]
        if norms:
            row.update(normalized_mean=float(np.mean(norms)), normalized_per_seed=norms,
                       normalized_min=float(np.min(norms)), normalized_max=float(np.max(norms)))
        if rs[0]["queries"] is not None:
            row["queries"] = [r["queries"] for r in rs]
            row["loop_share_mean"] = float(np.mean([r["loop"]["share_of_training"] for r in rs]))
        out[g] = row
    return out


def overhead(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MountainCar: each labels run against the fixed-reward run of the same seed (training seconds)."""
    fixed = {r["seed"]: r for r in runs if r["group"] == "mc_fixed"}
    rows = []
    for r in runs:
        if r["group"] in ("mc_labels", "mc_symlog"):
            f = fixed.get(r["seed"])
            rows.append({"seed": r["seed"], **r["loop"], "train_seconds": r["train_seconds"],
                         "fixed_train_seconds": f["train_seconds"] if f else None,
                         "extra_vs_fixed": (r["train_seconds"] / f["train_seconds"] - 1) if f else None})
    return rows


def queries_needed(summary: dict[str, dict[str, Any]], budgets: list[int], target: float) -> dict[str, Any]:
    """Per query rule, the smallest budget whose mean normalized score reaches ``target`` (None: none did)."""
    out = {}
    for rule in ("pend_oracle", "pend_disagreement"):
        scores = {b: summary.get(rule if b == budgets[-1] else f"{rule}_b{b}", {}).get("normalized_mean")
                  for b in budgets}
        hit = [b for b in budgets if scores[b] is not None and scores[b] >= target]
        out[rule] = {"scores": scores, "needed": hit[0] if hit else None}
    return out


def machine() -> dict[str, str]:
    import torch

    model_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout
    return {"cpu": model_name, "cores": str(os.cpu_count()), "commit": commit.strip(),
            "python": platform.python_version(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields)
    w.writeheader()
    w.writerows(rows)
    atomic.write_bytes(path, buf.getvalue().encode())


def round_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every feedback round of every run, flattened."""
    rows = []
    for r in runs:
        for k in r["rounds"]:
            row = {"run": r["name"], "round": k["round"], "timesteps": k["timesteps"], "new": k["new"],
                   "queries": k["queries"], "train_seconds": k.get("train_seconds"), "seconds": k.get("seconds"),
                   "relabel_rows": (k.get("relabel") or {}).get("rows"),
                   "relabel_seconds": (k.get("relabel") or {}).get("seconds"),
                   "eval_true_mean": (k.get("eval") or {}).get("true_mean")}
            for part in ("heldout", "fit"):
                row.update({f"{part}_{m}": v for m, v in (k.get(part) or {}).items()})
            rows.append(row)
    return rows


def plot(runs: list[dict[str, Any]], random: dict[str, dict[str, float]], path: Path) -> None:
    """True return vs env steps, one panel per task, one line per configuration (deterministic evaluations, mean over
    seeds); MountainCar also shows its training episodes' true returns (stochastic policy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in runs))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for g in dict.fromkeys(r["group"] for r in runs if r["task"] == task):
            curves = [dict(r["curve"]) for r in runs if r["group"] == g]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            mean = [np.mean([c[t] for c in curves]) for t in steps]
            ax.plot(steps, mean, marker="o", ms=3, label=f"{g} ({len(curves)} seed{'s' * (len(curves) > 1)})")
        if task == MC:  # the stochastic training policy reaches the goal where the deterministic one does not
            for r in (r for r in runs if r["task"] == task):
                steps, returns = np.array(r["train_curve"]).T
                smooth = np.convolve(returns, np.ones(10) / 10, mode="valid")
                ax.plot(steps[9:], smooth, ls="--", lw=1, label=f"{r['name']}: training episodes, mean of 10")
            ax.axhline(90, color="k", ls="-.", lw=0.8, label="target 90")
        ax.axhline(random[task]["mean"], color="grey", ls=":", label="random")
        ax.set(title=task, xlabel="env steps", ylabel="true return (deterministic eval)")
        ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic.write_bytes(path, buf.getvalue())


def report(records: list[dict[str, Any]], s: Settings, out: Path) -> dict[str, Any]:
    runs = [run_details(r) for r in records]
    random = random_baselines({r["task"] for r in runs}, s.random_episodes)
    normalized(runs, random)
    summary = groups(runs)
    budgets = [*s.small_budgets, s.pend_budget]
    result = {"settings": asdict(s), "machine": machine(), "random": random, "groups": summary,
              "overhead": overhead(runs), "queries_needed": {str(t): queries_needed(summary, budgets, t)
                                                             for t in (0.9, 0.8)},
              "runs": [{k: v for k, v in r.items() if k not in ("rounds", "curve", "train_curve")} for r in runs],
              "commands": {r["job"]["name"]: r["command"] for r in records}}
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "summary.json", result)
    write_csv(out / "runs.csv", [{k: v for k, v in r.items() if k not in ("rounds", "curve", "train_curve", "loop",
                                                                              "labels_seen")}
                                 | {f"loop_{k}": v for k, v in (r.get("loop") or {}).items()} for r in runs])
    write_csv(out / "rounds.csv", round_rows(runs))
    write_csv(out / "curves.csv", [{"run": r["name"], "group": r["group"], "seed": r["seed"], "timesteps": t,
                                    "true_mean": v} for r in runs for t, v in r["curve"]])
    plot(runs, random, out / "online_feedback.png")
    for g, row in summary.items():
        norm = f", normalized {row['normalized_mean']:.3f} {np.round(row['normalized_per_seed'], 3).tolist()}" \
            if "normalized_mean" in row else ""
        print(f"{g:24s} true {row['true_mean']:9.1f} per seed {np.round(row['true_per_seed'], 1).tolist()}{norm}")
    return result


def check_rlrm() -> Path:
    """The rlrm package the runs import (``train_agent`` subprocesses run in the repository root); this process
    must report on the same one (run from another checkout with ``PYTHONPATH=<that checkout>``)."""
    import rlrm

    ours = Path(rlrm.__file__).resolve().parent
    theirs = subprocess.run([sys.executable, "-c", "import rlrm; print(rlrm.__file__)"], cwd=ROOT, text=True,
                            capture_output=True, check=True).stdout.strip()
    if Path(theirs).resolve().parent != ours:
        raise SystemExit(f"rlrm: this script imports {ours}, its runs would import {Path(theirs).parent}; expected "
                         f"the same (set PYTHONPATH={ROOT})")
    return ours


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds))
    p.add_argument("--pend-timesteps", type=int, default=Settings.pend_timesteps)
    p.add_argument("--small-budgets", type=int, nargs="*", default=[], help="Pendulum: smaller query budgets too")
    p.add_argument("--mc-true", action="store_true", help="MountainCar: a true-reward SAC run per seed")
    p.add_argument("--mc-symlog", action="store_true", help="MountainCar: labels runs with --label-transform symlog")
    p.add_argument("--cheetah", action="store_true", help="HalfCheetah: oracle preferences + true reward, 1 seed")
    p.add_argument("--cheetah-timesteps", type=int, default=Settings.cheetah_timesteps)
    p.add_argument("--cheetah-budget", type=int, default=Settings.cheetah_budget)
    p.add_argument("--jobs", nargs="+", help="run only these (names as in the plan, e.g. mc_labels_s0)")
    p.add_argument("--report", action="store_true", help="train nothing; report the finished runs")
    p.add_argument("--quick", action="store_true", help="tiny budgets, 1 seed: checks the script end to end")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/rlrm_online_feedback"))
    p.add_argument("--out", type=Path, default=HERE / "online_feedback")
    args = p.parse_args()
    s = Settings(seeds=tuple(args.seeds), pend_timesteps=args.pend_timesteps, small_budgets=tuple(args.small_budgets),
                 mc_true=args.mc_true, mc_symlog=args.mc_symlog, cheetah=args.cheetah,
                 cheetah_timesteps=args.cheetah_timesteps, cheetah_budget=args.cheetah_budget)
    if args.quick:
        s = Settings(seeds=(0,), mc_timesteps=2_000, mc_budget=100, pend_timesteps=1_000, pend_budget=20,
                     eval_episodes=2, random_episodes=5, collect_steps=2_000)
    jobs = plan(s)
    known = {j.name for j in jobs}
    wanted = set(args.jobs or known)
    if wanted - known:
        raise SystemExit(f"--jobs: unknown {sorted(wanted - known)}; expected some of {sorted(known)}")
    print(f"rlrm from {check_rlrm()}; commit {machine()['commit']}", flush=True)
    records = []
    for job in jobs:
        done = (args.work_dir / job.name / "job.json").is_file()
        if done or (not args.report and job.name in wanted):
            records.append(run_job(job, args.work_dir, s))
    if records:
        report(records, s, args.out)


if __name__ == "__main__":
    main()
