"""Labelers: where a transition's label comes from.

- ``env``: the env's own reward (the oracle), recorded at collection time.
- ``python:package.module:function``: ``function(ds: TransitionDataset) -> array of shape (n,)``,
  called once on the whole batch (vectorize it).
- ``file:PATH``: human/external labels from CSV (header ``episode,step,label``) or JSONL
  (``{"episode": 0, "step": 3, "label": 0.5}`` per line), matched to transitions by (episode, step).
"""

from __future__ import annotations

import csv
import importlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rlrm.data.dataset import TransitionDataset
from rlrm.errors import LabelError


def apply(ds: TransitionDataset, spec: str) -> TransitionDataset:
    """Return ``ds`` labeled by ``spec`` (see module doc); raise :class:`LabelError` on bad labels."""
    if spec == "env":
        return ds.with_labels(ds.env_reward.copy(), "env")
    if spec.startswith("python:"):
        return label_with(ds, load_callable(spec[len("python:"):]), spec)
    if spec.startswith("file:"):
        return _checked(ds, read_label_file(Path(spec[len("file:"):]), ds), spec)
    raise LabelError(f"unknown labeler {spec!r}: expected 'env', 'python:module:function' or 'file:PATH'")


def label_with(ds: TransitionDataset, fn: Callable[[TransitionDataset], np.ndarray],
               source: str | None = None) -> TransitionDataset:
    """Label ``ds`` with a Python callable directly (what ``python:module:function`` does after importing)."""
    spec = source or f"python:{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', 'fn')}"
    return _checked(ds, np.asarray(fn(ds), dtype=np.float64), spec)


def _checked(ds: TransitionDataset, labels: np.ndarray, spec: str) -> TransitionDataset:
    if labels.shape != (len(ds),):
        raise LabelError(f"labeler {spec}: returned shape {labels.shape}, expected ({len(ds)},)")
    bad = ~np.isfinite(labels)
    if bad.any():
        i = int(np.argmax(bad))
        raise LabelError(f"labeler {spec}: {int(bad.sum())} non-finite label(s), first at episode "
                         f"{ds.episode[i]} step {ds.step[i]}")
    return ds.with_labels(labels.astype(np.float32), spec)


def load_callable(target: str) -> Callable[[TransitionDataset], np.ndarray]:
    """Import ``package.module:function``."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise LabelError(f"labeler 'python:{target}': expected 'python:package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise LabelError(f"labeler 'python:{target}': cannot import {module_name!r}: {err}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise LabelError(f"labeler 'python:{target}': {module_name!r} has no function {attr!r}")
    return fn


def read_label_file(path: Path, ds: TransitionDataset) -> np.ndarray:
    """Labels for every transition of ``ds`` from a CSV/JSONL file keyed by (episode, step).

    A row that matches no transition, a duplicate row, or a transition without a row is an error.
    """
    rows = list(_rows(path))
    keys = ds.episode.astype(np.int64) * (1 << 32) + ds.step.astype(np.int64)
    index = {int(k): i for i, k in enumerate(keys)}
    labels = np.full(len(ds), np.nan)
    for line, ep, st, value in rows:
        i = index.get(ep * (1 << 32) + st)
        if i is None:
            raise LabelError(f"{path}:{line}: episode {ep} step {st} matches no transition of task {ds.task.name!r}")
        if not np.isnan(labels[i]):
            raise LabelError(f"{path}:{line}: duplicate label for episode {ep} step {st}")
        if not np.isfinite(value):
            raise LabelError(f"{path}:{line}: field 'label': expected a finite number, got {value}")
        labels[i] = value
    missing = np.isnan(labels)
    if missing.any():
        i = int(np.argmax(missing))
        raise LabelError(f"{path}: {int(missing.sum())} transition(s) have no label, first: episode "
                         f"{ds.episode[i]} step {ds.step[i]}")
    return labels


def _rows(path: Path):
    if not path.exists():
        raise LabelError(f"{path}: label file not found")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        with path.open() as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    yield line_no, int(rec["episode"]), int(rec["step"]), float(rec["label"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                    raise LabelError(f"{path}:{line_no}: expected a JSON object with integer 'episode', 'step' and "
                                     f"a number 'label' ({type(err).__name__}: {err})") from None
    elif path.suffix.lower() in (".csv", ".tsv"):
        with path.open(newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            need = {"episode", "step", "label"}
            if not reader.fieldnames or not need <= set(reader.fieldnames):
                raise LabelError(f"{path}:1: expected a header with columns episode,step,label, got "
                                 f"{reader.fieldnames}")
            for line_no, rec in enumerate(reader, 2):
                try:
                    yield line_no, int(rec["episode"]), int(rec["step"]), float(rec["label"])
                except (TypeError, ValueError):
                    raise LabelError(f"{path}:{line_no}: expected integer episode/step and a number label, got "
                                     f"{dict(rec)}") from None
    else:
        raise LabelError(f"{path}: unknown label file type {path.suffix!r}; expected .csv, .tsv or .jsonl")


def write_label_file(path: Path, ds: TransitionDataset, labels: np.ndarray | None = None) -> None:
    """Write ``(episode, step, label)`` rows as CSV or JSONL (by suffix) — e.g. a template for human labels."""
    from rlrm import atomic

    labels = ds.label if labels is None else labels
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps({"episode": int(e), "step": int(s), "label": float(v)}) + "\n"
                       for e, s, v in zip(ds.episode, ds.step, labels))
    else:
        text = "episode,step,label\n" + "".join(f"{int(e)},{int(s)},{float(v)!r}\n"
                                                for e, s, v in zip(ds.episode, ds.step, labels))
    atomic.write_bytes(path, text.encode())
