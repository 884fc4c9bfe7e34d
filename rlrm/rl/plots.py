"""PNG figures of runs and grids: a run's proxy-vs-true curves, learning curves of the true return per reward
source, performance profiles and aggregate intervals of normalized scores.

Drawn with matplotlib's object API on the Agg canvas (no pyplot: no global figure state, no display needed), and
written atomically. Each takes plain data, as stored in the JSON reports beside the figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlrm import atomic

#: learned reward sources in turn; the true reward is always TRUE_COLOR
COLORS = ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
TRUE_COLOR = "tab:blue"


def source_order(sources: Sequence[str]) -> list[str]:
    """Learned sources by name, then ``true`` (the reference) last."""
    return sorted(set(sources), key=lambda s: (s == "true", s))


def source_colors(sources: Sequence[str]) -> dict[str, str]:
    """One colour per reward source, the same in every figure of a report."""
    learned = [s for s in source_order(sources) if s != "true"]
    return {"true": TRUE_COLOR, **{s: COLORS[i % len(COLORS)] for i, s in enumerate(learned)}}


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic.temp_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _floats(values: Sequence[Any]) -> list[float]:
    """JSON numbers as floats (``None``, as JSON stores NaN: NaN)."""
    return [float(v) if isinstance(v, (int, float)) else math.nan for v in values]


def _col(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if isinstance(r.get(key), (int, float)) else math.nan for r in rows])


def proxy_vs_true(rows: Sequence[dict[str, Any]], analysis: Mapping[str, Any], path: Path, title: str) -> Path:
    """True (left axis, ± episode std) and learned (right axis) return against timesteps, the true peak marked.

    The two returns are on their own axes: a learned reward has its own scale (only its ranking of behaviour
    matters).

    :param analysis: :meth:`rlrm.rl.hacking.HackingAnalysis.to_dict` of the rows.
    """
    rows = sorted(rows, key=lambda r: float(r.get("timesteps") or 0))
    t, true, std, learned = (_col(rows, k) for k in ("timesteps", "true_mean", "true_std", "learned_mean"))
    fig = Figure(figsize=(7, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(t, true, "o-", color="tab:blue", label="true return (± episode std)")
    ax.fill_between(t, true - np.nan_to_num(std), true + np.nan_to_num(std), color="tab:blue", alpha=0.15)
    ax.set_xlabel("timesteps")
    ax.set_ylabel("true return", color="tab:blue")
    peak_at = analysis.get("true_peak_timesteps")
    if peak_at is not None:
        ax.plot([peak_at], [analysis["true_peak"]], "*", color="gold", markersize=18, markeredgecolor="black",
                label=f"true peak ({peak_at:,} steps)", zorder=5)
    handles, labels = ax.get_legend_handles_labels()
    if np.isfinite(learned).any():
        ax2 = ax.twinx()
        ax2.plot(t, learned, "s--", color="tab:orange", label="learned return")
        ax2.set_ylabel("learned return", color="tab:orange")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, fontsize="small")
    flagged, rho = bool(analysis.get("flagged")), analysis.get("spearman")
    verdict = "FLAGGED: reward hacking" if flagged else "not flagged"
    rho_text = f"{rho:+.2f}" if isinstance(rho, float) and math.isfinite(rho) else "-"
    ax.set_title(f"{title}\n{verdict} · Spearman(learned, true) = {rho_text}", fontsize="medium",
                 color="tab:red" if flagged else "black")
    return _save(fig, path)


def learning_curves(groups: Mapping[str, Sequence[Mapping[str, Any]]], path: Path,
                    randoms: Mapping[str, float]) -> Path:
    """One panel per group (task · algo · budget): each run's true return against timesteps (thin), the mean over
    the seeds of each reward source at the timesteps they share (thick), and the random policy's return (dotted).

    :param groups: curves by panel title; a curve has ``source`` (reward source), ``timesteps`` and ``true_mean``
        (lists of equal length).
    :param randoms: the random policy's mean return by panel title (drawn where present).
    """
    n = max(len(groups), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.2 * cols, 3.6 * rows), layout="constrained")
    colors = source_colors([c["source"] for curves in groups.values() for c in curves])
    for i, (name, curves) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for source in source_order([c["source"] for c in curves]):
            color = colors[source]
            mine = [c for c in curves if c["source"] == source]
            for c in mine:
                ax.plot(c["timesteps"], _floats(c["true_mean"]), color=color, alpha=0.3, linewidth=0.8)
            shared = sorted(set.intersection(*(set(c["timesteps"]) for c in mine)))
            if shared:
                mean = [np.mean([_floats(c["true_mean"])[c["timesteps"].index(s)] for c in mine]) for s in shared]
                ax.plot(shared, mean, color=color, linewidth=2, label=f"{source} ({len(mine)} runs)")
        if name in randoms and math.isfinite(randoms[name]):
            ax.axhline(randoms[name], color="gray", linestyle=":", label="random policy")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("timesteps")
        ax.set_ylabel("true return")
        ax.legend(fontsize="small")
    fig.suptitle("Learning curves: true return during training, by reward source")
    return _save(fig, path)


def performance_profiles(profiles: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> Path:
    """Fraction of runs whose normalized score exceeds τ, with its 95% stratified-bootstrap band, per source.

    :param profiles: by reward source: ``taus``, ``fraction``, ``low``, ``high`` (lists of equal length).
    """
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    colors = source_colors(list(profiles))
    for source in source_order(list(profiles)):
        p = profiles[source]
        ax.plot(p["taus"], p["fraction"], color=colors[source], label=source)
        ax.fill_between(p["taus"], p["low"], p["high"], color=colors[source], alpha=0.2)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=0.8, label="true-reward agents (= 1)")
    ax.axvline(0.0, color="gray", linestyle=":", label="random policy (= 0)")
    ax.set_xlabel("normalized score τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="small")
    ax.set_title("Performance profile (95% stratified bootstrap)")
    return _save(fig, path)


def aggregate_intervals(intervals: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path) -> Path:
    """IQM and mean of normalized scores with their 95% intervals, one row per reward source.

    :param intervals: by reward source, then by metric (``iqm``, ``mean``): ``point``, ``low``, ``high``.
    """
    metrics = ["iqm", "mean"]
    sources = source_order(list(intervals))
    colors = source_colors(sources)
    fig = Figure(figsize=(8, 1.4 + 0.55 * max(len(sources), 1)), layout="constrained")
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), k + 1)
        for j, source in enumerate(sources):
            iv = intervals[source][metric]
            ax.barh(j, iv["high"] - iv["low"], left=iv["low"], height=0.6, color=colors[source], alpha=0.5)
            ax.plot([iv["point"], iv["point"]], [j - 0.3, j + 0.3], color="black", linewidth=2)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=0.8)
        ax.set_yticks(range(len(sources)), sources if k == 0 else [""] * len(sources))
        ax.set_title("IQM" if metric == "iqm" else metric)
        ax.set_xlabel("normalized score")
    fig.suptitle("Normalized score: point estimate and 95% stratified bootstrap interval")
    return _save(fig, path)
