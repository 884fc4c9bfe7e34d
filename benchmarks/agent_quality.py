"""Agent quality (issue #12): do agents trained on ONE multi-task learned reward do as well on the TRUE reward as
agents trained on the true reward itself?

Everything goes through the user-facing commands, in this order:

1. ``python -m rlrm.collect``: ``--steps`` random-policy transitions per task for the classic suite and
   LunarLander-v3 (and the MuJoCo tasks in their stage); the family task ``CartPole-v1/x0.75`` gets
   ``rlrm:cartpole_wander`` transitions instead (random actions only reach |x| < 0.5).
2. ``python -m rlrm.train_reward``: ONE multi-task reward model on all of those datasets (labels = the tasks'
   rewards, regression).
3. ``python -m rlrm.train_agent --reward-model MODEL --baseline``: per stage, each task on the learned reward and on
   the true reward, the same seeds and budget, ``--workers`` runs at a time, into one output folder.
4. ``python -m rlrm.report``: normalized scores (random = 0, true-reward agents = 1), IQM / mean with 95%
   stratified bootstrap intervals (rliable), profiles, learning curves, reward-hacking table.
5. Per task, the label statistics of its dataset (min / max / std / distinct values): the data behind the verdict
   on any task that falls short (a goal bonus the labels never saw, a constant label).

Stages (budgets reduced from the zoo's for a shared 2-core machine; ``--stage NAME`` repeatable, in order)::

    classic   CartPole-v1 50k, CartPole-v1/x0.75 30k, Acrobot-v1 30k, Pendulum-v1 50k (PPO), seeds 0-4
    lunar     LunarLander-v3 100k (PPO), seeds 0-4
    mcc       MountainCarContinuous-v0 20k (SAC), seeds 0-2
    mujoco    HalfCheetah-v5, Hopper-v5 30k (SAC, learning after 2k steps), seeds 0-2 (needs its data in the model:
              --with-mujoco)
    lunar_mix LunarLander-v3 100k (PPO), seeds 0-4, learned reward only, on a second model (``rm_mix``) whose data
              add to the random data 10k transitions from each of the final agents of the lunar stage's
              true-reward seeds 0 and 1 (mixture policy: a random action with probability 0.25); runs the lunar
              stage first if its runs are missing

    python benchmarks/agent_quality.py --work-dir /tmp/aq                      # collect, train, all stages but mujoco
    python benchmarks/agent_quality.py --work-dir /tmp/aq --stage lunar        # one stage (data/model reused)
    python benchmarks/agent_quality.py --work-dir /tmp/aq --report-only        # report + copy of what is there
    python benchmarks/agent_quality.py --work-dir /tmp/aq2 --stage mujoco --with-mujoco --out OUT2 \
        --pool benchmarks/agent_quality/scores.csv    # + IQM / mean over this record's runs AND an earlier one's

``--pool`` pools normalized scores across records (each run normalized within its own record, against the
true-reward agents of its own task, algorithm and budget), so stages run with different reward models (e.g. one
trained later with the MuJoCo data added) still give one suite-wide IQM; every learned source counts as
``learned``. The pooled aggregate goes to ``OUT/pooled.json``.

Run it from a frozen checkout (``git worktree add``) so edits to the repo do not change a running experiment.
Results (results.json of the runs, the report's scores.csv / report.json / PNGs, label statistics, commands and
wall times) go to ``--out`` (default ``benchmarks/agent_quality/``); run folders and agents stay in ``--work-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WANDER = "rlrm:cartpole_wander"


@dataclass(frozen=True)
class Stage:
    """One ``train_agent`` command per (task, budget) of a stage, all with the same seeds."""

    runs: tuple[tuple[str, int], ...]
    seeds: tuple[int, ...]
    #: hyperparameter overrides for every run of the stage (``train_agent --params``)
    params: tuple[str, ...] = ()


STAGES: dict[str, Stage] = {
    "classic": Stage((("CartPole-v1", 50_000), ("CartPole-v1/x0.75", 30_000), ("Acrobot-v1", 30_000),
                      ("Pendulum-v1", 50_000)), (0, 1, 2, 3, 4)),
    "lunar": Stage((("LunarLander-v3", 100_000),), (0, 1, 2, 3, 4)),
    "mcc": Stage((("MountainCarContinuous-v0", 20_000),), (0, 1, 2)),
    # The zoo's SAC starts learning after 10k random steps (of 1M); at a 30k budget that would leave a third of it
    # random, so learning starts after 2k here (measured at 20k with the zoo's 10k: HalfCheetah's true-reward agent
    # reached only 62 against random -280, too little learning to normalize by).
    "mujoco": Stage((("HalfCheetah-v5", 30_000), ("Hopper-v5", 30_000)), (0, 1, 2), ("learning_starts:2000",)),
}


@dataclass(frozen=True)
class MixStage:
    """Learned-reward runs on a model whose data add the behaviour of true-reward agents to the random data (the
    behaviour mix of issue #12: random actions never reach the states a trained agent visits)."""

    base: str  # the stage whose true-reward agents behave (and whose true-reward runs normalize the scores)
    task: str
    agents: tuple[int, ...]  # seeds of those true-reward runs
    steps_per_agent: int
    eps: float  # probability of a random action per env step


MIX_STAGES: dict[str, MixStage] = {"lunar_mix": MixStage("lunar", "LunarLander-v3", (0, 1), 10_000, 0.25)}
RANDOM_TASKS = ["CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCarContinuous-v0", "LunarLander-v3"]
MUJOCO_TASKS = ["HalfCheetah-v5", "Hopper-v5"]
FAMILY_TASK = "CartPole-v1/x0.75"


# --------------------------------------------------------------------------- running the commands
def run(cmd: list[str], log: list[dict[str, Any]], cwd: Path) -> None:
    """Run one rlrm command (stdout/stderr passed through) and record it with its wall time."""
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    rc = subprocess.run(cmd, cwd=cwd, env={**os.environ, "WANDB_MODE": "disabled"}).returncode
    log.append({"command": " ".join(cmd[2:]), "rc": rc, "wall_s": round(time.perf_counter() - start, 1),
                "start_utc": time.strftime("%H:%M:%S", time.gmtime(time.time() - (time.perf_counter() - start)))})
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit status {rc}")


def rlrm_cmd(module: str, *args: str | int | Path) -> list[str]:
    return [sys.executable, "-m", f"rlrm.{module}", *(str(a) for a in args)]


def collect_data(work: Path, steps: int, with_mujoco: bool, log: list[dict[str, Any]], cwd: Path) -> list[Path]:
    """Random-policy data per task (wander data for the family task); returns the dataset folders."""
    random_tasks = RANDOM_TASKS + (MUJOCO_TASKS if with_mujoco else [])
    out = [work / "data" / "random", work / "data" / "wander"]
    if not out[0].exists():
        run(rlrm_cmd("collect", *[a for t in random_tasks for a in ("--task", t)], "--steps", steps, "--seed", 0,
                     "--out", out[0], "--no-progress"), log, cwd)
    if not out[1].exists():
        run(rlrm_cmd("collect", "--task", FAMILY_TASK, "--policy", WANDER, "--steps", steps, "--seed", 0,
                     "--out", out[1], "--no-progress"), log, cwd)
    return out


def train_model(work: Path, data: list[Path], log: list[dict[str, Any]], cwd: Path) -> Path:
    model = work / "data" / "rm_multitask"
    if not model.exists():
        run(rlrm_cmd("train_reward", "--data", *data, "--out", model, "--seed", 0, "--no-progress"), log, cwd)
    return model


def run_stage(stage: Stage, model: Path, runs_dir: Path, workers: int, log: list[dict[str, Any]],
              cwd: Path) -> None:
    seeds = [a for s in stage.seeds for a in ("--seed", s)]
    params = ["--params", *stage.params] if stage.params else []
    for task, steps in stage.runs:
        run(rlrm_cmd("train_agent", "--task", task, "-n", steps, *params, "--reward-model", model, "--baseline", *seeds,
                     "--workers", workers, "--output-dir", runs_dir, "--no-progress", "--wandb-mode", "disabled",
                     "--resume"), log, cwd)


def run_mix_stage(stage: MixStage, work: Path, data: list[Path], model: Path, runs_dir: Path, workers: int,
                  log: list[dict[str, Any]], cwd: Path) -> list[Path]:
    """The base stage (resumed: finished runs are skipped), behaviour data from its true-reward agents, the mix
    model, and the learned-reward runs on it. Returns the mix data folders (for the label statistics)."""
    base = STAGES[stage.base]
    run_stage(base, model, runs_dir, workers, log, cwd)
    budget = dict(base.runs)[stage.task]
    rows = json.loads((runs_dir / "results.json").read_text())
    mix = []
    for seed in stage.agents:
        row = next((r for r in rows if r["task"] == stage.task and r["reward"] == "true" and r["seed"] == seed
                    and "error" not in r), None)
        if row is None:
            raise SystemExit(f"{stage.task}: no finished true-reward run of seed {seed} in {runs_dir}")
        out = work / "data" / f"mix_{stage.task.replace('/', '_')}_s{seed}"
        if not out.exists():
            run(rlrm_cmd("collect", "--task", stage.task, "--policy",
                         f"mixture:{Path(row['run_dir']) / 'agent.zip'}:{stage.eps}", "--steps", stage.steps_per_agent,
                         "--seed", 100 + seed, "--out", out, "--no-progress"), log, cwd)
        mix.append(out)
    mix_model = work / "data" / "rm_mix"
    if not mix_model.exists():
        run(rlrm_cmd("train_reward", "--data", *data, *mix, "--out", mix_model, "--seed", 0, "--no-progress"), log, cwd)
    seeds = [a for s in base.seeds for a in ("--seed", s)]
    params = ["--params", *base.params] if base.params else []
    run(rlrm_cmd("train_agent", "--task", stage.task, "-n", budget, *params, "--reward-model", mix_model, *seeds,
                 "--workers", workers, "--output-dir", runs_dir, "--no-progress", "--wandb-mode", "disabled",
                 "--resume"), log, cwd)
    return mix


# --------------------------------------------------------------------------- the data behind the verdicts
def label_stats(data: list[Path]) -> dict[str, dict[str, Any]]:
    """Per dataset folder: the labels' min / max / mean / std, distinct values, and the best episode's return."""
    stats = {}
    for root in data:
        for folder in sorted(p for p in root.iterdir() if (p / "label.npy").exists()):
            label, episode = np.load(folder / "label.npy"), np.load(folder / "episode.npy")
            manifest = json.loads((folder / "manifest.json").read_text())
            returns = np.bincount(episode - episode.min(), weights=label)
            name = str(manifest.get("task", {}).get("name", folder.name))
            stats[name if name not in stats else f"{name} [{folder.relative_to(root.parent)}]"] = {
                "dataset": str(folder.relative_to(root.parent)), "transitions": int(label.size),
                "episodes": int(np.unique(episode).size), "min": float(label.min()), "max": float(label.max()),
                "mean": float(label.mean()), "std": float(label.std()),
                "distinct": int(np.unique(np.round(label, 6)).size), "best_episode_return": float(returns.max())}
    return stats


def machine(cwd: Path) -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=cwd).stdout
    return {"cpu": cpu, "cpus": str(os.cpu_count()), "commit": commit.strip(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_avg": str(os.getloadavg())}


# --------------------------------------------------------------------------- results
def publish(work: Path, runs_dir: Path, out: Path, meta: dict[str, Any]) -> None:
    """Copy results.json and the report (not agents or checkpoints) into ``out``; write meta.json beside them."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(runs_dir / "results.json", out / "results.json")
    report = runs_dir / "report"
    for f in report.glob("*"):
        if f.is_file():
            shutil.copy2(f, out / f.name)
    if (report / "hacking").is_dir():
        shutil.copytree(report / "hacking", out / "hacking", dirs_exist_ok=True)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def pool(scores_csvs: list[Path], out: Path, reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """IQM / mean with 95% stratified bootstrap intervals (rliable, via :mod:`rlrm.rl.quality`) over the runs of
    several ``scores.csv`` files: per source (``learned``: any learned reward; ``true``), strata = task · algo ·
    budget. Written to ``out/pooled.json``; returns it."""
    import csv

    from rlrm.rl import quality

    rows = []
    for path in scores_csvs:
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                score = float(r["normalized_score"]) if r["normalized_score"] not in ("", "nan") else float("nan")
                rows.append({"source": "true" if r["source"] == "true" else "learned", "normalized_score": score,
                             "group": quality.group_of(r["task"], r["algo"], int(r["timesteps"])),
                             "record": str(path)})
    groups = quality.scores_by_source(rows)
    result = {"records": [str(p) for p in scores_csvs], "reps": reps, "seed": seed,
              "aggregate": quality.interval_estimates(groups, reps=reps, seed=seed),
              "groups": {src: {g: [float(x) for x in v] for g, v in per.items()} for src, per in groups.items()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "pooled.json").write_text(json.dumps(result, indent=2) + "\n")
    for src, a in result["aggregate"].items():
        print(f"pooled {src}: {a['runs']} runs, {a['groups']} groups: IQM {a['iqm']['point']:.3f} "
              f"[{a['iqm']['low']:.3f}, {a['iqm']['high']:.3f}], mean {a['mean']['point']:.3f} "
              f"[{a['mean']['low']:.3f}, {a['mean']['high']:.3f}]")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, required=True, help="data, model and run folders")
    p.add_argument("--stage", action="append", choices=sorted([*STAGES, *MIX_STAGES]),
                   help="default: classic, lunar, mcc")
    p.add_argument("--steps", type=int, default=20_000, help="transitions per task for the reward model")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--with-mujoco", action="store_true", help="collect MuJoCo data too (before the model exists)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "agent_quality")
    p.add_argument("--pool", type=Path, nargs="+", default=[],
                   help="scores.csv of earlier records to pool with this one (OUT/pooled.json)")
    args = p.parse_args()
    cwd = Path.cwd()
    work, log = args.work_dir.resolve(), []
    runs_dir = work / "grid"
    meta_path = args.out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"commands": []}
    meta["machine"] = machine(cwd)
    data = collect_data(work, args.steps, args.with_mujoco, log, cwd)
    model = train_model(work, data, log, cwd)
    mix: list[Path] = sorted((work / "data").glob("mix_*"))
    if not args.report_only:
        for name in args.stage or ["classic", "lunar", "mcc"]:
            if name in MIX_STAGES:
                mix = sorted({*mix, *run_mix_stage(MIX_STAGES[name], work, data, model, runs_dir, args.workers, log,
                                                   cwd)})
            else:
                run_stage(STAGES[name], model, runs_dir, args.workers, log, cwd)
    run(rlrm_cmd("report", runs_dir), log, cwd)
    meta["label_stats"] = label_stats(data + mix)
    meta["commands"] += log
    publish(work, runs_dir, args.out, meta)
    if args.pool:
        pool([*args.pool, args.out / "scores.csv"], args.out)
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
