"""The online feedback loop's files in a run folder's ``feedback/`` (:mod:`rlrm.rl.online`), and reading them back
when a run is resumed.

The query log is the record of what was asked: :func:`settled` checks it against ``feedback.json`` and tells which
transitions (and pairs) the answers on disk must hold. A round's questions (:class:`Query`) are saved in
``pending/`` before the first of them is logged and removed once the round is in ``feedback.json``, so a round that
a kill, a failing teacher or a ``file:`` teacher without the answers cut off can be asked again, under the same ids.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlrm import atomic
from rlrm import spaces as sp
from rlrm.data.dataset import TransitionDataset
from rlrm.errors import ConfigError, DatasetError

#: at most this many numbers per row are written as feature columns of ``unanswered.csv``
CSV_FEATURES = 64


class FeedbackFiles:
    """The paths of the loop's files inside a run folder (see :mod:`rlrm.rl.online`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.labels = root / "labels"
        self.transitions = root / "transitions"
        self.preferences = root / "preferences"
        self.queries = root / "queries.jsonl"
        self.state = root / "feedback.json"
        self.models = root / "models"
        self.pending = root / "pending"

    def model(self, version: int) -> Path:
        return self.models / f"reward_model_v{version}.safetensors"

    @property
    def unanswered(self) -> Path:
        """Where a ``file:`` teacher's missing answers are listed."""
        return self.pending / "unanswered.csv"


# --------------------------------------------------------------------------- the query log
def append_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append records to the query log, on disk before this returns."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def read_log(path: Path) -> list[dict[str, Any]]:
    """The query log's records (``[]`` without a log). A torn last line (a process killed mid-write) is left out; a
    damaged line before it is an error."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not (isinstance(rec, dict) and rec.get("kind") in ("query", "answer") and isinstance(rec.get("id"), int)):
            if i == len(lines) and not text.endswith("\n"):
                break  # the last line, cut off
            raise ConfigError(f"{path}:{i}: expected a query log record ({{\"kind\": \"query\" or \"answer\", "
                              f"\"id\": N, ...}}), got {line[:60]!r}")
        records.append(rec)
    return records


def rewrite_log(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace the query log (atomically) by ``records``."""
    atomic.write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def settled(path: Path, records: list[dict[str, Any]], asked: int) -> list[dict[str, Any]]:
    """The records of the queries ``feedback.json`` counts (ids below ``asked``), checked: each of those ids asked
    once and answered at most once. Records of later ids belong to a round that did not finish."""
    kept = [r for r in records if r["id"] < asked]
    queries = sorted(r["id"] for r in kept if r["kind"] == "query")
    answers = [r["id"] for r in kept if r["kind"] == "answer"]
    if queries != list(range(asked)) or len(set(answers)) != len(answers) or not set(answers) <= set(queries):
        raise ConfigError(f"{path}: {len(queries)} queries ({len(set(queries))} ids) and {len(answers)} answers "
                          f"below id {asked}; expected ids 0 to {asked - 1} asked once each, as feedback.json "
                          "counts, each answered at most once")
    return kept


def answered_keys(records: list[dict[str, Any]]) -> set[tuple[int, int]]:
    """Scalar labels: the (episode, step) of every answered query."""
    answered = {r["id"] for r in records if r["kind"] == "answer"}
    return {(r["episode"], r["step"]) for r in records if r["kind"] == "query" and r["id"] in answered}


def segment_keys(records: list[dict[str, Any]]) -> set[tuple[int, int]]:
    """Preferences: the (episode, step) of every step of both segments of every query (a skipped one's too)."""
    return {(side["episode"], side["step"] + j) for r in records if r["kind"] == "query"
            for side in (r["left"], r["right"]) for j in range(r["length"])}


def answered_pairs(records: list[dict[str, Any]], labels: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Preferences: the pairs answered with ``left``/``right``/``equal`` (a skip is no answer), in id order, as
    :class:`~rlrm.rl.online.FeedbackState` keeps them."""
    words = {r["id"]: r["label"] for r in records if r["kind"] == "answer" and r["label"] in labels}
    queries = sorted((r for r in records if r["kind"] == "query" and r["id"] in words), key=lambda r: r["id"])
    return {"left_episode": np.array([r["left"]["episode"] for r in queries], np.int64),
            "left_step": np.array([r["left"]["step"] for r in queries], np.int64),
            "right_episode": np.array([r["right"]["episode"] for r in queries], np.int64),
            "right_step": np.array([r["right"]["step"] for r in queries], np.int64),
            "label": np.array([labels.index(words[r["id"]]) for r in queries], np.int8)}


def last_episode(records: list[dict[str, Any]]) -> int:
    """The largest episode id the log names (-1 for none)."""
    found = [r["episode"] for r in records if "episode" in r]
    found += [r[side]["episode"] for r in records if "left" in r for side in ("left", "right")]
    return max(found, default=-1)


def keep_rows(ds: TransitionDataset, keys: set[tuple[int, int]], where: Path) -> TransitionDataset:
    """The rows of ``ds`` whose (episode, step) is in ``keys``; every key must have its row."""
    have = list(zip(ds.episode.tolist(), ds.step.tolist()))
    mask = np.array([k in keys for k in have], bool)
    if int(mask.sum()) != len(keys):
        missing = sorted(keys - set(have))
        raise ConfigError(f"{where}: {len(missing)} transitions the query log answers are missing (first: episode "
                          f"{missing[0][0]} step {missing[0][1]})")
    return ds if mask.all() else ds.subset(np.flatnonzero(mask))


# --------------------------------------------------------------------------- a round's questions
@dataclass
class Query:
    """One round's questions, ids ``first`` to ``first + n - 1``: the transitions asked about (labels), or segment
    pairs (preferences: ``pairs`` by episode and first step, ``transitions`` every step of their segments).

    :param selection: how they were chosen (reported in the round's row).
    """

    round: int
    first: int
    timesteps: int
    transitions: TransitionDataset
    pairs: dict[str, np.ndarray] | None = None
    length: int = 0
    selection: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.transitions) if self.pairs is None else len(self.pairs["left_episode"])

    def log_lines(self) -> list[dict[str, Any]]:
        """The query log's lines for these questions."""
        head = {"kind": "query", "round": self.round, "timesteps": self.timesteps}
        if self.pairs is None:
            return [{**head, "id": self.first + i, "episode": int(e), "step": int(s)}
                    for i, (e, s) in enumerate(zip(self.transitions.episode, self.transitions.step))]
        p = self.pairs
        return [{**head, "id": self.first + i, "left": {"episode": int(p["left_episode"][i]),
                                                         "step": int(p["left_step"][i])},
                 "right": {"episode": int(p["right_episode"][i]), "step": int(p["right_step"][i])},
                 "length": self.length} for i in range(self.n)]

    def save(self, files: FeedbackFiles) -> None:
        """Write ``pending/`` (its ``query.json`` last: without it the folder is a save that was cut off)."""
        clear_pending(files)
        self.transitions.save(files.pending / "transitions")
        atomic.write_json(files.pending / "query.json", {
            "round": self.round, "first": self.first, "n": self.n, "timesteps": self.timesteps,
            "length": self.length, "selection": self.selection,
            "pairs": None if self.pairs is None else {k: v.tolist() for k, v in self.pairs.items()}})

    @classmethod
    def load(cls, files: FeedbackFiles) -> Query | None:
        """The round saved in ``pending/``, if any (a save cut off is removed)."""
        path = files.pending / "query.json"
        if not path.exists():
            clear_pending(files)
            return None
        try:
            doc = json.loads(path.read_text())
            transitions = TransitionDataset.load(files.pending / "transitions")
            pairs = None if doc["pairs"] is None else {k: np.asarray(v, np.int64) for k, v in doc["pairs"].items()}
            query = cls(int(doc["round"]), int(doc["first"]), int(doc["timesteps"]), transitions, pairs,
                        int(doc["length"]), dict(doc["selection"]))
        except (OSError, ValueError, KeyError, TypeError, DatasetError) as err:
            raise ConfigError(f"{path}: not a readable pending round ({type(err).__name__}: {err})") from None
        if query.n != doc["n"]:
            raise ConfigError(f"{path}: field 'n' is {doc['n']}, the saved questions are {query.n}")
        return query


def clear_pending(files: FeedbackFiles) -> None:
    """Remove ``pending/`` (a round that is in ``feedback.json``)."""
    if files.pending.exists():
        shutil.rmtree(files.pending)


def write_unanswered(path: Path, ds: TransitionDataset) -> None:
    """``episode,step,label`` rows (label empty) for the transitions of ``ds``, as a ``file:`` teacher reads them,
    followed by the transitions' numbers (observation, action, next observation, terminated) when a row has at
    most :data:`CSV_FEATURES` of them, so a person can label them from the file."""
    leaves = {**sp.split(ds.obs_space, ds.obs, "obs"), **sp.split(ds.action_space, ds.action, "action"),
              **sp.split(ds.obs_space, ds.next_obs, "next_obs")}
    columns = {k: np.asarray(v).reshape(len(ds), -1) for k, v in leaves.items()}
    header = ["episode", "step", "label"]
    if sum(c.shape[1] for c in columns.values()) <= CSV_FEATURES:
        for k, c in columns.items():
            header += [k] if c.shape[1] == 1 else [f"{k}[{j}]" for j in range(c.shape[1])]
        header.append("terminated")
    rows = []
    for i in range(len(ds)):
        row = [str(int(ds.episode[i])), str(int(ds.step[i])), ""]
        if len(header) > 3:
            row += [repr(float(x)) for c in columns.values() for x in c[i]] + [str(bool(ds.terminated[i]))]
        rows.append(",".join(row))
    atomic.write_bytes(path, (",".join(header) + "\n" + "".join(r + "\n" for r in rows)).encode())


def read_state(path: Path) -> dict[str, Any]:
    """``feedback.json`` as a JSON object."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not readable JSON ({type(err).__name__}: {err})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return doc
