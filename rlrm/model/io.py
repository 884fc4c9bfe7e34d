"""Save/load a ``RewardModel`` as one safetensors file: weights as tensors, everything else as JSON in
the file's metadata. Loading never unpickles; writing is atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import rlrm
from rlrm import atomic
from rlrm.errors import ModelFileError
from rlrm.model.network import RewardModel

FORMAT = "rlrm.reward_model"
FORMAT_VERSION = 1
META_KEY = "rlrm"


def save(model: RewardModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` (``.safetensors``) atomically; records the rlrm version and config."""
    path = Path(path)
    desc = {"format": FORMAT, "format_version": FORMAT_VERSION, "rlrm_version": rlrm.__version__,
            **model.describe()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic.write_bytes(path, st_save(tensors, metadata={META_KEY: json.dumps(desc)}))
    return path


def read_description(path: str | os.PathLike) -> dict:
    """The JSON description stored in a model file (no weights loaded)."""
    return _read(Path(path))[0]


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    if not path.exists():
        raise ModelFileError(f"{path}: reward model file not found")
    if path.is_dir():
        raise ModelFileError(f"{path}: expected a reward model file (.safetensors), found a directory")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise ModelFileError(f"{path}: not a readable rlrm reward model (truncated or not safetensors: "
                             f"{str(err).splitlines()[0][:120]})") from None
    header_len = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + header_len])
        desc = json.loads(header["__metadata__"][META_KEY])
    except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError):
        desc = None
    if not isinstance(desc, dict):
        raise ModelFileError(f"{path}: a safetensors file, but not an rlrm reward model (no 'rlrm' metadata)")
    if desc.get("format") != FORMAT:
        raise ModelFileError(f"{path}: field 'format': expected {FORMAT!r}, got {desc.get('format')!r}")
    version = desc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(f"{path}: field 'format_version' is {version!r}; this rlrm ({rlrm.__version__}) reads "
                             f"up to {FORMAT_VERSION}: upgrade rlrm")
    return desc, tensors


def load(path: str | os.PathLike) -> RewardModel:
    """Load a model saved by :func:`save` (safetensors + JSON; nothing is executed)."""
    path = Path(path)
    desc, tensors = _read(path)
    try:
        model = RewardModel.from_description(desc)
    except ModelFileError as err:
        raise ModelFileError(f"{path}: {err}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelFileError(f"{path}: weights do not match the stored architecture (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise ModelFileError(f"{path}: tensor {k!r} has shape {tuple(v.shape)}, expected "
                                 f"{tuple(expected[k].shape)}")
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model
