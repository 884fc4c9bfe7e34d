"""What should a span head be shrunk toward on a handful of labels? (issue #9)

A span head (:mod:`rlrm.train.span`) fits a new task's reward as ``c0 + sum_k c_k r_k`` over the earlier heads'
rewards by ridge regression. With 4-8 labels the penalty is strong, and the prior it shrinks toward decides the
prediction: ``zero`` (no combination: a constant, the library's rule before session 9) or ``mean`` (every earlier
head weighted 1/K: the family's average reward). This compares, on the held-out tasks of each family, with span
alone (no trained head):

- ``zero``, ``mean``: one prior always (penalty by leave-one-out, as the library);
- ``rule``: ``mean`` unless ``zero``'s leave-one-out squared errors are lower by more than one standard error of the
  paired difference (what :func:`rlrm.train.span.fit_span` does now);
- ``library``: :func:`rlrm.train.span.fit_span` itself (must equal ``rule``: checked).

Data and pretraining are those of ``benchmarks/label_efficiency.py --library-budget`` (same seeds, so the same
base model and label draws for seeds 0-4); test r2 on the family's 5,000 test transitions.

    python benchmarks/span_prior.py --families cartpole point cheetah --seeds 10 --out benchmarks/span_prior
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import label_efficiency as le  # the benchmark's data and pretraining, reused as they are

from rlrm import atomic, metrics
from rlrm.train.span import PENALTIES, basis_rewards, fit_span, span_basis

NS = (4, 5, 6, 8, 12, 16)
VARIANTS = ("zero", "mean", "rule", "library")


def ridge_loo(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Ridge with an offset, columns centered and scaled, penalty by leave-one-out (an independent re-implementation
    of the library's): (coefficients in x's units, offset, left-out squared errors or None)."""
    n = y.size
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    u, s, vt = np.linalg.svd((x - mean) / scale, full_matrices=False)
    ym = y.mean()
    uy = u.T @ (y - ym)
    unit = float(np.mean(s ** 2)) or 1.0
    best: tuple[float, float, np.ndarray | None] = (np.inf, 1.0, None)
    if n >= 3:
        for rel in PENALTIES:
            shrink = s ** 2 / (s ** 2 + rel * unit)
            lev = (u ** 2) @ shrink + 1.0 / n
            if np.any(1 - lev < 1e-6):
                continue
            sq = ((y - ym - u @ (shrink * uy)) / (1 - lev)) ** 2
            if sq.mean() < best[0] * (1 - 1e-12):
                best = (float(sq.mean()), rel, sq)
    coef = (vt.T @ (s / (s ** 2 + best[1] * unit) * uy)) / scale
    return coef, float(ym - mean @ coef), best[2]


def predictions(train_r: np.ndarray, y: np.ndarray, test_r: np.ndarray,
                basis: tuple[str, ...]) -> dict[str, np.ndarray]:
    k = train_r.shape[1]
    c_zero, b_zero, sq_zero = ridge_loo(train_r, y)
    d_mean, b_mean, sq_mean = ridge_loo(train_r, y - train_r.mean(1))
    out = {"zero": b_zero + test_r @ c_zero, "mean": b_mean + test_r @ (d_mean + 1.0 / k)}
    use_zero = False
    if sq_zero is not None and sq_mean is not None:
        diff = sq_zero - sq_mean
        use_zero = bool(diff.mean() + diff.std(ddof=1) / np.sqrt(diff.size) < 0)
    out["rule"] = out["zero"] if use_zero else out["mean"]
    fit = fit_span(train_r, y, basis)
    out["library"] = fit.offset + test_r @ fit.coef
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=["cartpole", "point", "cheetah"], choices=list(le.FAMILIES))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "span_prior")
    a = p.parse_args()
    torch.set_num_threads(1)
    budget = le.Budget(library_defaults=True, efficiency_only=True)
    rows = []
    for fam in a.families:
        t0 = time.perf_counter()
        fd = le.collect_family(le.FAMILIES[fam], budget)
        base, _ = le.pretrain(fd, budget)
        for task in fd.heldout_tasks:
            pool, test = fd.labeled(task, "pool"), fd.labeled(task, "test")
            basis = span_basis(base, pool)
            pool_r, test_r = basis_rewards(base, pool, basis), basis_rewards(base, test, basis)
            for seed in range(a.seeds):
                for n in NS:
                    rng = np.random.default_rng([seed, 0, n])  # le.draw's generator: the same draws
                    idx = np.sort(rng.choice(len(pool), size=min(n, len(pool)), replace=False))
                    preds = predictions(pool_r[idx], np.asarray(pool.label[idx], np.float64), test_r, basis)
                    if not np.allclose(preds["library"], preds["rule"], rtol=1e-6, atol=1e-8):
                        raise SystemExit(f"{task.name} seed {seed} n {n}: the library's fit differs from the rule")
                    for v in VARIANTS:
                        rows.append({"family": fam, "task": task.name, "seed": seed, "n": n, "variant": v,
                                     "r2": metrics.r2(preds[v].astype(np.float32), test.label)})
        print(f"{fam}: {time.perf_counter() - t0:.0f} s", flush=True)
    lines = ["| family | N | " + " | ".join(VARIANTS[:3]) + " |", "|---|---:|" + "---:|" * 3]
    summary = []
    for fam in a.families:
        for n in NS:
            cell = {v: [r["r2"] for r in rows if r["family"] == fam and r["n"] == n and r["variant"] == v]
                    for v in VARIANTS}
            summary.append({"family": fam, "n": n, **{f"{v}_mean": float(np.mean(cell[v])) for v in VARIANTS},
                            **{f"{v}_median": float(np.median(cell[v])) for v in VARIANTS}})
            lines.append(f"| {fam} | {n} | " + " | ".join(
                f"{np.mean(cell[v]):.3f} ({np.median(cell[v]):.3f})" for v in VARIANTS[:3]) + " |")
    table = "\n".join(lines)
    print("test r2, mean (median) over held-out tasks x seeds\n" + table)
    atomic.write_json(a.out / "summary.json", {"machine": le.machine(), "seeds": a.seeds, "ns": NS,
                                               "summary": summary, "rows": rows})
    atomic.write_bytes(a.out / "table.md", (table + "\n").encode())


if __name__ == "__main__":
    main()
