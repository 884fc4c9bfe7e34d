"""``TransitionDataset``: one task's labeled transitions, and its on-disk format.

On disk a dataset is a directory::

    manifest.json       format + version, rlrm version, task, spaces, label source, counts, fields
    obs.npy ...         one .npy per field; Dict/Tuple spaces store one file per leaf (obs.pos.npy)
    action.npy  next_obs.npy  terminated.npy  truncated.npy  label.npy  env_reward.npy
    episode.npy (int64)  step.npy (int32)
    episode_seed.npy (int64, optional)  the reset seed of each row's episode; absent: cannot replay

Rows are sorted by (episode, step). Arrays are plain ``.npy`` read with ``allow_pickle=False``. Labels are
finite numbers, and so are the observations and actions of Box spaces.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

import rlrm
from rlrm import atomic
from rlrm import spaces as sp
from rlrm.errors import DatasetError, RlrmError, SpaceError
from rlrm.formats import check_format, check_replaceable, folder_format
from rlrm.tasks import Task

FORMAT = "rlrm.transitions"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCALAR_FIELDS = {"terminated": np.bool_, "truncated": np.bool_, "label": np.float32, "env_reward": np.float32,
                 "episode": np.int64, "step": np.int32}


@dataclass
class TransitionDataset:
    """Labeled transitions of one task, sorted by (episode, step).

    ``obs``/``action``/``next_obs`` are batches (arrays with a leading axis; dicts/tuples of them for
    Dict/Tuple spaces). ``label`` is what the reward model learns; ``env_reward`` is the env's own reward.
    ``episode_seed`` (optional, int64 per row, the same within an episode) is the seed its episode was reset
    with: ``env.reset(seed=...)`` plus the stored actions replays it. ``None``: the episode cannot be replayed.
    """

    task: Task
    obs_space: spaces.Space
    action_space: spaces.Space
    obs: sp.Batch
    action: sp.Batch
    next_obs: sp.Batch
    terminated: np.ndarray
    truncated: np.ndarray
    label: np.ndarray
    env_reward: np.ndarray
    episode: np.ndarray
    step: np.ndarray
    label_source: str = "env"
    info: dict[str, Any] = field(default_factory=dict)
    episode_seed: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label)

    @property
    def done(self) -> np.ndarray:
        """``terminated | truncated``."""
        return self.terminated | self.truncated

    @property
    def n_episodes(self) -> int:
        """Number of distinct episode ids."""
        return len(np.unique(self.episode))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, task: Task, obs_space: spaces.Space, action_space: spaces.Space, *, obs: sp.Batch,
                    action: sp.Batch, next_obs: sp.Batch, terminated: Any, truncated: Any, episode: Any, step: Any,
                    env_reward: Any = None, label: Any = None, label_source: str = "env",
                    info: dict[str, Any] | None = None, episode_seed: Any = None) -> TransitionDataset:
        """Build, sort by (episode, step) and validate a dataset from arrays.

        :param episode_seed: optional per-row reset seed of the row's episode (see the class doc).
        """
        n = len(np.asarray(terminated))
        env_reward = np.zeros(n, np.float32) if env_reward is None else np.asarray(env_reward, np.float32)
        label = env_reward.reshape(-1).copy() if label is None else check_labels(label, n, "<memory>: field 'label'")
        ds = cls(task, obs_space, action_space, obs, action, next_obs, np.asarray(terminated, bool),
                 np.asarray(truncated, bool), label, env_reward.reshape(-1),
                 np.asarray(episode, np.int64), np.asarray(step, np.int32), label_source, dict(info or {}),
                 None if episode_seed is None else np.asarray(episode_seed, np.int64))
        order = np.lexsort((ds.step, ds.episode))
        if not np.all(order[1:] >= order[:-1]):
            ds = ds.subset(order)
        ds.validate("<memory>")
        return ds

    def subset(self, index: Any) -> TransitionDataset:
        """Rows picked by a mask, slice or index array (order kept)."""
        return replace(self, obs=sp.select(self.obs, index), action=sp.select(self.action, index),
                       next_obs=sp.select(self.next_obs, index), terminated=self.terminated[index],
                       truncated=self.truncated[index], label=self.label[index], env_reward=self.env_reward[index],
                       episode=self.episode[index], step=self.step[index],
                       episode_seed=None if self.episode_seed is None else self.episode_seed[index])

    def with_labels(self, label: Any, source: str) -> TransitionDataset:
        """A copy with new labels, checked by :func:`check_labels` (numbers, shape ``(n,)``, finite)."""
        label = check_labels(label, len(self), f"labels from {source}", self.episode, self.step)
        return replace(self, label=label, label_source=source)

    def split_by_episode(self, val_frac: float, seed: int = 0) -> tuple[TransitionDataset, TransitionDataset]:
        """Split into (train, validation) by whole episodes, never by transition (neighbours leak)."""
        eps = np.unique(self.episode)
        if not 0.0 <= val_frac < 1.0:
            raise DatasetError(f"val_frac must be in [0, 1), got {val_frac}")
        n_val = round(len(eps) * val_frac)
        if val_frac > 0 and len(eps) >= 2:
            n_val = min(max(n_val, 1), len(eps) - 1)
        val_eps = np.random.default_rng(seed).permutation(eps)[:n_val]
        in_val = np.isin(self.episode, val_eps)
        return self.subset(~in_val), self.subset(in_val)

    def episode_returns(self, values: np.ndarray | None = None, complete_only: bool = True) -> np.ndarray:
        """Per-episode sums of ``values`` (default: labels), over episodes that ended if any did."""
        values = self.label if values is None else values
        _, start = np.unique(self.episode, return_index=True)
        sums = np.add.reduceat(values.astype(np.float64), start) if len(start) else np.zeros(0)
        if complete_only:
            ends = np.r_[start[1:], len(self)] - 1
            complete = self.done[ends] if len(ends) else np.zeros(0, bool)
            if complete.sum() >= 2:
                return sums[complete]
        return sums

    # ------------------------------------------------------------------ validation
    def validate(self, where: str) -> None:
        """Check shapes against the spaces, finite labels and Box values, consistent episode ids; raise
        :class:`DatasetError`."""
        n = len(self.label)
        for name, value in (("terminated", self.terminated), ("truncated", self.truncated),
                            ("env_reward", self.env_reward), ("episode", self.episode), ("step", self.step)):
            if np.shape(value) != (n,):
                raise DatasetError(f"{where}: field {name!r}: expected shape ({n},), got {np.shape(value)}")
        if self.episode_seed is not None:
            _check_episode_seed(where, self.episode_seed, self.episode, n)
        for prefix, space, batch in (("obs", self.obs_space, self.obs), ("action", self.action_space, self.action),
                                     ("next_obs", self.obs_space, self.next_obs)):
            try:
                arrays = sp.split(space, batch, prefix)
            except (KeyError, IndexError, TypeError):
                raise DatasetError(f"{where}: field {prefix!r} does not have the structure of {space}") from None
            for leaf, leaf_space in sp.leaves(space, prefix):
                _check_leaf(where, leaf, arrays[leaf], leaf_space, n)
                # NaN/inf in a Box input would become NaN normalization statistics, and so a NaN model
                if isinstance(leaf_space, spaces.Box) and arrays[leaf].dtype.kind == "f":
                    count, i = _non_finite_rows(arrays[leaf])
                    if count:
                        raise DatasetError(f"{where}: field {leaf!r}: {count} row(s) with non-finite values (NaN/inf), "
                                           f"first at row {i} (episode {self.episode[i]}, step {self.step[i]}); "
                                           f"values of a Box space must be finite")
        check_labels(self.label, n, f"{where}: field 'label'", self.episode, self.step)
        if n > 1:
            same = self.episode[1:] == self.episode[:-1]
            # Steps may skip (a dataset labeled in part keeps only its labeled transitions), never repeat or go back.
            if np.any(self.episode[1:] < self.episode[:-1]) or np.any(same & (self.step[1:] <= self.step[:-1])):
                raise DatasetError(f"{where}: fields 'episode'/'step': rows must be sorted by episode with steps "
                                   "increasing inside an episode")
            if np.any(same & self.done[:-1]):
                i = int(np.argmax(same & self.done[:-1]))
                raise DatasetError(f"{where}: field 'terminated'/'truncated': episode {self.episode[i]} ends at "
                                   f"step {self.step[i]} but continues after it")

    # ------------------------------------------------------------------ disk format
    def save(self, path: str | os.PathLike) -> Path:
        """Write the dataset directory atomically (a temp directory renamed into place).

        ``path`` may be free, an empty folder or an rlrm dataset (replaced); anything else is refused
        (:func:`check_target`). A failed write raises :class:`DatasetError` naming the cause, leaves no temporary
        folder and keeps what was at ``path``.
        """
        path = Path(path)
        check_target(path)
        try:
            return self._save(path)
        except OSError as err:
            # the temporary folder is gone by now: name the file only if it is not one of ours
            own = f"{os.sep}.{path.name}." in f"{os.sep}{err.filename}"
            where = f" ({err.filename})" if err.filename and not own else ""
            raise DatasetError(f"{path}: cannot write the dataset: {err.strerror or err}{where}; nothing was written "
                               "and what was there is unchanged") from None

    def _save(self, path: Path) -> Path:
        fields: dict[str, Any] = {}
        with atomic.directory(path) as tmp:
            arrays: dict[str, np.ndarray] = {}
            arrays.update(sp.split(self.obs_space, self.obs, "obs"))
            arrays.update(sp.split(self.action_space, self.action, "action"))
            arrays.update(sp.split(self.obs_space, self.next_obs, "next_obs"))
            for name, dtype in SCALAR_FIELDS.items():
                arrays[name] = np.asarray(getattr(self, name), dtype=dtype)
            if self.episode_seed is not None:
                arrays["episode_seed"] = np.asarray(self.episode_seed, dtype=np.int64)
            for name, arr in arrays.items():
                arr = np.ascontiguousarray(arr)
                _save_npy(tmp / f"{name}.npy", arr)
                fields[name] = {"file": f"{name}.npy", "dtype": str(arr.dtype), "shape": list(arr.shape)}
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "rlrm_version": rlrm.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "task": self.task.to_dict(),
                "obs_space": sp.space_to_json(self.obs_space), "action_space": sp.space_to_json(self.action_space),
                "label_source": self.label_source, "n_transitions": len(self), "n_episodes": self.n_episodes,
                "fields": fields, "info": self.info,
            }
            atomic.write_json(tmp / MANIFEST, manifest)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False) -> TransitionDataset:
        """Read and validate a dataset directory; errors name the file and field.

        :param mmap: memory-map the arrays instead of reading them (for datasets larger than memory).
        """
        path = Path(path)
        manifest = read_manifest(path)
        where = str(path)
        try:
            task = Task.from_dict(manifest["task"], f"{path / MANIFEST}: field 'task'")
            obs_space = sp.space_from_json(manifest["obs_space"])
            action_space = sp.space_from_json(manifest["action_space"])
            fields = manifest["fields"]
            n = int(manifest["n_transitions"])
        except KeyError as err:
            raise DatasetError(f"{path / MANIFEST}: missing field {err}") from None
        except SpaceError as err:
            raise DatasetError(f"{path / MANIFEST}: {err}") from None
        names = [leaf for s, p in ((obs_space, "obs"), (action_space, "action"), (obs_space, "next_obs"))
                 for leaf, _ in sp.leaves(s, p)] + list(SCALAR_FIELDS)
        if "episode_seed" in fields:  # optional: datasets written before it (or by hand) cannot be replayed
            names.append("episode_seed")
        arrays: dict[str, np.ndarray] = {}
        for name in names:
            if name not in fields:
                raise DatasetError(f"{path / MANIFEST}: field {name!r} missing from 'fields'")
            file = path / fields[name]["file"]
            try:
                arr = np.load(file, allow_pickle=False, mmap_mode="r" if mmap else None)
            except FileNotFoundError:
                raise DatasetError(f"{file}: file missing (field {name!r})") from None
            except (ValueError, OSError, EOFError) as err:
                raise DatasetError(f"{file}: not a readable .npy array (field {name!r}): {err}") from None
            if len(arr) != n:
                raise DatasetError(f"{file}: field {name!r} has {len(arr)} rows, manifest says {n}")
            arrays[name] = arr
        dtypes = {**SCALAR_FIELDS, **({"episode_seed": np.int64} if "episode_seed" in arrays else {})}
        for name, dtype in dtypes.items():
            if arrays[name].dtype != np.dtype(dtype):
                raise DatasetError(f"{path / fields[name]['file']}: field {name!r}: expected dtype "
                                   f"{np.dtype(dtype)}, got {arrays[name].dtype}")
        ds = cls(task, obs_space, action_space, sp.join(obs_space, arrays, "obs"),
                 sp.join(action_space, arrays, "action"), sp.join(obs_space, arrays, "next_obs"),
                 arrays["terminated"], arrays["truncated"], arrays["label"], arrays["env_reward"],
                 arrays["episode"], arrays["step"], str(manifest.get("label_source", "env")),
                 dict(manifest.get("info") or {}), arrays.get("episode_seed"))
        ds.validate(where)
        return ds


def check_labels(label: Any, n: int, what: str, episode: np.ndarray | None = None, step: np.ndarray | None = None,
                 error: type[RlrmError] = DatasetError) -> np.ndarray:
    """``label`` as a float32 array if it is numbers (not booleans) of shape ``(n,)``, all finite as float32;
    otherwise raise ``error`` with a message that starts with ``what`` and names the first bad row.

    The one label check: ``with_labels``, ``validate`` and the labelers all use it.
    """
    arr = np.asarray(label)
    if arr.dtype.kind not in "iuf":
        hint = "; cast booleans with .astype(float)" if arr.dtype.kind == "b" else ""
        raise error(f"{what}: expected numbers (integers or floats), got dtype {arr.dtype}{hint}")
    if arr.shape != (n,):
        raise error(f"{what}: expected shape ({n},), got {arr.shape}")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused just below
        arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        at = f" (episode {episode[i]}, step {step[i]})" if episode is not None and step is not None else ""
        raise error(f"{what}: {int(bad.sum())} non-finite value(s) (NaN/inf, or beyond float32's range), first at "
                    f"row {i}{at}; labels must be finite")
    return arr


def concat(datasets: Sequence[TransitionDataset]) -> TransitionDataset:
    """One dataset of the rows of several of the same task and spaces (e.g. random data and an agent's), each
    keeping its own episodes (episode ids renumbered). Replayable only if every part is; label sources that differ
    are joined with ``+``; ``info["parts"]`` keeps each part's info.

    :raise DatasetError: datasets of different tasks or spaces.
    """
    if not datasets:
        raise DatasetError("concat: no datasets given")
    first = datasets[0]
    for ds in datasets[1:]:
        if ds.task != first.task:
            raise DatasetError(f"concat: task {ds.task.name!r} ({ds.task}) differs from {first.task.name!r} "
                               f"({first.task}); expected datasets of one task")
        for what, a, b in (("observation", first.obs_space, ds.obs_space), ("action", first.action_space,
                                                                              ds.action_space)):
            if sp.space_signature(a) != sp.space_signature(b):
                raise DatasetError(f"concat: task {first.task.name!r}: {what} spaces differ ({a} vs {b})")
    if len(datasets) == 1:
        return first
    episodes, offset = [], 0
    for ds in datasets:  # each part's ids shifted past the previous part's (rows stay sorted by episode, step)
        low = int(ds.episode.min(initial=0))
        episodes.append(ds.episode - low + offset)
        offset += int(ds.episode.max(initial=low - 1)) - low + 1
    seeds = [ds.episode_seed for ds in datasets]
    sources = list(dict.fromkeys(ds.label_source for ds in datasets))
    return replace(first, obs=sp.concat([ds.obs for ds in datasets]),
                   action=sp.concat([ds.action for ds in datasets]),
                   next_obs=sp.concat([ds.next_obs for ds in datasets]),
                   terminated=np.concatenate([ds.terminated for ds in datasets]),
                   truncated=np.concatenate([ds.truncated for ds in datasets]),
                   label=np.concatenate([ds.label for ds in datasets]),
                   env_reward=np.concatenate([ds.env_reward for ds in datasets]),
                   episode=np.concatenate(episodes),
                   step=np.concatenate([ds.step for ds in datasets]), label_source="+".join(sources),
                   info={"parts": [ds.info for ds in datasets]},
                   episode_seed=None if any(s is None for s in seeds) else np.concatenate(seeds))


def _check_episode_seed(where: str, seed: np.ndarray, episode: np.ndarray, n: int) -> None:
    if np.shape(seed) != (n,):
        raise DatasetError(f"{where}: field 'episode_seed': expected shape ({n},), got {np.shape(seed)}")
    if np.asarray(seed).dtype.kind not in "iu":
        raise DatasetError(f"{where}: field 'episode_seed': expected integers, got dtype {np.asarray(seed).dtype}")
    if n > 1:
        bad = (episode[1:] == episode[:-1]) & (seed[1:] != seed[:-1])
        if bad.any():
            i = int(np.argmax(bad)) + 1
            raise DatasetError(f"{where}: field 'episode_seed': episode {episode[i]} has seeds {seed[i - 1]} and "
                               f"{seed[i]}; expected one seed per episode")
    if n and np.min(seed) < 0:
        raise DatasetError(f"{where}: field 'episode_seed': found {np.min(seed)}; expected seeds >= 0")


def check_target(path: str | os.PathLike) -> None:
    """Raise :class:`DatasetError` unless ``path`` is free, an empty folder or an rlrm dataset folder: the
    places :meth:`TransitionDataset.save` may write (a dataset there is replaced; anything else is kept)."""
    check_replaceable(path, fmt=FORMAT, what="an rlrm dataset", error=DatasetError, manifest=MANIFEST)


class _Stream:
    """A file as numpy sees a non-file stream: ``write_array`` then writes through ``write``, whose OSError keeps
    its errno ("No space left on device"); ``ndarray.tofile`` reports only "N requested and M written"."""

    def __init__(self, f: Any) -> None:
        self.write = f.write


def _save_npy(file: Path, arr: np.ndarray) -> None:
    with open(file, "wb") as f:
        np.lib.format.write_array(_Stream(f), arr, allow_pickle=False)


def _non_finite_rows(arr: np.ndarray, chunk_bytes: int = 1 << 24) -> tuple[int, int]:
    """(number of rows holding a NaN/inf, first such row or -1), read in chunks (memory-mapped data stays cheap)."""
    rows = max(1, chunk_bytes // max(1, arr[:1].nbytes))
    count, first = 0, -1
    for start in range(0, len(arr), rows):
        chunk = np.asarray(arr[start:start + rows])
        bad = ~np.isfinite(chunk).all(axis=tuple(range(1, chunk.ndim)))
        if bad.any():
            first = start + int(np.argmax(bad)) if first < 0 else first
            count += int(bad.sum())
    return count, first


def _check_leaf(where: str, name: str, arr: np.ndarray, space: spaces.Space, n: int) -> None:
    expected = (n, *sp.leaf_shape(space))
    if tuple(arr.shape) != expected:
        raise DatasetError(f"{where}: field {name!r}: expected shape {expected} for {space}, got {tuple(arr.shape)}")
    kind = arr.dtype.kind
    if isinstance(space, spaces.Box):
        ok = kind in "fiu" and (np.dtype(space.dtype).kind != "f" or kind == "f")
    else:
        ok = kind in "iub"
    if not ok:
        raise DatasetError(f"{where}: field {name!r}: dtype {arr.dtype} does not fit {space} "
                           f"(expected {'floats' if isinstance(space, spaces.Box) else 'integers'})")


def read_manifest(path: Path) -> dict[str, Any]:
    """Read a dataset manifest, checking the directory, format and version."""
    if not path.exists():
        raise DatasetError(f"{path}: dataset directory not found")
    if not path.is_dir():
        raise DatasetError(f"{path}: expected a dataset directory, found a file")
    file = path / MANIFEST
    if not file.exists():
        what = "is empty" if not any(path.iterdir()) else f"has no {MANIFEST}"
        raise DatasetError(f"{path}: dataset directory {what} (expected an rlrm dataset written by rlrm.collect)")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{file}: not valid JSON: {err}") from None
    check_format(manifest, fmt=FORMAT, version=FORMAT_VERSION, where=str(file), error=DatasetError)
    return manifest


def find_datasets(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Dataset directories named by ``paths``: each is a dataset or a folder of datasets (one level down)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / MANIFEST).exists():
            found.append(p)
        elif p.is_dir() and (subs := sorted(d for d in p.iterdir() if _holds_transitions(d))):
            found.extend(subs)
        else:
            read_manifest(p)  # raises the precise error (missing / empty / not a dataset)
    return found


def _holds_transitions(folder: Path) -> bool:
    """Whether a folder inside a folder of datasets is a transition dataset (not, e.g., a preference set beside
    it); a manifest that cannot be read counts as one, so loading it names the problem."""
    if not (folder / MANIFEST).is_file():
        return False
    fmt = folder_format(folder, MANIFEST)
    return fmt is None or fmt == FORMAT
