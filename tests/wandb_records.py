"""Read what an offline W&B run wrote (``run-*.wandb``), without wandb's sync machinery or the network.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, a 2-byte magic, a 1-byte version), then
32 KiB blocks of chunks. Each chunk has a 7-byte header ``<IHB`` (crc32, payload length, type: 1 full,
2 first, 3 middle, 4 last); a chunk never crosses a block boundary, and fewer than 7 bytes left in a block
are padding. Joined payloads are serialized ``wandb_internal_pb2.Record`` messages.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

FILE_HEADER = 7
BLOCK = 32768
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(path: str | Path) -> list[bytes]:
    """The serialized records of a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (header {data[:FILE_HEADER]!r})")
    out: list[bytes] = []
    pending: bytearray | None = None
    pos = FILE_HEADER
    while pos + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER.size:
            pos += left_in_block
            continue
        _crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        pos += CHUNK_HEADER.size
        if kind == 0 and length == 0:  # padding to the end of the block
            pos += left_in_block - CHUNK_HEADER.size
            continue
        chunk = data[pos:pos + length]
        pos += length
        if len(chunk) < length:  # a run still being written: ignore the torn tail
            break
        if kind == FULL:
            out.append(bytes(chunk))
        elif kind == FIRST:
            pending = bytearray(chunk)
        elif kind == MIDDLE and pending is not None:
            pending += chunk
        elif kind == LAST and pending is not None:
            pending += chunk
            out.append(bytes(pending))
            pending = None
        else:
            raise ValueError(f"{path}: unexpected chunk type {kind} at byte {pos - length - CHUNK_HEADER.size}")
    return out


def records(path: str | Path) -> list[Any]:
    """The ``Record`` messages of a ``.wandb`` file."""
    out = []
    for payload in payloads(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(payload)
        out.append(rec)
    return out


def _value(item: Any) -> Any:
    kind = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if kind == "none":
        return None
    if kind in ("boolean", "integer", "number", "text"):
        return getattr(item, kind)
    if kind == "json":
        return json.loads(item.json)
    return json.loads(item.value_json) if item.value_json else None


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def run_file(run_dir: str | Path) -> Path:
    """The ``run-*.wandb`` file of a run directory."""
    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"{run_dir}: expected one run-*.wandb file, found {[f.name for f in files]}")
    return files[0]


def history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``run.log`` row of a run as a dict (``_step`` etc. included), in order."""
    return [{_key(item): _value(item) for item in rec.history.item}
            for rec in records(run_file(run_dir)) if rec.WhichOneof("record_type") == "history"]


def find_run_dirs(root: str | Path) -> list[Path]:
    """Offline run directories under ``root`` (``<dir>/wandb/offline-run-*/``, at any depth)."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir() and p.parent.name == "wandb")
