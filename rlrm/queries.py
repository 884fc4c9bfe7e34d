"""``python -m rlrm.queries``: choose segment pairs of a dataset to ask a person about, render them as clips and
write a static answer page (``index.html``, opened from disk: no server, no network).

Writes ``OUT/queries.jsonl`` (the pairs, blank labels), ``OUT/clips/pairNNNN_{left,right}.gif``,
``OUT/index.html`` and ``OUT/query_set.json`` (how the set was made). The page saves ``answers.jsonl``, which
``python -m rlrm.train_reward --preferences answers.jsonl`` imports.

With ``--labels N`` it chooses N transitions to label with a number instead (spread out over what ``--model``'s
earlier tasks reward, or over the raw features: :mod:`rlrm.train.label_choice`) and writes ``OUT/labels.csv``
(episode, step and a blank label per row): fill in the labels (rows left blank are skipped), collect again as
the dataset was with ``--labeler file:OUT/labels.csv`` (the same seed gives the same transitions), and train
with ``python -m rlrm.train_reward --init MODEL``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import rlrm
from rlrm import atomic, cli
from rlrm import model as reward_model
from rlrm import spaces as sp
from rlrm.data.dataset import MANIFEST, TransitionDataset, find_datasets
from rlrm.data.labels import write_label_file
from rlrm.data.preferences import PreferenceDataset, SegmentPairs, write_preference_file
from rlrm.data.query_page import write_query_page
from rlrm.data.render import write_clips
from rlrm.data.selection import METHODS, select_pairs
from rlrm.data.teachers import sample_pairs
from rlrm.errors import ConfigError, DatasetError
from rlrm.train.label_choice import choose_labels

PROG = "python -m rlrm.queries"
FLAGS = {"n": "--n", "select": "--select", "member_returns": "--model", "out": "--out", "write_clips": "--width/--fps",
         "sample_pairs": "--n/--candidates/--length"}
CLIPS = "clips"
PREDICT_CHUNK = 65_536


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a dataset folder (or a folder of datasets, with --task)")
    p.add_argument("--task", default=None, help="which dataset of a folder of datasets (its task name)")
    p.add_argument("--model", type=Path, default=None,
                   help="reward model file; required by --select disagreement (an ensemble) and entropy")
    p.add_argument("--n", type=int, default=50, help="number of pairs to ask about (default 50)")
    p.add_argument("--out", type=Path, default=Path("queries"), help="output folder (default queries/)")
    p.add_argument("--length", type=int, default=25, help="segment length in steps (default 25)")
    p.add_argument("--select", choices=METHODS, default="uniform",
                   help="uniform | disagreement (variance of the ensemble members' preference probabilities) | "
                        "entropy (of the mean preference probability)")
    p.add_argument("--candidates", default="10x",
                   help="candidate pairs to choose from: a number, or a multiple of --n like 10x (default 10x)")
    p.add_argument("--labels", type=int, default=None, metavar="N",
                   help="choose N transitions to label with a number (not pairs): writes OUT/labels.csv")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=float, default=10.0, help="clip frames per second (default 10)")
    p.add_argument("--width", type=int, default=240, help="clip width in pixels (frames are downscaled; default 240)")
    cli.add_common_args(p)
    return p


def main(args: argparse.Namespace) -> int:
    out = _check_out(args.out)
    if args.labels is not None:
        return _label_rows(args, out)
    if args.n < 1:
        raise ConfigError(f"--n {args.n}: expected at least 1 pair")
    n_candidates = _candidates(args.candidates, args.n)
    if args.n > n_candidates:
        raise ConfigError(f"--n {args.n} is larger than --candidates {args.candidates} ({n_candidates} candidate "
                          "pairs); expected n <= the number of candidates")
    if args.select != "uniform" and args.model is None:
        raise ConfigError(f"--select {args.select} needs a reward model: pass --model FILE (or --select uniform)")
    data_dir, ds = _dataset(args.data, args.task)
    if ds.episode_seed is None:
        raise DatasetError(f"{data_dir}: the dataset has no episode seeds (collected before rlrm recorded episode "
                           "seeds): re-collect it with python -m rlrm.collect to render its segments")
    rng = np.random.default_rng(args.seed)
    candidates = sample_pairs(ds, n_candidates, args.length, rng)
    returns = _member_returns(args.model, ds, candidates) if args.model is not None else None
    chosen = select_pairs(args.n, args.select, returns, rng=rng, n_candidates=len(candidates))
    pairs = candidates.subset(chosen)

    clips = write_clips(ds, pairs, out / CLIPS, width=args.width, fps=args.fps)
    _remove_stale_clips(out / CLIPS, {name for pair in clips for name in pair})
    queries = write_preference_file(out / "queries.jsonl", pairs)
    set_id = hashlib.sha256(queries.read_bytes() + atomic.file_sha256(data_dir / MANIFEST).encode()).hexdigest()[:16]
    page = write_query_page(out, pairs, [(f"{CLIPS}/{a}", f"{CLIPS}/{b}") for a, b in clips], set_id,
                            f"Which is better? {ds.task.name}: {len(pairs)} pairs")
    atomic.write_json(out / "query_set.json", _record(args, data_dir, ds, set_id, len(candidates), returns))
    cli.print_table(f"Queries for {ds.task.name} ({args.select} selection)", [{
        "task": ds.task.name, "pairs": len(pairs), "candidates": len(candidates), "length": args.length,
        "clips": 2 * len(pairs), "page": str(page)}], caption=f"open {page} in a browser, answer, Save answers; then "
                    f"python -m rlrm.train_reward --preferences answers.jsonl")
    return 0


def _label_rows(args: argparse.Namespace, out: Path) -> int:
    """``--labels N``: the transitions to label, as a label-file template."""
    data_dir, ds = _dataset(args.data, args.task)
    if not 1 <= args.labels <= len(ds):
        raise ConfigError(f"--labels {args.labels}: expected 1 to {len(ds)} (the transitions of {data_dir})")
    model = None
    if args.model is not None:
        loaded = reward_model.load(args.model)
        model = getattr(loaded, "members", [loaded])[0]  # an ensemble: its first member's earlier tasks
    index = choose_labels(ds, args.labels, model, args.seed)
    path = write_label_file(out / "labels.csv", ds.subset(index), blank=True)
    space = "the model's earlier tasks' rewards" if model is not None and model.group_for(
        ds.obs_space, ds.action_space) is not None else "the raw features"
    cli.print_table(f"Transitions to label for {ds.task.name}", [{
        "task": ds.task.name, "labels": len(index), "of": len(ds), "spread over": space, "file": str(path)}],
        caption=f"fill in the label column of {path} (rows left blank are skipped); then collect again as "
                f"{data_dir} was, with --labeler file:{path}, and train on it"
                + (f" with python -m rlrm.train_reward --init {args.model}" if args.model is not None else ""))
    return 0


def _check_out(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file is in the way; expected a folder (or nothing) for the queries")
    if (out / CLIPS).exists() and not (out / CLIPS).is_dir():
        raise ConfigError(f"--out {out}: {out / CLIPS} is a file; expected a folder for the clips")
    return out


def _candidates(text: str, n: int) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*(x?)\s*", str(text))
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"--candidates {text!r}: expected a positive number (like 500) or a multiple of --n (like "
                          "10x)")
    return int(m.group(1)) * n if m.group(2) else int(m.group(1))


def _dataset(path: Path, task: str | None) -> tuple[Path, TransitionDataset]:
    found = find_datasets([path])
    if task is not None:
        named = [d for d in found if d.name == task or TransitionDataset.load(d, mmap=True).task.name == task]
        if not named:
            raise ConfigError(f"--task {task!r}: no dataset of that task under {path}")
        found = named[:1]
    if len(found) > 1:
        raise ConfigError(f"--data {path}: holds {len(found)} datasets ({', '.join(d.name for d in found)}); expected "
                          "one, or name it with --task")
    return found[0], TransitionDataset.load(found[0])


def _member_returns(path: Path, ds: TransitionDataset, pairs: SegmentPairs) -> np.ndarray:
    """Each ensemble member's predicted return of both sides of every pair, shape ``(K, n_pairs, 2)``.

    An ensemble model offers ``predict_members(task, obs, action, next_obs, done) -> (K, n)``; a plain model is one
    member (``predict(...)[None]``).
    """
    model = reward_model.load(path)
    task = ds.task.name
    model.head_info(task)  # a clear error if the model has no head for the dataset's task
    prefs = PreferenceDataset.from_pairs(ds, pairs, np.zeros(len(pairs), np.int8), "candidates")
    left, right = prefs.segment_rows()
    rows = np.unique(np.concatenate([left[left >= 0], right[right >= 0]]))
    members = getattr(model, "predict_members", None)
    parts = []
    for lo in range(0, len(rows), PREDICT_CHUNK):
        take = rows[lo:lo + PREDICT_CHUNK]
        batch = (task, sp.select(ds.obs, take), sp.select(ds.action, take), sp.select(ds.next_obs, take),
                 ds.terminated[take])
        parts.append(np.asarray(members(*batch) if members is not None else model.predict(*batch)[None],
                                np.float64))
    per_row = np.zeros((parts[0].shape[0], len(ds)))
    per_row[:, rows] = np.concatenate(parts, axis=1)
    mask = left >= 0
    return np.stack([(per_row[:, left.clip(0)] * mask).sum(-1), (per_row[:, right.clip(0)] * mask).sum(-1)], axis=-1)


def _remove_stale_clips(folder: Path, keep: set[str]) -> None:
    """Clips of an earlier, larger query set written to the same folder."""
    for path in folder.glob("pair*_*.gif"):
        if re.fullmatch(r"pair\d{4,}_(left|right)\.gif", path.name) and path.name not in keep:
            path.unlink()


def _record(args: argparse.Namespace, data_dir: Path, ds: TransitionDataset, set_id: str, n_candidates: int,
            returns: np.ndarray | None) -> dict[str, Any]:
    return {"format": "rlrm.query_set", "format_version": 1, "rlrm_version": rlrm.__version__, "id": set_id,
            "task": ds.task.name, "dataset": str(data_dir.resolve()),
            "dataset_manifest_sha256": atomic.file_sha256(data_dir / MANIFEST),
            "model": None if args.model is None else str(args.model.resolve()),
            "ensemble_members": None if returns is None else int(returns.shape[0]),
            "select": args.select, "n": args.n, "candidates": n_candidates, "length": args.length, "seed": args.seed,
            "fps": args.fps, "width": args.width, "queries": "queries.jsonl", "page": "index.html"}


def entry(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv``); returns the exit code."""
    return cli.run_main(main, build_parser(), argv, FLAGS)


if __name__ == "__main__":
    raise SystemExit(entry())
