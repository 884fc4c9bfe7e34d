"""How ``extend_model``'s automatic choice is made on few labels, and what another rule would choose (issue #9).

On the label-efficiency draws (same family data, pretraining, draws and training config as
``label_efficiency.py --library-budget``), records for every (held-out task, seed, N) the per-transition
out-of-fold errors that the automatic choice compares (``rlrm.train.fewshot``'s cross-validation: 4 folds, each of
``span``, ``frozen`` and ``finetune`` fitted on three and predicting the fourth). Any rule that chooses from those
errors can then be scored offline: the model it returns for a choice is that mode's final model, whose test r2 is
in the label-efficiency ``runs.csv`` of the same code (rows ``span``/``frozen``/``finetune``).

    python benchmarks/auto_choice.py --family cartpole --ns 4 6 8 12 16 --out /tmp/auto_choice
    python benchmarks/auto_choice.py --score /tmp/auto_choice/cartpole.json \\
        --runs benchmarks/label_efficiency_session11/cartpole/runs.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from label_efficiency import (
    FAMILIES,
    Budget,
    collect_family,
    draw,
    fewshot_config,
    pretrain,
    read_csv,
    write_csv,
)
from tqdm.auto import tqdm

from rlrm import atomic
from rlrm.train import fewshot

MODES = ("span", "frozen", "finetune")


def record(family: str, seeds: int, ns: list[int], out: Path) -> Path:
    """Out-of-fold errors of every mode per draw, written to ``out/<family>.json``."""
    budget = dataclasses.replace(Budget(), library_defaults=True, efficiency_only=True, scratch=False)
    fd = collect_family(FAMILIES[family], budget)
    base, _ = pretrain(fd, budget)
    points = []
    grid = [(t, s, n) for t in fd.heldout_tasks for s in range(seeds) for n in ns]
    for task, seed, n in tqdm(grid, desc=f"auto choice {family}", unit="point"):
        ds = draw(fd.labeled(task, "pool"), n, seed)
        cfg = fewshot_config(budget, seed)
        assert fewshot.cross_validates([ds])
        errors = {m: fewshot._cv_errors(fewshot._out_of_fold(base, [ds], [ds], cfg, m), [ds]).tolist()
                  for m in MODES}
        points.append({"task": task.name, "seed": seed, "n": n, "errors": errors,
                       "chosen": fewshot.one_standard_error_choice({m: np.asarray(e) for m, e in errors.items()})})
    path = out / f"{family}.json"
    atomic.write_json(path, points)
    return path


def best_se_choice(errors: dict[str, np.ndarray]) -> str:
    """The rule of sessions 8-10: the simplest mode whose mean error is within one standard error of the best
    mode's own errors."""
    means = {m: float(np.mean(e)) for m, e in errors.items()}
    best = min(means, key=lambda m: means[m])
    limit = means[best] + fewshot._standard_error(errors[best])
    return next(m for m in fewshot.SIMPLEST_FIRST if m in means and means[m] <= limit)


def paired_choice(errors: dict[str, np.ndarray]) -> str:
    """The simplest mode whose mean error exceeds the best's by at most one standard error of their paired
    per-transition difference (the library's rule from session 11; written out here so that the scores do not
    depend on the code they run with)."""
    means = {m: float(np.mean(e)) for m, e in errors.items()}
    best = min(means, key=lambda m: means[m])
    for m in fewshot.SIMPLEST_FIRST:
        d = errors[m] - errors[best]
        se = float(np.std(d, ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
        if float(np.mean(d)) <= se:
            return m
    return best


RULES = {"best's SE (sessions 8-10)": best_se_choice, "paired SE (session 11)": paired_choice,
         "span always": lambda e: "span", "min": lambda e: min(e, key=lambda m: float(np.mean(e[m])))}


def load_points(path: Path) -> list[dict]:
    """Recorded choices: this script's JSON, or a label-efficiency ``runs.csv`` whose auto rows carry their
    ``choice_errors``."""
    if path.suffix == ".csv":
        return [{"task": r["task"], "seed": int(r["seed"]), "n": int(r["n"]), "chosen": r["chosen"],
                 "errors": json.loads(r["choice_errors"])}
                for r in read_csv(path) if r["method"] == "auto" and r.get("choice_errors")]
    return json.loads(path.read_text())


def rechoose(path: Path, runs: Path, out: Path) -> int:
    """``runs`` with every auto row that has a recorded choice replaced by the row of the mode the paired rule picks
    (what ``extend_model`` returns for that choice); the other rows as they are. Returns how many rows changed."""
    picks = {(p["task"], p["seed"], p["n"]): paired_choice({m: np.asarray(e) for m, e in p["errors"].items()})
             for p in load_points(path)}
    rows = read_csv(runs)
    by_mode = {(r["task"], int(r["seed"]), int(r["n"]), r["method"]): r for r in rows}
    changed, new = 0, []
    for r in rows:
        key = (r["task"], int(r["seed"]), int(r["n"]))
        if r["method"] == "auto" and key in picks:
            pick = picks[key]
            changed += pick != r["chosen"]
            src = r if pick == r["chosen"] else by_mode[(*key, pick)]
            r = {**src, "method": "auto", "chosen": pick, "seconds": r["seconds"]}
        new.append({k: v for k, v in r.items() if k != "choice_errors"})
    write_csv(out, new)
    return changed


def score(path: Path, runs: Path) -> str:
    """Mean test r2 per N of each rule's choices, and how often each picks span. ``path``: this script's JSON, or a
    label-efficiency ``runs.csv`` whose auto rows carry their ``choice_errors``."""
    points = load_points(path)
    r2 = {(r["task"], int(r["seed"]), int(r["n"]), r["method"]): float(r["r2"]) for r in read_csv(runs)}
    auto = {(r["task"], int(r["seed"]), int(r["n"])): r["chosen"] for r in read_csv(runs) if r["method"] == "auto"}
    agree = sum(auto.get((p["task"], p["seed"], p["n"])) == p["chosen"] for p in points)
    lines = [f"{path.name}: the recorded library choice equals runs.csv's auto choice on {agree} of {len(points)} "
             "draws", "", "| N | " + " | ".join(RULES) + " | test-best mode |", "|---|" + "---|" * (len(RULES) + 1)]
    for n in sorted({p["n"] for p in points}):
        sel = [p for p in points if p["n"] == n]
        cells = []
        for rule in RULES.values():
            picks = [rule({m: np.asarray(e) for m, e in p["errors"].items()}) for p in sel]
            vals = [r2[(p["task"], p["seed"], n, m)] for p, m in zip(sel, picks)]
            cells.append(f"{np.mean(vals):.3f} ({sum(m == 'span' for m in picks)}/{len(sel)} span)")
        best = [max(r2[(p["task"], p["seed"], n, m)] for m in MODES) for p in sel]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {np.mean(best):.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", choices=list(FAMILIES), default="cartpole")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--ns", type=int, nargs="+", default=[4, 6, 8, 12, 16])
    p.add_argument("--out", type=Path, default=Path("benchmarks/auto_choice"))
    p.add_argument("--score", type=Path, help="score the rules on a recorded JSON instead of recording")
    p.add_argument("--runs", type=Path, help="with --score: the label-efficiency runs.csv of the same code")
    p.add_argument("--rechoose", type=Path, help="with --score/--runs: write runs.csv with auto rows chosen by the "
                   "paired rule here")
    a = p.parse_args()
    if a.score and a.rechoose:
        print(f"{rechoose(a.score, a.runs, a.rechoose)} auto rows changed; wrote {a.rechoose}")
        return
    if a.score:
        print(score(a.score, a.runs))
        return
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    print(record(a.family, a.seeds, a.ns, a.out))


if __name__ == "__main__":
    main()
