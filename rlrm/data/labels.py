"""Labelers: where a transition's label comes from.

- ``env``: the env's own reward (the oracle), recorded at collection time.
- ``rlrm:NAME(key=value, ...)``: a reward function shipped in :mod:`rlrm.rewards` (e.g.
  ``rlrm:cartpole_position(target=0.5)``), applied to the dataset's (obs, action, next_obs, terminated).
- ``python:package.module:function``: ``function(ds: TransitionDataset) -> array of shape (n,)``,
  called once on the whole batch (vectorize it).
- ``file:PATH``: human/external labels from CSV (header ``episode,step,label``) or JSONL
  (``{"episode": 0, "step": 3, "label": 0.5}`` per line), matched to transitions by (episode, step).
  The file is UTF-8 (a byte-order mark, as Excel writes, is fine). ``episode`` and ``step`` are integers
  written as such: ``0.7``, ``3.0`` and ``true`` are refused, not rounded. ``label`` is a number (JSON: not a
  string, not ``true``/``false``), finite within float32's range. The file may label only some transitions:
  the others are dropped from the labeled dataset (an error only when it labels none). A row whose label is
  blank (CSV: empty; JSONL: ``null``), as a template from ``python -m rlrm.queries --labels N`` leaves it, is
  skipped. A row that matches no transition, or a duplicate row, is an error.

Every labeler's output goes through :func:`rlrm.data.dataset.check_labels` (numbers, shape ``(n,)``, finite).
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rlrm import rewards
from rlrm.data.dataset import TransitionDataset, check_labels
from rlrm.errors import LabelError

_F32_MAX = float(np.finfo(np.float32).max)
_CSV_INT = re.compile(r"\s*[+-]?\d+\s*")


def apply(ds: TransitionDataset, spec: str) -> TransitionDataset:
    """Return ``ds`` labeled by ``spec`` (see module doc); raise :class:`LabelError` on bad labels.

    A ``file:`` labeler that labels only some transitions returns only those (``ds.subset`` of the labeled rows).
    """
    if spec == "env":
        return ds.with_labels(ds.env_reward.copy(), "env")
    if spec.startswith(rewards.PREFIX):
        fn = rewards.reward_function(spec)
        return label_with(ds, lambda d: fn(d.obs, d.action, d.next_obs, d.terminated), spec)
    if spec.startswith("python:"):
        return label_with(ds, load_callable(spec[len("python:"):]), spec)
    if spec.startswith("file:"):
        path = Path(spec[len("file:"):])
        labels = read_label_file(path, ds)
        labeled = ~np.isnan(labels)
        if not labeled.any():
            raise LabelError(f"{path}: no row labels a transition of task {ds.task.name!r}; expected "
                             "episode,step,label rows")
        if labeled.all():
            return _checked(ds, labels, spec)
        return _checked(ds.subset(np.flatnonzero(labeled)), labels[labeled], spec)
    raise LabelError(f"unknown labeler {spec!r}: expected 'env', 'rlrm:NAME(key=value, ...)', "
                     "'python:module:function' or 'file:PATH'")


def label_with(ds: TransitionDataset, fn: Callable[[TransitionDataset], np.ndarray],
               source: str | None = None) -> TransitionDataset:
    """Label ``ds`` with a Python callable directly (what ``python:module:function`` does after importing)."""
    spec = source or f"python:{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', 'fn')}"
    out = fn(ds)
    try:
        labels = np.asarray(out)
    except (TypeError, ValueError) as err:  # ragged lists, objects numpy cannot turn into an array
        raise LabelError(f"labeler {spec}: returned a {type(out).__name__} that is not an array of numbers "
                         f"({err})") from None
    return _checked(ds, labels, spec)


def _checked(ds: TransitionDataset, labels: np.ndarray, spec: str) -> TransitionDataset:
    checked = check_labels(labels, len(ds), f"labeler {spec}", ds.episode, ds.step, error=LabelError)
    return ds.with_labels(checked, spec)


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
    """Labels for the transitions of ``ds`` from a CSV/JSONL file keyed by (episode, step); a row whose label is
    blank (CSV: empty; JSONL: ``null``), as in a template a person filled in part of, is skipped.

    :return: shape ``(len(ds),)``, NaN for a transition without a row (labels themselves are finite).
    :raise LabelError: a row that matches no transition, a duplicate row, or a non-finite label.
    """
    index = {key: i for i, key in enumerate(zip(ds.episode.tolist(), ds.step.tolist()))}
    labels = np.full(len(ds), np.nan)
    for line, ep, st, value in _rows(path):
        i = index.get((ep, st))
        if i is None:
            raise LabelError(f"{path}:{line}: episode {ep} step {st} matches no transition of task {ds.task.name!r}")
        if not np.isnan(labels[i]):
            raise LabelError(f"{path}:{line}: duplicate label for episode {ep} step {st}")
        if not (math.isfinite(value) and abs(value) <= _F32_MAX):
            raise LabelError(f"{path}:{line}: field 'label': expected a finite number (within float32's range), "
                             f"got {value}")
        labels[i] = value
    return labels


def _rows(path: Path) -> Iterator[tuple[int, int, int, float]]:
    """``(line, episode, step, label)`` per row of a label file."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise LabelError(f"{path}: label file not found")
    if suffix not in (".jsonl", ".ndjson", ".json", ".csv", ".tsv"):
        raise LabelError(f"{path}: unknown label file type {path.suffix!r}; expected .csv, .tsv or .jsonl")
    text = _read_text(path)
    if suffix in (".csv", ".tsv"):
        yield from _csv_rows(path, text, "\t" if suffix == ".tsv" else ",")
        return
    for line_no, line in enumerate(text.split("\n"), 1):  # not splitlines(): it also splits at \x0c, \u2028...
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as err:
            raise LabelError(f"{path}:{line_no}: not valid JSON ({err}); expected an object like "
                             '{"episode": 0, "step": 3, "label": 0.5}') from None
        if not isinstance(rec, dict):
            raise LabelError(f"{path}:{line_no}: expected a JSON object with 'episode', 'step' and 'label', got "
                             f"{_show(rec)}")
        where = f"{path}:{line_no}"
        ep, st = _json_int(rec, "episode", where), _json_int(rec, "step", where)
        if "label" in rec and rec["label"] is None:  # a template row left blank (write_label_file(blank=True))
            continue
        yield line_no, ep, st, _json_number(rec, where)


def _read_text(path: Path) -> str:
    """The file as text: UTF-8, with or without a byte-order mark; anything else is a one-line error."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        found = "UTF-16 text" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else \
            f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"
        raise LabelError(f"{path}:{line}: {found}; expected a UTF-8 file (in Excel: save as 'CSV UTF-8')") from None


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_int(rec: dict[str, Any], name: str, where: str) -> int:
    if name not in rec:
        raise LabelError(f"{where}: field {name!r} missing; expected an integer")
    value = rec[name]
    if isinstance(value, bool) or not isinstance(value, int):  # bool is an int subclass; 3.0 is a float
        raise LabelError(f"{where}: field {name!r}: expected an integer, got {_show(value)}")
    return value


def _json_number(rec: dict[str, Any], where: str) -> float:
    if "label" not in rec:
        raise LabelError(f"{where}: field 'label' missing; expected a number")
    value = rec["label"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LabelError(f"{where}: field 'label': expected a number, got {_show(value)}")
    try:
        return float(value)
    except OverflowError:  # an integer beyond float's range: refused as non-finite by the caller
        return math.inf


def _csv_rows(path: Path, text: str, delimiter: str) -> Iterator[tuple[int, int, int, float]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        yield from _csv_records(path, reader)
    except csv.Error as err:  # e.g. a NUL byte, or an unterminated quote at the end
        raise LabelError(f"{path}:{max(reader.line_num, 1)}: not a readable CSV line ({err}); expected "
                         "episode,step,label rows") from None


def _csv_records(path: Path, reader: csv.DictReader) -> Iterator[tuple[int, int, int, float]]:
    need = {"episode", "step", "label"}
    if not reader.fieldnames or not need <= set(reader.fieldnames):
        raise LabelError(f"{path}:1: expected a header with columns episode,step,label, got {reader.fieldnames}")
    for rec in reader:
        where = f"{path}:{reader.line_num}"
        ep, st, label = (rec[k] for k in ("episode", "step", "label"))
        for name, value in (("episode", ep), ("step", st)):
            if value is None or not _CSV_INT.fullmatch(value):
                raise LabelError(f"{where}: field {name!r}: expected an integer, got {value!r}")
        if label is not None and not label.strip():  # a template row left blank (write_label_file(blank=True))
            continue
        try:
            value = float(label)
        except (TypeError, ValueError):
            raise LabelError(f"{where}: field 'label': expected a number, got {label!r}") from None
        yield reader.line_num, int(ep), int(st), value


def write_label_file(path: Path, ds: TransitionDataset, labels: np.ndarray | None = None,
                     blank: bool = False) -> Path:
    """Write ``(episode, step, label)`` rows as CSV or JSONL (by suffix) — e.g. a template for human labels.

    :param blank: leave every label blank (CSV: empty; JSONL: ``null``), for a person to fill in; rows left
        blank are skipped when the file is read.
    :return: ``path``.
    """
    from rlrm import atomic

    values: list[float | None] = [None] * len(ds) if blank else \
        [float(v) for v in (ds.label if labels is None else labels)]
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps({"episode": int(e), "step": int(s), "label": v}) + "\n"
                       for e, s, v in zip(ds.episode, ds.step, values))
    else:
        text = "episode,step,label\n" + "".join(f"{int(e)},{int(s)},{'' if v is None else repr(v)}\n"
                                                for e, s, v in zip(ds.episode, ds.step, values))
    atomic.write_bytes(path, text.encode())
    return path
