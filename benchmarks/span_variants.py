"""Span heads with nonnegative coefficients (Breiman's stacked regressions) vs the library's span fit (issue #9).

Question: does constraining a span head's coefficients to be nonnegative (the new reward as a nonnegative mix of the
earlier heads' rewards, plus an offset) raise test r2 at 4-12 labels? Breiman (1996, "Stacked regressions") found
that constraint the one that made stacking work; a family's interpolated target (a bump between two known bumps) is
such a mix, an extrapolated one (a bump past the last known target) is not.

Per family (the same data, pretraining and label draws as ``label_efficiency.py``; draws for seeds 0-4 are that
script's), the held-out tasks plus extra targets, interpolated and extrapolated: the basis rewards (earlier heads'
predictions) are computed once on the pool and test sets; each draw of N labels then fits

- ``span``: :func:`rlrm.train.span.fit_free` (ridge toward the family's average, penalty by leave-one-out over
  single labels; ``fit_span`` until session 11, when the ``nn_rule`` below became ``fit_span``),
- (``span_ep`` in ``benchmarks/span_variants/{cartpole,point}.csv``: the same with leave-one-episode-out, from a
  trial ``groups`` option of ``fit_span`` at commit ``c1b8130``, reverted after this measurement),
- ``nn_mean`` / ``nn_zero``: nonnegative least squares with a ridge toward the average / toward zero, the penalty
  chosen by leave-one-out (refits: the constraint has no closed form),

- ``nn_rule``: ``nn_mean`` unless ``span``'s nested leave-one-out squared errors (each label predicted by the
  whole procedure, penalty choice included, fitted without it) are lower than ``nn_mean``'s by more than one
  standard error of the paired difference: the rule ``fit_span`` uses for its prior, proposed for the constraint,

and reports test r2. Cheap after the pretraining (seconds per draw).

    python benchmarks/span_variants.py --family cartpole --seeds 20
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

import numpy as np
import torch
from label_efficiency import FAMILIES, Budget, collect_family, draw_index, pretrain
from scipy.optimize import nnls

from rlrm import metrics
from rlrm.tasks import Task
from rlrm.train.span import PENALTIES, basis_rewards, span_basis
from rlrm.train.span import fit_free as fit_span  # the unconstrained fit (``fit_span`` before session 11)

#: targets beyond the family's held-out tasks: (name, labeler); "x2" and "vel±4" lie outside the training targets
EXTRA = {"cartpole": [("x2", "rlrm:cartpole_position(target=2.0)"), ("x1.25", "rlrm:cartpole_position(target=1.25)")],
         "cheetah": [("vel4", "rlrm:cheetah_velocity(target=4)"), ("vel-4", "rlrm:cheetah_velocity(target=-4)")],
         "point": []}


def basis_data(family: str) -> dict[str, dict[str, np.ndarray]]:
    """Per task: basis rewards and labels on the pool (``bp``, ``yp``) and test (``bt``, ``yt``) sets."""
    budget = dataclasses.replace(Budget(), library_defaults=True, efficiency_only=True, scratch=False)
    fd = collect_family(FAMILIES[family], budget)
    base, _ = pretrain(fd, budget)
    env_id = fd.train_tasks[0].env_id
    tasks = fd.heldout_tasks + [Task(f"{env_id}/{n}", env_id, labeler=lab) for n, lab in EXTRA[family]]
    out = {}
    for task in tasks:
        pool, test = fd.labeled(task, "pool"), fd.labeled(task, "test")
        basis = span_basis(base, pool)
        out[task.name] = {"bp": basis_rewards(base, pool, basis), "yp": pool.label.astype(np.float64),
                          "ep": pool.episode,
                          "bt": basis_rewards(base, test, basis), "yt": test.label.astype(np.float64)}
    return out


def fit_nonneg(b: np.ndarray, y: np.ndarray, prior: str) -> tuple[np.ndarray, float]:
    """Nonnegative coefficients and a free offset, ridge toward ``prior`` (1/K each, or 0) in units scaled by each
    column's std, the penalty chosen by leave-one-out error over :data:`PENALTIES` (x number of labels)."""
    k, n = b.shape[1], len(y)
    target = np.full(k, 1.0 / k) if prior == "mean" else np.zeros(k)
    scale = np.where(b.std(0) > 1e-12, b.std(0), 1.0)

    def solve(bi: np.ndarray, yi: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        mb, my = bi.mean(0), yi.mean()
        a = np.vstack([bi - mb, np.sqrt(lam) * np.diag(scale)])
        c, _ = nnls(a, np.concatenate([yi - my, np.sqrt(lam) * scale * target]))
        return c, float(my - mb @ c)

    best = (np.inf, float(n))
    if n >= 3:
        for rel in PENALTIES:
            sq = []
            for i in range(n):
                keep = np.arange(n) != i
                c, o = solve(b[keep], y[keep], rel * n)
                sq.append((y[i] - o - b[i] @ c) ** 2)
            if np.mean(sq) < best[0] * (1 - 1e-12):
                best = (float(np.mean(sq)), rel * n)
    return solve(b, y, best[1])


def nonneg_kept(b: np.ndarray, y: np.ndarray) -> bool:
    """Whether the ``nn_rule`` keeps the nonnegative fit: unless the unconstrained fit's nested leave-one-out
    squared errors are lower by more than one standard error of the paired difference (below 4 labels: kept)."""
    n = len(y)
    if n < 4:
        return True
    diff = []
    for i in range(n):
        keep = np.arange(n) != i
        f = fit_span(b[keep], y[keep], tuple(str(j) for j in range(b.shape[1])))
        c, o = fit_nonneg(b[keep], y[keep], "mean")
        diff.append((y[i] - f.offset - b[i] @ f.coef) ** 2 - (y[i] - o - b[i] @ c) ** 2)
    d = np.asarray(diff)
    return not d.mean() + d.std(ddof=1) / np.sqrt(n) < 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", choices=list(FAMILIES), default="cartpole")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--ns", type=int, nargs="+", default=[4, 6, 8, 12])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "span_variants")
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, d in basis_data(a.family).items():
        for seed in range(a.seeds):
            for n in a.ns:
                i = draw_index(len(d["yp"]), n, seed)  # label_efficiency.draw's draw
                b, y = d["bp"][i], d["yp"][i]
                f = fit_span(b, y, tuple(str(j) for j in range(b.shape[1])))
                row = {"task": name, "seed": seed, "n": n, "span": metrics.r2(f.offset + d["bt"] @ f.coef, d["yt"])}
                row["episodes"] = len(np.unique(d["ep"][i]))
                for prior in ("mean", "zero"):
                    c, o = fit_nonneg(b, y, prior)
                    row[f"nn_{prior}"] = metrics.r2(o + d["bt"] @ c, d["yt"])
                row["nn_rule"] = row["nn_mean"] if nonneg_kept(b, y) else row["span"]
                rows.append(row)
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / f"{a.family}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    keys = ("span", "nn_mean", "nn_zero", "nn_rule")
    print(f"{'task':<28} {'n':>3} " + " ".join(f"{k:>8}" for k in keys) + f"   (mean test r2 over {a.seeds} seeds; "
          "min in brackets)")
    for name in dict.fromkeys(r["task"] for r in rows):
        for n in a.ns:
            sel = [r for r in rows if r["task"] == name and r["n"] == n]
            print(f"{name:<28} {n:>3} " + " ".join(f"{np.mean([r[k] for r in sel]):>8.3f}" for k in keys)
                  + "   [" + " ".join(f"{min(r[k] for r in sel):.2f}" for k in keys) + "]")


if __name__ == "__main__":
    main()
