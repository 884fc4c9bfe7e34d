"""``PreferenceDataset``: answers to segment comparisons ("which of these two clips is better?") that point into
one :class:`~rlrm.data.dataset.TransitionDataset`, its on-disk format and its JSONL exchange format.

A segment is ``(episode, start)`` plus the pair's ``length``: the ``length`` consecutive rows of that episode
beginning ``start`` rows after the episode's first row in the transition dataset (``start`` equals the env step
when the episode starts at step 0, as :func:`rlrm.data.rollout.collect` writes them). Both sides of a pair have
the pair's one length; a segment never crosses an episode end. Labels: ``left``, ``right`` or ``equal``
(codes 0, 1, 2 in :data:`LABELS`).

On disk a preference set is a directory::

    manifest.json    format + version, rlrm version, task, the transition dataset it points into (path relative
                     to this folder, absolute path, sha256 of its manifest.json, n_transitions), n_pairs,
                     labels (the words of codes 0, 1, 2), sources (the words of the source codes), fields, info
    left_episode.npy  left_start.npy  right_episode.npy  right_start.npy  length.npy   (int64)
    label.npy (int8)  source.npy (int32)

JSONL, one pair per line (``label`` may be blank for an unanswered query; ``source`` is optional)::

    {"left": {"episode": 3, "start": 40}, "right": {"episode": 7, "start": 0}, "length": 25, "label": "left"}
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import rlrm
from rlrm import atomic
from rlrm.data.dataset import MANIFEST as DATASET_MANIFEST
from rlrm.data.dataset import TransitionDataset, read_manifest
from rlrm.data.labels import _json_int, _read_text, _show
from rlrm.errors import DatasetError, LabelError, RlrmError
from rlrm.formats import check_format, check_replaceable

FORMAT = "rlrm.preferences"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABELS = ("left", "right", "equal")
LEFT, RIGHT, EQUAL = 0, 1, 2
PAIR_FIELDS = ("left_episode", "left_start", "right_episode", "right_start", "length")
_JSONL_EXAMPLE = '{"left": {"episode": 3, "start": 40}, "right": {"episode": 7, "start": 0}, "length": 25, ' \
                 '"label": "left"}'


# --------------------------------------------------------------------------- segment pairs (queries)
@dataclass(frozen=True)
class SegmentPairs:
    """Pairs of equally long segments (the queries), as int64 arrays of shape ``(n,)``."""

    left_episode: np.ndarray
    left_start: np.ndarray
    right_episode: np.ndarray
    right_start: np.ndarray
    length: np.ndarray

    @classmethod
    def from_arrays(cls, left_episode: Any, left_start: Any, right_episode: Any, right_start: Any,
                    length: Any) -> SegmentPairs:
        """Pairs from integer sequences (a scalar ``length`` applies to every pair)."""
        n = len(np.atleast_1d(left_episode))
        return cls(*(_int_array(v, name, n) for name, v in
                     zip(PAIR_FIELDS, (left_episode, left_start, right_episode, right_start, length))))

    def __len__(self) -> int:
        return len(self.length)

    def subset(self, index: Any) -> SegmentPairs:
        """Pairs picked by a mask, slice or index array (order kept)."""
        return SegmentPairs(*(getattr(self, name)[index] for name in PAIR_FIELDS))

    def first_rows(self, ds: TransitionDataset, where: Callable[[int], str] | None = None,
                   error: type[RlrmError] = DatasetError) -> tuple[np.ndarray, np.ndarray]:
        """Check every segment against ``ds`` and return the row of each side's first step.

        A segment must lie inside one episode: its episode is in ``ds``, ``start >= 0``, ``length >= 1``,
        ``start + length <= `` that episode's number of rows in ``ds``, and its rows are consecutive env steps (a
        dataset labeled in part may miss steps; a segment must not span such a gap).

        :param where: names pair ``i`` in messages (default ``pair i``).
        :param error: the exception type to raise.
        :return: ``(left, right)`` int64 row indices into ``ds``, shape ``(n,)``.
        """
        where = where or (lambda i: f"pair {i}")
        for name in PAIR_FIELDS:
            arr = getattr(self, name)
            if arr.shape != (len(self),) or arr.dtype.kind not in "iu":
                raise error(f"{where(0)}: field {name!r}: expected integers of shape ({len(self)},), got "
                            f"{arr.dtype} {arr.shape}")
        short = self.length < 1
        if short.any():
            i = int(np.argmax(short))
            raise error(f"{where(i)}: field 'length': got {self.length[i]}; expected a segment length >= 1")
        episodes, first, count = np.unique(ds.episode, return_index=True, return_counts=True)
        table = (episodes, first, count, ds.step)
        left = _side_rows(ds.task.name, "left", self.left_episode, self.left_start, self.length, table, where, error)
        right = _side_rows(ds.task.name, "right", self.right_episode, self.right_start, self.length, table, where,
                           error)
        return left, right


def _side_rows(task: str, side: str, ep: np.ndarray, start: np.ndarray, length: np.ndarray,
               table: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], where: Callable[[int], str],
               error: type[RlrmError]) -> np.ndarray:
    """First rows of one side's segments (``table``: the dataset's episodes, their first rows, row counts, and
    the per-row steps)."""
    episodes, first, count, step = table
    if not len(ep):
        return np.zeros(0, np.int64)
    if not len(episodes):
        raise error(f"{where(0)}: {side} episode {ep[0]}: the dataset of task {task!r} has no transitions")
    k = np.clip(np.searchsorted(episodes, ep), 0, len(episodes) - 1)
    missing = episodes[k] != ep
    if missing.any():
        i = int(np.argmax(missing))
        raise error(f"{where(i)}: {side} episode {ep[i]} is not in the dataset of task {task!r} (episodes "
                    f"{episodes[0]}..{episodes[-1]}); expected one of its episodes")
    negative = start < 0
    if negative.any():
        i = int(np.argmax(negative))
        raise error(f"{where(i)}: {side} start {start[i]}; expected a start >= 0")
    n_rows = count[k]
    over = start + length > n_rows
    if over.any():
        i = int(np.argmax(over))
        raise error(f"{where(i)}: {side} segment (episode {ep[i]}, start {start[i]}, length {length[i]}) ends at "
                    f"{start[i] + length[i]} but episode {ep[i]} has {n_rows[i]} steps in the dataset; expected "
                    f"start + length <= {n_rows[i]} (a segment never crosses an episode end)")
    rows = first[k].astype(np.int64) + start
    gap = step[rows + length - 1].astype(np.int64) - step[rows] != length - 1
    if gap.any():
        i = int(np.argmax(gap))
        raise error(f"{where(i)}: {side} segment (episode {ep[i]}, start {start[i]}, length {length[i]}) spans steps "
                    f"{step[rows[i]]}..{step[rows[i] + length[i] - 1]} of the dataset, which misses some of them; "
                    "expected consecutive steps")
    return rows


def _int_array(value: Any, name: str, n: int) -> np.ndarray:
    arr = np.asarray(value) if n else np.asarray(value, np.int64)  # [] is float64 to numpy
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.dtype.kind not in "iu" or arr.shape != (n,):
        raise DatasetError(f"field {name!r}: expected {n} integers, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


# --------------------------------------------------------------------------- answered pairs
@dataclass
class PreferenceDataset:
    """Answered segment pairs of one task, pointing into one transition dataset.

    ``label``: int8 codes into :data:`LABELS` (0 left, 1 right, 2 equal). ``source``: int32 indices into
    ``sources`` (e.g. ``teacher:oracle``, ``human:answers.jsonl``). ``dataset_dir``: the transition dataset's folder
    (needed to save; set by :meth:`load`). Once bound to its transitions (:meth:`bind`, done by :meth:`load`,
    :func:`read_preference_file` and :func:`rlrm.data.teachers.make_preferences`) the segment helpers need no
    dataset argument.
    """

    pairs: SegmentPairs
    label: np.ndarray
    source: np.ndarray
    sources: list[str]
    task_name: str
    dataset_dir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _first: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)
    _n_transitions: int = field(default=-1, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.pairs)

    @classmethod
    def from_pairs(cls, ds: TransitionDataset, pairs: SegmentPairs, label: Any, source: str | Sequence[str],
                   dataset_dir: str | os.PathLike | None = None, info: dict[str, Any] | None = None,
                   ) -> PreferenceDataset:
        """Answered pairs checked against (and bound to) ``ds``.

        :param label: codes 0/1/2 or the words ``left``/``right``/``equal``, one per pair.
        :param source: one source for every pair, or one per pair.
        :param dataset_dir: where ``ds`` is (or will be) saved; needed by :meth:`save`.
        """
        n = len(pairs)
        words = np.asarray(label) if n else np.zeros(0, np.int8)
        if words.dtype.kind in "US":
            unknown = ~np.isin(words, LABELS)
            if unknown.any():
                i = int(np.argmax(unknown))
                raise LabelError(f"pair {i}: label {str(words[i])!r}; expected one of {', '.join(LABELS)}")
            codes = np.array([LABELS.index(str(w)) for w in words], np.int8) if n else np.zeros(0, np.int8)
        else:
            codes = words
            if codes.shape != (n,) or codes.dtype.kind not in "iu":
                raise LabelError(f"label: expected {n} codes 0/1/2 or words {'/'.join(LABELS)}, got {codes.dtype} "
                                 f"{codes.shape}")
        if isinstance(source, str):
            names, index = [source], np.zeros(n, np.int32)
        else:
            names, inverse = np.unique(np.asarray(list(source), dtype=str), return_inverse=True)
            names, index = [str(s) for s in names], inverse.astype(np.int32)
        prefs = cls(pairs, codes, index, names, ds.task.name, None if dataset_dir is None else Path(dataset_dir),
                    dict(info or {}))
        prefs.bind(ds)
        prefs.label = codes.astype(np.int8)
        return prefs

    # ------------------------------------------------------------------ checks and segment helpers
    def check(self, where: str = "<memory>", error: type[RlrmError] = DatasetError) -> None:
        """Check labels, sources and field shapes (not the segments: see :meth:`bind`)."""
        n = len(self)
        for name, arr in (("label", self.label), ("source", self.source)):
            arr = np.asarray(arr)
            if arr.shape != (n,) or arr.dtype.kind not in "iu":
                raise error(f"{where}: field {name!r}: expected {n} integers, got {arr.dtype} {arr.shape}")
        bad = (self.label < 0) | (self.label >= len(LABELS))
        if bad.any():
            i = int(np.argmax(bad))
            raise error(f"{where}: field 'label': pair {i} has code {self.label[i]}; expected 0 ({LABELS[0]}), "
                        f"1 ({LABELS[1]}) or 2 ({LABELS[2]})")
        bad = (self.source < 0) | (self.source >= len(self.sources))
        if bad.any():
            i = int(np.argmax(bad))
            raise error(f"{where}: field 'source': pair {i} has index {self.source[i]}; expected 0.."
                        f"{len(self.sources) - 1} (an index into 'sources')")

    def bind(self, ds: TransitionDataset, where: str = "<memory>", error: type[RlrmError] = DatasetError) -> None:
        """Check every pair against ``ds`` (labels, sources, segments inside one episode) and remember the
        segments' rows, so :meth:`segment_rows` and :meth:`segment_returns` need no dataset."""
        if ds.task.name != self.task_name:
            raise error(f"{where}: preferences of task {self.task_name!r} cannot point into a dataset of task "
                        f"{ds.task.name!r}")
        self.check(where, error)
        self._first = self.pairs.first_rows(ds, lambda i: f"{where}: pair {i}", error)
        self._n_transitions = len(ds)

    def _rows0(self, ds: TransitionDataset | None) -> tuple[np.ndarray, np.ndarray]:
        if ds is not None:
            self.bind(ds)
        if self._first is None:
            raise DatasetError(f"preferences of task {self.task_name!r} are not bound to their transitions; pass the "
                               "TransitionDataset (bind(ds), or load(path, dataset=ds))")
        return self._first

    def segment_rows(self, ds: TransitionDataset | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row indices into the transition dataset of every step of both sides, padded to the longest pair.

        :param ds: the transition dataset (checked and bound); ``None``: the one already bound.
        :return: ``(left, right)``, int64 arrays of shape ``(n_pairs, max_length)``; row ``i`` holds pair ``i``'s
            ``length[i]`` rows, then ``-1`` as padding (mask: ``left >= 0``, identical for both sides). Gather with
            ``rewards[rows.clip(0)] * mask`` and sum over axis 1 for Bradley-Terry logits.
        """
        left0, right0 = self._rows0(ds)
        width = int(self.pairs.length.max()) if len(self) else 0
        offset = np.arange(width, dtype=np.int64)
        inside = offset[None, :] < self.pairs.length[:, None]
        return (np.where(inside, left0[:, None] + offset, -1), np.where(inside, right0[:, None] + offset, -1))

    def segment_returns(self, rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sums of per-transition ``rewards`` (shape ``(n_transitions,)`` of the bound dataset) over each side.

        :return: ``(left, right)`` float64 arrays of shape ``(n_pairs,)``.
        """
        rewards = np.asarray(rewards, dtype=np.float64)
        left0, right0 = self._rows0(None)
        if rewards.shape != (self._n_transitions,):
            raise DatasetError(f"segment_returns: rewards of shape {rewards.shape}; expected ({self._n_transitions},), "
                               "one per transition of the bound dataset")
        cum = np.concatenate([[0.0], np.cumsum(rewards)])
        length = self.pairs.length
        return cum[left0 + length] - cum[left0], cum[right0 + length] - cum[right0]

    def label_targets(self) -> np.ndarray:
        """The probability that left is preferred, per pair (left 1, right 0, equal 0.5): the Bradley-Terry target."""
        return np.array([1.0, 0.0, 0.5], np.float32)[self.label]

    def label_words(self) -> list[str]:
        """The labels as words."""
        return [LABELS[c] for c in self.label.tolist()]

    def source_words(self) -> list[str]:
        """Each pair's source as a string."""
        return [self.sources[c] for c in self.source.tolist()]

    # ------------------------------------------------------------------ disk format
    def save(self, path: str | os.PathLike, dataset_dir: str | os.PathLike | None = None) -> Path:
        """Write the preference folder atomically; ``path`` may be free, empty or a preference folder (replaced).

        :param dataset_dir: the saved transition dataset the pairs point into (default :attr:`dataset_dir`); its
            path (relative to ``path`` when possible), task and manifest checksum are recorded.
        """
        path = Path(path)
        target = Path(dataset_dir) if dataset_dir is not None else self.dataset_dir
        if target is None:
            raise DatasetError(f"{path}: cannot save preferences of task {self.task_name!r} without the folder of "
                               "their transition dataset; pass dataset_dir (save it first)")
        self.check(str(path))
        ref = _dataset_ref(path, target, self.task_name)
        _check_pref_target(path)
        fields: dict[str, Any] = {}
        try:
            with atomic.directory(path) as tmp:
                arrays = {name: getattr(self.pairs, name).astype(np.int64) for name in PAIR_FIELDS}
                arrays["label"] = np.asarray(self.label, np.int8)
                arrays["source"] = np.asarray(self.source, np.int32)
                for name, arr in arrays.items():
                    np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
                    fields[name] = {"file": f"{name}.npy", "dtype": str(arr.dtype), "shape": list(arr.shape)}
                atomic.write_json(tmp / MANIFEST, {
                    "format": FORMAT, "format_version": FORMAT_VERSION, "rlrm_version": rlrm.__version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "task": self.task_name, "dataset": ref,
                    "n_pairs": len(self), "labels": list(LABELS), "sources": list(self.sources), "fields": fields,
                    "info": self.info})
        except OSError as err:
            raise DatasetError(f"{path}: cannot write the preferences: {err.strerror or err}; nothing was written "
                               "and what was there is unchanged") from None
        self.dataset_dir = target
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, dataset: TransitionDataset | None = None) -> PreferenceDataset:
        """Read a preference folder, find its transition dataset, check its checksum and every pair.

        :param dataset: the transition dataset already in memory (its folder is still checked against the
            recorded checksum); ``None``: it is loaded from the recorded path.
        """
        path = Path(path)
        file = path / MANIFEST
        manifest = _read_pref_manifest(path)
        try:
            ref, fields, sources, n = manifest["dataset"], manifest["fields"], manifest["sources"], manifest["n_pairs"]
            task = manifest["task"]
        except KeyError as err:
            raise DatasetError(f"{file}: missing field {err}") from None
        if manifest.get("labels", list(LABELS)) != list(LABELS):
            raise DatasetError(f"{file}: field 'labels' is {manifest.get('labels')!r}; expected {list(LABELS)}")
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise DatasetError(f"{file}: field 'sources': expected a list of strings, got {sources!r}")
        dataset_dir = _resolve_dataset(path, ref)
        if dataset is None:
            dataset = TransitionDataset.load(dataset_dir)
        elif len(dataset) != ref.get("n_transitions", len(dataset)):
            raise DatasetError(f"{file}: field 'dataset.n_transitions' is {ref.get('n_transitions')}; the dataset "
                               f"passed in has {len(dataset)} transitions (expected the one at {dataset_dir})")
        arrays = {name: _load_field(path, fields, name, n) for name in (*PAIR_FIELDS, "label", "source")}
        prefs = cls(SegmentPairs(*(arrays[name] for name in PAIR_FIELDS)), arrays["label"], arrays["source"],
                    list(sources), str(task), dataset_dir, dict(manifest.get("info") or {}))
        prefs.bind(dataset, str(path))
        prefs.label, prefs.source = prefs.label.astype(np.int8), prefs.source.astype(np.int32)
        return prefs


def _check_pref_target(path: Path) -> None:
    check_replaceable(path, fmt=FORMAT, what="an rlrm preference set", error=DatasetError, manifest=MANIFEST)


def _dataset_ref(path: Path, dataset_dir: Path, task_name: str) -> dict[str, Any]:
    """The manifest's ``dataset`` entry: where the transitions are, their task, count and manifest checksum."""
    manifest = read_manifest(dataset_dir)
    found = (manifest.get("task") or {}).get("name")
    if found != task_name:
        raise DatasetError(f"{dataset_dir}: a dataset of task {found!r}; the preferences are of task {task_name!r}")
    try:
        rel = os.path.relpath(dataset_dir.resolve(), path.resolve().parent / path.name)
    except ValueError:  # another drive on Windows
        rel = None
    return {"path": rel, "absolute_path": str(dataset_dir.resolve()), "task": task_name,
            "n_transitions": manifest.get("n_transitions"),
            "manifest_sha256": atomic.file_sha256(dataset_dir / DATASET_MANIFEST)}


def _resolve_dataset(path: Path, ref: Any) -> Path:
    """The referenced dataset folder (relative path first, then absolute) with a matching manifest checksum."""
    file = path / MANIFEST
    if not isinstance(ref, dict) or not isinstance(ref.get("manifest_sha256"), str):
        raise DatasetError(f"{file}: field 'dataset': expected an object with 'path', 'absolute_path' and "
                           f"'manifest_sha256', got {ref!r}")
    tried = [Path(os.path.normpath(path / ref["path"])) if isinstance(ref.get("path"), str) else None,
             Path(ref["absolute_path"]) if isinstance(ref.get("absolute_path"), str) else None]
    candidates = [p for p in tried if p is not None]
    for candidate in candidates:
        if (candidate / DATASET_MANIFEST).is_file():
            digest = atomic.file_sha256(candidate / DATASET_MANIFEST)
            if digest != ref["manifest_sha256"]:
                raise DatasetError(f"{file}: field 'dataset.manifest_sha256': the dataset at {candidate} has "
                                   f"manifest sha256 {digest[:12]}..., expected {ref['manifest_sha256'][:12]}... "
                                   "(the dataset changed since the preferences were saved)")
            return candidate
    raise DatasetError(f"{file}: field 'dataset': the transition dataset is missing (tried "
                       f"{', '.join(map(str, candidates)) or 'no path'}); expected the dataset folder the "
                       "preferences point into")


def _read_pref_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        what = "not found" if not path.exists() else "is a file"
        raise DatasetError(f"{path}: preference folder {what}; expected a folder written by PreferenceDataset.save")
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: has no {MANIFEST}; expected a folder written by PreferenceDataset.save") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{file}: not valid JSON: {err}") from None
    check_format(manifest, fmt=FORMAT, version=FORMAT_VERSION, where=str(file), error=DatasetError)
    return manifest


def _load_field(path: Path, fields: Any, name: str, n: Any) -> np.ndarray:
    if not isinstance(fields, dict) or not isinstance(fields.get(name), dict) or "file" not in fields[name]:
        raise DatasetError(f"{path / MANIFEST}: field {name!r} missing from 'fields'")
    file = path / str(fields[name]["file"])
    try:
        arr = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{file}: file missing (field {name!r})") from None
    except (ValueError, OSError, EOFError) as err:
        raise DatasetError(f"{file}: not a readable .npy array (field {name!r}): {err}") from None
    if arr.shape != (n,) or arr.dtype.kind not in "iu":
        raise DatasetError(f"{file}: field {name!r}: expected {n} integers (manifest n_pairs), got {arr.dtype} "
                           f"{arr.shape}")
    return arr if name in ("label", "source") else arr.astype(np.int64)  # label/source: cast once checked



# --------------------------------------------------------------------------- JSONL exchange
def write_preference_file(path: str | os.PathLike, pairs: SegmentPairs | PreferenceDataset,
                          with_labels: bool = True) -> Path:
    """Write pairs as JSONL, one per line (atomically).

    :param pairs: queries (:class:`SegmentPairs`, written with blank labels) or answered pairs.
    :param with_labels: ``False`` writes answered pairs as queries: blank labels and no sources, for a person to
        answer. Answered pairs otherwise keep their label word and source (``"source"``).
    """
    path = Path(path)
    prefs = pairs if isinstance(pairs, PreferenceDataset) else None
    segs = pairs.pairs if isinstance(pairs, PreferenceDataset) else pairs
    cols = [getattr(segs, name).tolist() for name in PAIR_FIELDS]
    labels = prefs.label_words() if prefs is not None and with_labels else None
    sources = prefs.source_words() if prefs is not None and with_labels else None
    lines = []
    for i, (le, ls, re_, rs, length) in enumerate(zip(*cols)):
        rec: dict[str, Any] = {"left": {"episode": le, "start": ls}, "right": {"episode": re_, "start": rs},
                               "length": length, "label": labels[i] if labels is not None else ""}
        if sources is not None:
            rec["source"] = sources[i]
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    atomic.write_bytes(path, "".join(lines).encode("utf-8"))
    return path


def read_preference_file(path: str | os.PathLike, ds: TransitionDataset,
                         dataset_dir: str | os.PathLike | None = None,
                         source: str | None = None) -> PreferenceDataset:
    """Answered pairs from a JSONL file (see the module doc), checked against ``ds``.

    Lines whose ``label`` is blank, ``null`` or missing are unanswered queries and are skipped (counted in
    ``info["blank_labels_skipped"]``). Anything else that is wrong is a one-line :class:`LabelError` naming the
    file and line: malformed JSON, a label word other than left/right/equal, a non-integer episode, start or
    length, a segment outside its episode, or a file with no answered pair.

    :param dataset_dir: the saved folder of ``ds`` (recorded so the result can be saved).
    :param source: the source of pairs whose line has no ``"source"`` (default ``human:<file name>``).
    """
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"{path}: preference file {'not found' if not path.exists() else 'is not a file'}")
    default = source or f"human:{path.name}"
    rows: list[tuple[int, int, int, int, int]] = []
    lines: list[int] = []
    labels: list[int] = []
    sources: list[str] = []
    blank = 0
    for line_no, line in enumerate(_read_text(path).split("\n"), 1):  # not splitlines(): \x0c, \u2028 are text
        if not line.strip():
            continue
        rec = _json_record(path, line_no, line)
        where = f"{path}:{line_no}"
        label = rec.get("label")
        if label is None or (isinstance(label, str) and not label.strip()):
            blank += 1
            continue
        if not isinstance(label, str) or label.strip().lower() not in LABELS:
            raise LabelError(f"{where}: field 'label': got {_show(label)}; expected one of "
                             f"{', '.join(map(repr, LABELS))} (or blank for an unanswered query)")
        left, right = _json_side(rec, "left", where), _json_side(rec, "right", where)
        rows.append((*left, *right, _json_int(rec, "length", where)))
        labels.append(LABELS.index(label.strip().lower()))
        src = rec.get("source", default)
        if not isinstance(src, str) or not src:
            raise LabelError(f"{where}: field 'source': got {_show(src)}; expected a non-empty string or no field")
        sources.append(src)
        lines.append(line_no)
    if not rows:
        raise LabelError(f"{path}: no answered pairs ({blank} line(s) with a blank label); expected lines like "
                         f"{_JSONL_EXAMPLE}")
    table = np.array(rows, dtype=np.int64)
    pairs = SegmentPairs(*(table[:, k].copy() for k in range(5)))
    names = sorted(set(sources))
    prefs = PreferenceDataset(pairs, np.array(labels, np.int8), np.array([names.index(s) for s in sources], np.int32),
                              names, ds.task.name, None if dataset_dir is None else Path(dataset_dir),
                              {"imported_from": str(path), "blank_labels_skipped": blank})
    prefs.check(str(path), LabelError)
    prefs._first = pairs.first_rows(ds, lambda i: f"{path}:{lines[i]}", LabelError)
    prefs._n_transitions = len(ds)
    return prefs


def _json_record(path: Path, line_no: int, line: str) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except ValueError as err:
        raise LabelError(f"{path}:{line_no}: not valid JSON ({err}); expected an object like {_JSONL_EXAMPLE}") \
            from None
    if not isinstance(rec, dict):
        raise LabelError(f"{path}:{line_no}: expected a JSON object like {_JSONL_EXAMPLE}, got {_show(rec)}")
    return rec


def _json_side(rec: dict[str, Any], side: str, where: str) -> tuple[int, int]:
    seg = rec.get(side)
    if not isinstance(seg, dict):
        raise LabelError(f"{where}: field {side!r}: expected an object {{\"episode\": int, \"start\": int}}, got "
                         f"{_show(seg) if side in rec else 'nothing'}")
    return _json_int(seg, "episode", f"{where}: {side}"), _json_int(seg, "start", f"{where}: {side}")
