"""Where preference feedback comes from: preference folders (``rlrm.collect --preferences``), folders holding
them, and JSONL answer files (``answers.jsonl`` from the ``rlrm.queries`` page, or any tool's).

A JSONL file names no dataset itself: its transitions are the dataset given explicitly, else the one recorded in
``query_set.json`` beside it (written by ``rlrm.queries``), checked against its manifest checksum.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from rlrm import atomic
from rlrm.data.dataset import MANIFEST, TransitionDataset
from rlrm.data.preferences import FORMAT, PreferenceDataset, read_preference_file
from rlrm.errors import DatasetError, LabelError
from rlrm.formats import folder_format

QUERY_SET = "query_set.json"


def load_feedback(paths: Iterable[str | os.PathLike], dataset: str | os.PathLike | None = None
                  ) -> list[tuple[PreferenceDataset, TransitionDataset]]:
    """Every preference set under ``paths`` with the transitions it points into.

    :param paths: preference folders, folders of them, or ``.jsonl`` answer files.
    :param dataset: the transition dataset of the JSONL files (default: from ``query_set.json`` beside each).
    """
    out = []
    for path in map(Path, paths):
        if path.is_file():
            ds_dir = Path(dataset) if dataset is not None else _query_set_dataset(path)
            ds = TransitionDataset.load(ds_dir)
            out.append((read_preference_file(path, ds, dataset_dir=ds_dir), ds))
        elif _is_preference_folder(path):
            out.append(_load_folder(path))
        elif path.is_dir() and (subs := sorted(d for d in path.iterdir() if _is_preference_folder(d))):
            out.extend(_load_folder(d) for d in subs)
        else:
            what = "not found" if not path.exists() else "holds no preference set"
            raise DatasetError(f"{path}: preferences {what}; expected a preference folder (rlrm.collect "
                               "--preferences), a folder of them, or a .jsonl answers file")
    return out


def _is_preference_folder(path: Path) -> bool:
    return folder_format(path, MANIFEST) == FORMAT


def _load_folder(path: Path) -> tuple[PreferenceDataset, TransitionDataset]:
    prefs = PreferenceDataset.load(path)
    assert prefs.dataset_dir is not None  # set by load
    return prefs, TransitionDataset.load(prefs.dataset_dir)


def _query_set_dataset(path: Path) -> Path:
    """The dataset folder recorded in ``query_set.json`` beside an answers file (checksum checked)."""
    record = path.parent / QUERY_SET
    if not record.is_file():
        raise LabelError(f"{path}: no {QUERY_SET} beside it to say which dataset its pairs point into; name the "
                         "dataset with --preference-data DIR")
    try:
        info = json.loads(record.read_text())
        folder, digest = Path(info["dataset"]), info["dataset_manifest_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LabelError(f"{record}: expected the query set record of rlrm.queries with 'dataset' and "
                         f"'dataset_manifest_sha256' ({type(err).__name__}: {err})") from None
    if not (folder / MANIFEST).is_file():
        raise LabelError(f"{record}: field 'dataset': {folder} is not there any more; name the dataset with "
                         "--preference-data DIR")
    if atomic.file_sha256(folder / MANIFEST) != digest:
        raise LabelError(f"{record}: field 'dataset': {folder} changed since the queries were made (manifest "
                         "checksum differs); the answers' episodes may not be the ones shown")
    return folder
