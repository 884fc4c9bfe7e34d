"""Versioned file formats: the one check of a file's ``format`` name and ``format_version`` (datasets, models)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import rlrm
from rlrm.errors import RlrmError


def check_format(doc: Any, *, fmt: str, version: int, where: str, error: type[RlrmError]) -> int:
    """Check that ``doc`` (a parsed JSON header) is format ``fmt`` at a version this rlrm reads.

    :param where: the file, for the message.
    :param error: the exception type to raise (``DatasetError``, ``ModelFileError``).
    :return: the file's format version.
    """
    if not isinstance(doc, dict):
        raise error(f"{where}: expected a JSON object")
    if doc.get("format") != fmt:
        raise error(f"{where}: field 'format': expected {fmt!r}, got {doc.get('format')!r}")
    found = doc.get("format_version")
    if not isinstance(found, int) or isinstance(found, bool) or found < 1 or found > version:
        raise error(f"{where}: field 'format_version' is {found!r}; this rlrm ({rlrm.__version__}) reads versions "
                    f"1 to {version}: upgrade rlrm")
    return found


def folder_format(folder: Path, manifest: str = "manifest.json") -> str | None:
    """The ``format`` of the folder's manifest (``None``: no readable manifest, or none given)."""
    try:
        fmt = json.loads((folder / manifest).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None
    return fmt if isinstance(fmt, str) else None


def check_replaceable(path: str | os.PathLike, *, fmt: str, what: str, error: type[RlrmError],
                      manifest: str = "manifest.json") -> None:
    """Raise ``error`` unless ``path`` is free, an empty folder or a folder of format ``fmt``: the places a save of
    ``what`` (e.g. "rlrm dataset") may replace; anything else is kept."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise error(f"{path}: a file is in the way (expected {what} folder or nothing); refusing to replace it: "
                    "move it or write elsewhere")
    if any(path.iterdir()) and folder_format(path, manifest) != fmt:
        raise error(f"{path}: a folder that is not {what} is in the way (expected {manifest} with format {fmt!r}); "
                    "refusing to replace it: move it or write elsewhere")
