"""Agent quality across runs: normalized scores and their aggregates, the honest way (rliable).

A run's **normalized score** is ``(true return - random) / (baseline - random)``: 0 is a uniformly random policy
on the task's true reward, 1 is the true-reward agents of the same task, algorithm and budget (timesteps). The
baseline is the mean true return over those agents' seeds: one baseline seed's luck would otherwise enter every
score through the denominator (``pair_seeds=True`` uses the same seed's true-reward run where there is one).

Scores are grouped by (task, algo, budget): the strata of rliable's stratified bootstrap, which resamples runs
within each group. The IQM pools the runs of all groups (the 25% trimmed mean: robust to a few outlier runs);
the mean is the mean of the per-group means (each group weighs the same). Intervals are 95% percentile bootstrap
intervals; the bootstrap is seeded, so a report is reproducible.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rliable import library as rly
from rliable import metrics

from rlrm import atomic
from rlrm.rl.evaluation import random_returns
from rlrm.tasks import Task

#: the reward source of a true-reward run; every other source is a learned reward
TRUE = "true"


def group_of(task: str, algo: str, timesteps: int) -> str:
    """The name of a (task, algo, budget) group, as tables and figures show it."""
    return f"{task} · {algo} · {timesteps:,} steps"


def normalized_scores(runs: Sequence[Mapping[str, Any]], randoms: Mapping[str, float],
                      pair_seeds: bool = False) -> list[dict[str, Any]]:
    """One score row per run: the normalized score, or NaN and a note saying why there is none.

    :param runs: result rows with ``task``, ``algo``, ``seed``, ``timesteps``, ``true_mean``, ``source`` (``"true"``
        for a true-reward run, a learned source's label otherwise) and ``run_dir``.
    :param randoms: the random policy's mean true return per task (a task missing: no score, with a note).
    :param pair_seeds: divide by the true-reward run of the same seed where there is one (else the seeds' mean).
    :return: rows with ``task``, ``algo``, ``timesteps``, ``group``, ``source``, ``seed``, ``true_return``,
        ``random_return``, ``baseline_return``, ``baseline`` (which true-reward runs), ``normalized_score``,
        ``note``, ``run_dir``.
    """
    baselines: dict[tuple[str, str, int], dict[int, float]] = {}
    for r in runs:
        if r["source"] == TRUE and math.isfinite(_num(r["true_mean"])):
            baselines.setdefault((r["task"], r["algo"], int(r["timesteps"])), {})[int(r["seed"])] = _num(r["true_mean"])
    out = []
    for r in runs:
        task, algo, steps, seed = r["task"], r["algo"], int(r["timesteps"]), int(r["seed"])
        ret, rnd = _num(r["true_mean"]), randoms.get(task, math.nan)
        seeds = baselines.get((task, algo, steps), {})
        if pair_seeds and seed in seeds:
            base, which = seeds[seed], f"seed {seed}"
        elif seeds:
            base, which = float(np.mean(list(seeds.values()))), f"mean of {len(seeds)} seed(s)"
        else:
            base, which = math.nan, ""
        note = ""
        if not seeds:
            note = f"no true-reward run of {task} with {algo} at {steps:,} steps: no normalized score"
        elif math.isnan(rnd):
            note = f"no random-policy return for {task}: no normalized score"
        elif not math.isfinite(ret):
            note = "no true return recorded"
        elif base <= rnd:
            note = (f"the true-reward agents ({base:.4g}) do not beat a random policy ({rnd:.4g}): no normalized "
                    "score")
        score = (ret - rnd) / (base - rnd) if not note else math.nan
        out.append({"task": task, "algo": algo, "timesteps": steps, "group": group_of(task, algo, steps),
                    "source": r["source"], "seed": seed, "true_return": ret, "random_return": rnd,
                    "baseline_return": base, "baseline": which, "normalized_score": score, "note": note,
                    "run_dir": r.get("run_dir")})
    return out


def scores_by_source(scores: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """The finite normalized scores per source (learned ones by name, then ``true``), then per group (the
    strata)."""
    out: dict[str, dict[str, list[float]]] = {}
    for s in scores:
        if math.isfinite(s["normalized_score"]):
            out.setdefault(s["source"], {}).setdefault(s["group"], []).append(s["normalized_score"])
    order = sorted(out, key=lambda src: (src == TRUE, src))  # learned sources first, the reference last
    return {src: {g: np.asarray(v, np.float64) for g, v in out[src].items()} for src in order}


def iqm(scores: np.ndarray) -> float:
    """The interquartile mean (rliable's ``aggregate_iqm``: the 25% trimmed mean of all scores)."""
    return float(metrics.aggregate_iqm(np.asarray(scores, np.float64)))


def _bootstrap(groups: Mapping[str, Mapping[str, np.ndarray]], func: Callable[..., np.ndarray], reps: int,
               seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rliable's stratified bootstrap: each group's runs resampled on their own (groups may differ in size).

    rliable 1.2's ``StratifiedBootstrap`` draws its indices from NumPy's *global* generator, whatever
    ``random_state`` says: the global state is seeded here for the call and put back afterwards, so a report is
    reproducible from its seed and the caller's random stream is left as it was.
    """
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch warns that rliable passes a RandomState (it still uses it)
            warnings.simplefilter("ignore", FutureWarning)
            return rly.get_interval_estimates({src: list(g.values()) for src, g in groups.items()}, func, reps=reps,
                                              random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(saved)


def interval_estimates(groups: Mapping[str, Mapping[str, np.ndarray]], reps: int = 2000,
                       seed: int = 0) -> dict[str, dict[str, Any]]:
    """IQM and mean with 95% stratified bootstrap intervals, per source.

    :param groups: scores per source, then per group (:func:`scores_by_source`).
    :return: per source ``{"iqm": {"point", "low", "high"}, "mean": {...}, "runs": n, "groups": k}``.
    """
    def both(*per_group: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(np.concatenate(per_group)),
                         np.mean([g.mean() for g in per_group])])

    points, cis = _bootstrap(groups, both, reps, seed)
    return {src: {name: {"point": float(points[src][k]), "low": float(cis[src][0, k]), "high": float(cis[src][1, k])}
                  for k, name in enumerate(("iqm", "mean"))}
            | {"runs": int(sum(len(v) for v in groups[src].values())), "groups": len(groups[src])}
            for src in groups}


def performance_profiles(groups: Mapping[str, Mapping[str, np.ndarray]], taus: np.ndarray, reps: int = 2000,
                         seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Score distributions (rliable's performance profiles): the fraction of runs whose score exceeds each τ, with
    95% stratified bootstrap bands, per source (as ``rliable.library.create_performance_profile``, seeded).

    :return: per source ``{"taus", "fraction", "low", "high"}`` (lists).
    """
    def profile(*per_group: np.ndarray) -> np.ndarray:
        return (np.concatenate(per_group)[:, None] > taus[None, :]).mean(axis=0)

    points, cis = _bootstrap(groups, profile, reps, seed)
    return {src: {"taus": taus.tolist(), "fraction": points[src].tolist(), "low": cis[src][0].tolist(),
                  "high": cis[src][1].tolist()} for src in groups}


def profile_taus(groups: Mapping[str, Mapping[str, np.ndarray]], n: int = 101) -> np.ndarray:
    """Thresholds from min(0, lowest score) to max(1.5, highest score)."""
    values = np.concatenate([v for g in groups.values() for v in g.values()] or [np.zeros(1)])
    return np.linspace(min(0.0, float(values.min())), max(1.5, float(values.max())), n)


# --------------------------------------------------------------------------- random-policy returns
def random_baselines(tasks: Mapping[str, Task], cache: Path, episodes: int = 100,
                     seed: int = 0) -> tuple[dict[str, float], dict[str, str]]:
    """The mean true return of a uniformly random policy per task, kept in ``cache`` (JSON) for the next report.

    A cached task is reused only for the same task definition, episode count and seed.

    :return: (mean return per task, reason per task whose env could not be run).
    """
    stored = _read_cache(cache)
    means: dict[str, float] = {}
    errors: dict[str, str] = {}
    changed = False
    for name, task in tasks.items():
        entry = stored.get(name)
        if not (isinstance(entry, dict) and entry.get("task") == task.to_dict() and entry.get("episodes") == episodes
                and entry.get("seed") == seed and isinstance(entry.get("mean"), (int, float))):
            try:
                returns = random_returns(task, episodes, seed)
            except Exception as err:  # an env that cannot be made or stepped here: that task goes unnormalized
                errors[name] = f"random policy on {name}: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
                continue
            entry = {"task": task.to_dict(), "episodes": episodes, "seed": seed, "mean": float(returns.mean()),
                     "std": float(returns.std()), "returns": returns.tolist()}
            stored[name] = entry
            changed = True
        means[name] = float(entry["mean"])
    if changed:
        atomic.write_json(cache, stored)
    return means, errors


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: computed again
        return {}
    return data if isinstance(data, dict) else {}


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
