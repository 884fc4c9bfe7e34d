"""The report of an output folder (``python -m rlrm.report``): its finished runs, their normalized scores and
aggregates (:mod:`rlrm.rl.quality`), learning curves of the true return per reward source, and each learned-reward
run's reward-hacking verdict (:mod:`rlrm.rl.hacking`).

It reads an output folder and writes only into the report folder::

    scores.csv              one row per run: true return, random and baseline returns, normalized score, note
    report.json             everything below, and the tables' rows
    random_returns.json     the random policy's returns per task (a cache: reused for the same episodes and seed)
    aggregate.png           IQM and mean with 95% intervals, per reward source
    performance_profile.png fraction of runs above each normalized score, per reward source
    learning_curves.png     true return during training, per task · algo · budget and reward source
    hacking/<algo>_<run>.png  proxy-vs-true curves of each learned-reward run
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import rlrm
from rlrm import atomic
from rlrm.errors import ConfigError, RlrmError
from rlrm.rl import hacking, plots, quality
from rlrm.rl.folder import RunFolder
from rlrm.tasks import Task, load_catalog
from rlrm.wrappers import RewardShaping

#: the fields a result row needs
ROW_FIELDS = ("task", "algo", "seed", "reward", "timesteps", "true_mean")
SCORE_COLUMNS = ["task", "algo", "timesteps", "source", "seed", "true_return", "random_return", "baseline_return",
                 "baseline", "normalized_score", "note", "run_dir"]


@dataclass(kw_only=True)
class ReportOptions:
    """How a report is computed.

    :param random_episodes: episodes of the random policy per task (its mean is a score's 0).
    :param seed: seeds the random policy's episodes and the bootstrap.
    :param reps: bootstrap resamples for each interval and profile.
    :param pair_seeds: normalize by the true-reward run of the same seed where there is one (default: the mean
        over the true-reward seeds).
    """

    random_episodes: int = 100
    seed: int = 0
    reps: int = 2000
    pair_seeds: bool = False

    def __post_init__(self) -> None:
        for name in ("random_episodes", "reps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}: expected a positive integer, got {value!r}")


@dataclass
class FoundRun:
    """A finished run of an output folder: its result row, its folder (``None``: not found) and reward source."""

    row: dict[str, Any]
    folder: RunFolder | None
    config: dict[str, Any] | None
    source: str = ""


# --------------------------------------------------------------------------- finding runs
def find_runs(runs_dir: Path, rows: Sequence[dict[str, Any]], seen: set[Path] | None = None) -> list[FoundRun]:
    """The finished runs of an output folder: the ``results.json`` rows given, then each finished run folder
    (``<algo>/<task>_<N>/result.json``) they do not list.

    A row's ``run_dir`` is looked up where it was written, else under ``runs_dir`` by its algo and folder name (an
    output folder copied from another machine).

    :param seen: run folders already found (resolved paths; updated): skipped, so several output folders that share
        runs count each run once.
    :raise ConfigError: a row without the fields of a result.
    """
    found: list[FoundRun] = []
    seen = set() if seen is None else seen
    for i, row in enumerate(rows):
        _check_row(row, f"{runs_dir / 'results.json'}: row {i + 1}")
        folder = _locate(runs_dir, row)
        if folder is not None:
            if folder.path.resolve() in seen:
                continue
            seen.add(folder.path.resolve())
        found.append(FoundRun(row, folder, _config(folder)))
    keys = {r.get("key") for r in rows if r.get("key")}
    for result in sorted(runs_dir.glob(f"*/*/{RunFolder.RESULT}")):
        folder = RunFolder(result.parent)
        if folder.path.resolve() in seen or not folder.config_path.is_file():
            continue
        try:
            row = folder.result()
        except ConfigError:
            continue  # a damaged result.json is not a finished run
        if not isinstance(row, dict) or (row.get("key") and row["key"] in keys):
            continue
        _check_row(row, str(result))
        seen.add(folder.path.resolve())
        found.append(FoundRun(row, folder, _config(folder)))
    _label_sources(found)
    return found


def _check_row(row: Any, where: str) -> None:
    missing = [f for f in ROW_FIELDS if not isinstance(row, dict) or f not in row]
    if missing:
        raise ConfigError(f"{where}: not a run result (missing {', '.join(map(repr, missing))}); expected the rows "
                          "python -m rlrm.train_agent writes")


def _locate(runs_dir: Path, row: dict[str, Any]) -> RunFolder | None:
    written = Path(str(row.get("run_dir") or ""))
    for path in (written, runs_dir / str(row["algo"]) / written.name):
        if written.name and (path / RunFolder.CONFIG).is_file():
            return RunFolder(path)
    return None


def _config(folder: RunFolder | None) -> dict[str, Any] | None:
    if folder is None:
        return None
    try:
        return folder.config()
    except ConfigError:
        return None


def _label_sources(runs: Sequence[FoundRun]) -> None:
    """``true`` for true-reward runs; ``learned`` for learned-reward runs when they share one reward (model file
    content, online feedback, shaping), else a label per reward that tells them apart."""
    def signature(run: FoundRun) -> str:
        cfg = run.config or {}
        return json.dumps([cfg.get("reward_model_sha256"), cfg.get("feedback"), cfg.get("shaping")], sort_keys=True)

    learned: dict[str, list[FoundRun]] = {}
    for run in runs:
        if run.row["reward"] == quality.TRUE:
            run.source = quality.TRUE
        else:
            learned.setdefault(signature(run), []).append(run)
    labels = {sig: _describe(group[0].config or {}) for sig, group in learned.items()}
    if len(set(labels.values())) < len(labels):  # alike in words: name the feedback settings that differ
        differ = _differing_feedback_keys([json.loads(sig)[1] for sig in learned])
        labels = {sig: _with_settings(label, json.loads(sig)[1], differ) for sig, label in labels.items()}
    if len(set(labels.values())) < len(labels):  # still alike: the model file's digest, else the settings' own
        labels = {sig: f"{label} #{str(json.loads(sig)[0] or hashlib.sha256(sig.encode()).hexdigest())[:8]}"
                  for sig, label in labels.items()}
    for sig, group in learned.items():
        for run in group:
            run.source = "learned" if len(learned) == 1 else labels[sig]


def _differing_feedback_keys(specs: Sequence[Any]) -> list[str]:
    """The feedback-loop settings whose values differ among ``specs`` (dicts, or None for runs without a loop)."""
    dicts = [d for d in specs if isinstance(d, dict)]
    keys = sorted({k for d in dicts for k in d})
    return [k for k in keys if len({json.dumps(d.get(k), sort_keys=True) for d in dicts}) > 1]


def _with_settings(label: str, spec: Any, keys: Sequence[str]) -> str:
    if not isinstance(spec, dict) or not keys:
        return label
    settings = "; ".join(f"{k}={spec.get(k)}" for k in keys)
    return f"{label[:-1]}; {settings})" if label.endswith(")") else f"{label} ({settings})"


def _describe(cfg: dict[str, Any]) -> str:
    """A learned reward in words: its model file's name, its feedback loop and shaping (what is not the default)."""
    parts = [Path(str(cfg.get("reward_model") or "no model file")).stem]
    feedback = cfg.get("feedback")
    if isinstance(feedback, dict):
        parts.append(f"{feedback.get('kind')} feedback, budget {feedback.get('budget')}")
    shaping = cfg.get("shaping") if isinstance(cfg.get("shaping"), dict) else {}
    default = RewardShaping().to_dict()
    parts += [f"{k}={v}" for k, v in sorted(shaping.items()) if k in default and v != default[k]]
    return f"learned ({'; '.join(parts)})"


def _task(run: FoundRun) -> Task:
    if run.config is not None and isinstance(run.config.get("task"), dict):
        return Task.from_dict(run.config["task"], f"{run.folder.config_path if run.folder else 'config'}: "
                                                  "field 'task'")
    return load_catalog().task(str(run.row["task"]))


# --------------------------------------------------------------------------- the report
def build_report(folders: Mapping[Path, Sequence[dict[str, Any]]], out: Path,
                 options: ReportOptions | None = None) -> dict[str, Any]:
    """Compute the report of one or more output folders and write its files into ``out`` (see the module
    docstring). Several folders are reported as one grid (e.g. runs of separate commands): a run folder two of them
    share counts once.

    :param folders: each output folder with the rows of its ``results.json`` (``[]`` if none; finished run folders
        are found too).
    :return: the report (also ``out/report.json``).
    :raise ConfigError: a folder that is not one, no finished run in any of them, or a row that is not a run result.
    """
    options = options or ReportOptions()
    if not folders:
        raise ConfigError("runs_dir: expected at least one output folder of python -m rlrm.train_agent")
    runs: list[FoundRun] = []
    seen: set[Path] = set()
    for runs_dir, rows in folders.items():
        if not runs_dir.is_dir():
            raise ConfigError(f"runs_dir {runs_dir}: not a folder")
        runs += find_runs(runs_dir, rows, seen)
    if len(folders) > 1:
        unique, keys = [], set()  # a run copied into two folders (another path, the same key) counts once
        for r in runs:
            key = r.row.get("key")
            if key and key in keys:
                continue
            keys.add(key)
            unique.append(r)
        runs = unique
        _label_sources(runs)  # learned rewards told apart across the folders, not within each
    names = ", ".join(map(str, folders))
    if not runs:
        raise ConfigError(f"runs_dir {names}: no finished runs (no rows in results.json and no "
                          f"<algo>/<task>_<N>/{RunFolder.RESULT}); expected an output folder of "
                          "python -m rlrm.train_agent")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"out {out}: cannot create the folder ({err.strerror or err})") from None
    randoms, random_errors = _randoms(runs, out, options)
    scores = quality.normalized_scores([{**r.row, "source": r.source} for r in runs], randoms, options.pair_seeds)
    for s in scores:
        if s["task"] in random_errors and not s["note"].startswith("no true-reward"):
            s["note"] = f"{random_errors[s['task']]}: no normalized score"
    by_source = quality.scores_by_source(scores)
    report: dict[str, Any] = {
        "rlrm_version": rlrm.__version__, "runs_dir": names, "runs_dirs": [str(d) for d in folders],
        "runs": len(runs),
        "options": asdict(options),
        "random": {"episodes": options.random_episodes, "seed": options.seed, "mean": randoms,
                   "errors": random_errors},
        "groups": _group_rows(scores),
        "aggregate": quality.interval_estimates(by_source, options.reps, options.seed) if by_source else {},
        "bootstrap": {"reps": options.reps, "seed": options.seed, "confidence": 0.95, "method": "percentile",
                      "strata": "task · algo · budget (runs resampled within each)"},
        "scores": scores,
        "hacking": _hacking_rows(runs, out / "hacking"),
        "notes": _notes(scores),
    }
    if by_source:
        report["profiles"] = quality.performance_profiles(by_source, quality.profile_taus(by_source), options.reps,
                                                          options.seed)
    curves = _curves(runs)
    report["curves"] = curves
    report["files"] = _write(report, out, randoms)
    atomic.write_json(out / "report.json", report)
    return report


def _randoms(runs: Sequence[FoundRun], out: Path, options: ReportOptions) -> tuple[dict[str, float], dict[str, str]]:
    tasks: dict[str, Task] = {}
    errors: dict[str, str] = {}
    for run in runs:
        name = str(run.row["task"])
        if name in tasks or name in errors:
            continue
        try:
            tasks[name] = _task(run)
        except RlrmError as err:
            errors[name] = str(err)
    means, failed = quality.random_baselines(tasks, out / "random_returns.json", options.random_episodes,
                                             options.seed)
    return means, errors | failed


def _group_rows(scores: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group and source: runs, mean true return, random and baseline returns, mean normalized score."""
    keys = sorted({(s["group"], s["source"]) for s in scores}, key=lambda k: (k[0], k[1] == quality.TRUE, k[1]))
    rows = []
    for group, source in keys:
        mine = [s for s in scores if s["group"] == group and s["source"] == source]
        finite = [s["normalized_score"] for s in mine if math.isfinite(s["normalized_score"])]
        rows.append({"group": group, "task": mine[0]["task"], "algo": mine[0]["algo"],
                     "timesteps": mine[0]["timesteps"], "source": source, "runs": len(mine),
                     "true_return": _mean([s["true_return"] for s in mine]),
                     "random_return": mine[0]["random_return"],
                     "baseline_return": _mean([s["baseline_return"] for s in mine]),
                     "normalized_score": _mean(finite) if finite else math.nan,
                     "note": "; ".join(sorted({s["note"] for s in mine if s["note"]}))})
    return rows


def _notes(scores: Sequence[dict[str, Any]]) -> list[str]:
    """Each group reported without normalized scores, and why."""
    notes = []
    for group in sorted({s["group"] for s in scores}):
        reasons = sorted({s["note"] for s in scores if s["group"] == group and s["note"]})
        notes += [f"{group}: {r}" for r in reasons]
    return notes


def _hacking_rows(runs: Sequence[FoundRun], figures: Path) -> list[dict[str, Any]]:
    """The reward-hacking verdict of every learned-reward run (its figure in ``figures``)."""
    rows = []
    for run in runs:
        if run.source == quality.TRUE:
            continue
        r = run.row
        base = {"group": quality.group_of(r["task"], r["algo"], int(r["timesteps"])), "task": r["task"],
                "algo": r["algo"], "seed": r["seed"], "source": run.source, "run_dir": r.get("run_dir")}
        if run.folder is None:
            rows.append({**base, "flagged": False, "reason": "run folder not found: no evaluations to analyse"})
            continue
        evals = hacking.run_rows(run.folder, r)
        analysis = hacking.analyze(evals).to_dict()
        figure = figures / f"{r['algo']}_{run.folder.path.name}.png"
        plots.proxy_vs_true(evals, analysis, figure, f"{r['task']} · {r['algo']} · seed {r['seed']} · {run.source}")
        best = run.folder.path / hacking.BEST_TRUE / RunFolder.AGENT
        rows.append({**base, **analysis, "figure": str(figure),
                     "best_true_agent": str(best) if best.exists() else None})
    return rows


def _curves(runs: Sequence[FoundRun]) -> dict[str, list[dict[str, Any]]]:
    """Per group, each run's true return at its evaluations (and its final evaluation)."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run.folder is None:
            continue
        r = run.row
        evals = [e for e in hacking.run_rows(run.folder, r) if isinstance(e.get("true_mean"), (int, float))]
        if not evals:
            continue
        evals.sort(key=lambda e: e["timesteps"])
        curves.setdefault(quality.group_of(r["task"], r["algo"], int(r["timesteps"])), []).append(
            {"source": run.source, "seed": r["seed"], "run_dir": r.get("run_dir"),
             "timesteps": [int(e["timesteps"]) for e in evals], "true_mean": [float(e["true_mean"]) for e in evals]})
    return dict(sorted(curves.items()))


def _write(report: dict[str, Any], out: Path, randoms: dict[str, float]) -> dict[str, str]:
    """scores.csv and the figures; returns the files written by name."""
    files = {"report": str(out / "report.json"), "scores": str(out / "scores.csv"),
             "random_returns": str(out / "random_returns.json")}
    text = io.StringIO()
    writer = csv.DictWriter(text, SCORE_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for s in report["scores"]:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in s.items()})
    atomic.write_bytes(out / "scores.csv", text.getvalue().encode())
    if report["aggregate"]:
        files["aggregate"] = str(plots.aggregate_intervals(report["aggregate"], out / "aggregate.png"))
        files["performance_profile"] = str(plots.performance_profiles(report["profiles"],
                                                                      out / "performance_profile.png"))
    if report["curves"]:
        group_random = {g: randoms.get(_task_of(report, g), math.nan) for g in report["curves"]}
        files["learning_curves"] = str(plots.learning_curves(report["curves"], out / "learning_curves.png",
                                                             group_random))
    return files


def _task_of(report: dict[str, Any], group: str) -> str:
    return next(s["task"] for s in report["scores"] if s["group"] == group)


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
