"""Wall time of an 8-run grid (issue #12): one run after another vs ``--workers 2`` vs ``--backend ray --workers 2``.

Each mode is the real command a user types (a fresh ``python -m rlrm.train_agent`` process, so the driver's start-up,
worker start-up and Ray's start count), on the same plan: PPO on CartPole-v1, 8 seeds, ``-n`` steps each, true
reward, 10 evaluation episodes. The default ``-n`` is 100k steps, PPO CartPole-v1's budget in ``agents/ppo.yaml``
(RL Zoo's): what a grid of default runs costs; ``--steps 50000`` is the shorter grid sessions 7 and 9 timed, where
the parallel modes' fixed start-up and shut-down costs (Ray: ~10 s) weigh twice as much.
The modes are interleaved over ``--repeats`` rounds; the speedup is sequential / parallel per round (median and
range reported). Target: >= 1.7x for both on this 2-core machine. The results of every mode must be the same rows
(checked).

    python benchmarks/grid_walltime.py                 # 8 runs x 100k steps, 2 rounds
    python benchmarks/grid_walltime.py --quick         # 4 runs x 5k steps, 1 round
    python benchmarks/grid_walltime.py --modes ray2 --repeats 3   # sequential vs Ray only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {"sequential": [], "workers2": ["--workers", "2"], "ray2": ["--backend", "ray", "--workers", "2"]}
COMPARED = ("task", "seed", "timesteps", "true_mean", "true_std")


def run_mode(mode: str, args: list[str], work: Path) -> tuple[float, list[dict[str, object]]]:
    out = work / mode
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rlrm.train_agent", *args, *MODES[mode], "--output-dir", str(out)],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    rows = json.loads((out / "results.json").read_text())
    return seconds, sorted(({k: r[k] for k in COMPARED} for r in rows), key=lambda r: r["seed"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--steps", type=int, default=100_000, help="steps per run (default: the yaml's CartPole budget)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--modes", nargs="+", choices=[m for m in MODES if m != "sequential"], default=None,
                   help="parallel modes to time against sequential (default: all)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "grid_walltime")
    a = p.parse_args()
    if a.quick:
        a.runs, a.steps, a.repeats = 4, 5_000, 1
    args = ["--env", "CartPole-v1", "--reward", "true", "-n", str(a.steps), "--no-progress",
            *[x for s in range(a.runs) for x in ("--seed", str(s))]]
    rounds: list[dict[str, float]] = []
    reference = None
    with tempfile.TemporaryDirectory(prefix="rlrm-grid-bench-") as tmp:
        for r in range(a.repeats):
            times = {}
            for mode in ["sequential", *(a.modes or [m for m in MODES if m != "sequential"])]:
                seconds, rows = run_mode(mode, args, Path(tmp))
                reference = reference or rows
                if rows != reference:
                    raise SystemExit(f"{mode}: results differ from the sequential run's")
                times[mode] = seconds
                print(f"round {r + 1}: {mode:<10} {seconds:7.1f} s", flush=True)
            rounds.append(times)
    speedups = {m: [t["sequential"] / t[m] for t in rounds] for m in rounds[0] if m != "sequential"}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit, "machine": platform.platform(),
               "cpus": os.cpu_count(), "runs": a.runs, "steps": a.steps, "rounds": rounds,
               "speedup_median": {m: statistics.median(v) for m, v in speedups.items()},
               "speedup_range": {m: [min(v), max(v)] for m, v in speedups.items()}, "identical_results": True}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    for m, v in speedups.items():
        print(f"{m}: speedup {statistics.median(v):.2f}x (range {min(v):.2f}-{max(v):.2f}) over {len(v)} rounds")


if __name__ == "__main__":
    main()
