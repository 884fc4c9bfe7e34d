"""Versioned file formats: the one check of a file's ``format`` name and ``format_version`` (datasets, models)."""

from __future__ import annotations

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
