"""``python -m rlrm.report RUNS_DIR [RUNS_DIR ...]``: how well do agents trained on a learned reward do on the TRUE
reward, and does any of them game its reward? For any output folder of ``python -m rlrm.train_agent``, or several
reported as one grid (runs of separate commands; then ``--out`` is required).

- Normalized score per run: (true return - random policy) / (true-reward agents - random policy), where the
  true-reward agents are those of the same task, algorithm and budget (the mean over their seeds; --pair-seeds:
  the same seed's run where there is one) and the random policy's return is the mean over --random-episodes
  seeded episodes. A task without true-reward runs is reported without a normalized score, and the reason said.
- Aggregate IQM and mean per reward source, with 95% stratified bootstrap intervals (rliable), performance
  profiles, and learning curves of the true return for each reward source.
- Reward hacking: per learned-reward run, the rank correlation of its learned and true returns across
  evaluations, and a flag when its true return fell from its peak while its learned return rose (both beyond
  evaluation noise; see rlrm/rl/hacking.py for the rule).

Writes scores.csv, report.json, random_returns.json (a cache) and PNG figures into --out (default
RUNS_DIR/report/); prints the tables (with --json: report.json on stdout instead).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlrm import cli, experiment
from rlrm.errors import ConfigError
from rlrm.rl import hacking
from rlrm.rl.scorecard import ReportOptions, build_report

FLAGS = {"runs_dir": "RUNS_DIR", "out": "--out", "random_episodes": "--random-episodes", "reps": "--reps"}
PROG = "python -m rlrm.report"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dir", type=Path, nargs="+", metavar="RUNS_DIR",
                   help="an output folder of python -m rlrm.train_agent (several: one report over all their runs)")
    p.add_argument("--out", type=Path, default=None,
                   help="where the report goes (default: RUNS_DIR/report; required with several RUNS_DIR)")
    p.add_argument("--json", action="store_true", help="print report.json instead of the tables")
    p.add_argument("--random-episodes", type=int, default=100,
                   help="episodes of the random policy per task (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random policy's episodes and the bootstrap")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples per interval (default 2000)")
    p.add_argument("--pair-seeds", action="store_true",
                   help="normalize by the true-reward run of the same seed (default: the mean over its seeds)")
    cli.add_env_module_args(p)
    cli.add_common_args(p)
    return p


def main(args: argparse.Namespace) -> int:
    cli.allow_typed_env_modules(args.env_module)
    dirs = list(dict.fromkeys(args.runs_dir))  # a folder named twice is reported once
    if args.out is None and len(dirs) > 1:
        raise ConfigError(f"--out: required with several RUNS_DIR ({len(dirs)} given); expected the folder the "
                          "combined report goes to")
    out = args.out if args.out is not None else dirs[0] / "report"
    options = ReportOptions(random_episodes=args.random_episodes, seed=args.seed, reps=args.reps,
                            pair_seeds=args.pair_seeds)
    report = build_report({d: experiment.read_results(d) for d in dirs}, out, options)
    if args.json:
        print(Path(report["files"]["report"]).read_text(), end="")  # strict JSON: NaN written as null
        return 0
    print_report(report)
    return 0


def _pm(interval: dict[str, float]) -> str:
    return f"[{cli.fmt(interval['low'], 2)}, {cli.fmt(interval['high'], 2)}]"


def print_report(report: dict[str, Any]) -> None:
    """The tables: scores per task · algo · budget, aggregates per reward source, reward hacking per run."""
    fmt = cli.fmt
    baseline = ("the same seed's true-reward run (else their mean)" if report["options"]["pair_seeds"]
                else "the mean of the true-reward runs")
    cli.print_table(
        f"Agent quality in {report['runs_dir']}: normalized score (random policy = 0, true-reward agents = 1)",
        [{"task · algo · budget": g["group"], "reward": g["source"], "runs": g["runs"],
          "true return": fmt(g["true_return"], 1), "random": fmt(g["random_return"], 1),
          "true-reward agents": fmt(g["baseline_return"], 1), "score": fmt(g["normalized_score"], 2),
          "note": g["note"]} for g in report["groups"]],
        caption=f"true returns: mean over runs of deterministic evaluations; random: {report['random']['episodes']} "
                f"episodes, seed {report['random']['seed']}; score: per run against {baseline}, averaged")
    if report["aggregate"]:
        cli.print_table(
            f"Aggregate normalized score (95% stratified bootstrap, {report['bootstrap']['reps']:,} resamples)",
            [{"reward": src, "runs": a["runs"], "groups": a["groups"], "IQM": fmt(a["iqm"]["point"], 2),
              "IQM 95% CI": _pm(a["iqm"]), "mean": fmt(a["mean"]["point"], 2), "mean 95% CI": _pm(a["mean"])}
             for src, a in report["aggregate"].items()],
            caption="IQM: 25% trimmed mean over all runs; mean: mean of the groups' means")
    else:
        print("no normalized scores: nothing to aggregate (see the notes)")
    rows = report["hacking"]
    if rows:
        flagged = sum(bool(r["flagged"]) for r in rows)
        cli.print_table(
            f"Reward hacking: {flagged} of {len(rows)} learned-reward run(s) flagged",
            [{"task": r["task"], "algo": r["algo"], "seed": r["seed"], "reward": r["source"],
              "evals": r.get("evaluations"), "spearman": fmt(r.get("spearman", math.nan), 2),
              "true peak": fmt(r.get("true_peak", math.nan), 1),
              "at step": r.get("true_peak_timesteps"), "true final": fmt(r.get("true_final", math.nan), 1),
              "learned change": fmt(r.get("learned_rise", math.nan), 1), "flagged": bool(r["flagged"])}
             for r in rows],
            caption=f"flagged: the true return fell from its peak to the end while the learned return rose, both "
                    f"beyond noise (z = Φ⁻¹(1 - {hacking.ALPHA}/evaluations) standard errors and "
                    f"{hacking.MIN_FRACTION:.0%} of the curve's range)")
        for r in rows:
            if r["flagged"]:
                print(f"{r['task']} · {r['algo']} · seed {r['seed']}: {r['reason']}"
                      + (f"; its true-peak agent: {r['best_true_agent']}" if r.get("best_true_agent") else ""))
    for note in report["notes"]:
        print(f"note: {note}")
    files = report["files"]
    print(f"report in {Path(files['report']).parent}: " + ", ".join(Path(f).name for f in files.values())
          + (f", hacking/ ({len(rows)} figure(s))" if rows else ""), file=sys.stderr)


def entry(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv``); returns the exit code."""
    return cli.run_main(main, build_parser(), argv, FLAGS)


if __name__ == "__main__":
    raise SystemExit(entry())
