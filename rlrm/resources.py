"""Where the shipped data folders (``envs/``, ``agents/``) live: inside the wheel or in the repo."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the shipped data folder ``name`` (``"envs"`` or ``"agents"``).

    A wheel carries them as ``rlrm/_data/<name>``; an editable install or a checkout reads the
    repository's top-level folder.
    """
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"rlrm data folder {name!r} not found (looked in {_PKG / '_data'} and {_PKG.parent})")
