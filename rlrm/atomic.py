"""Files: atomic writes (a temporary sibling, then a rename, so readers never see half a file), file
digests and file-safe names. The one place rlrm writes files from."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def temp_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path (same suffix) for a writer that needs a file name (``agent.save``,
    ``np.savez``); it replaces ``path`` only if the block finishes, and is removed if it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file(path.parent, f".{path.stem}.", f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _new_file(parent: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """Create a new, uniquely named file like ``tempfile.mkstemp`` but with mode 0666 minus the umask.

    ``mkstemp`` makes 0600 files, which the rename would hand on to the final output.
    """
    for _ in range(100):
        tmp = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(parent / f"{prefix}*{suffix}"))


def _new_dir(parent: Path, prefix: str, suffix: str) -> Path:
    """Create a new, uniquely named folder like ``tempfile.mkdtemp`` but with mode 0777 minus the umask."""
    for _ in range(100):
        tmp = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            tmp.mkdir(0o777)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary folder name", str(parent / f"{prefix}*{suffix}"))


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def slug(name: str) -> str:
    """A name as an ASCII file/folder/artifact name (``Pendulum-v1/upright`` → ``Pendulum-v1__upright``)."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in name.replace("/", "__"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON atomically (NaN/inf become ``null``)."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    write_bytes(path, (text + "\n").encode())


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


@contextlib.contextmanager
def directory(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block finishes without error.

    Only a directory is ever replaced: a file at ``path`` is an error (raised before the block runs), and
    with ``overwrite=False`` so is an existing directory.
    """
    path = Path(path)
    _check_replaceable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_dir(path.parent, f".{path.name}.", ".tmp")
    try:
        yield tmp
        _check_replaceable(path, overwrite)  # again: something may have appeared while the block ran
        if path.exists():
            old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")  # unique: never clobbers another
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the previous directory back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_replaceable(path: Path, overwrite: bool) -> None:
    if path.is_symlink() or path.exists():
        if not path.is_dir():
            raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(path))
        if not overwrite:
            raise FileExistsError(errno.EEXIST, "already exists", str(path))
