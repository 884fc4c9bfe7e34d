"""Save/load a ``RewardModel`` or a ``RewardEnsemble`` as one safetensors file: weights as tensors, everything
else as JSON in the file's metadata. Loading never unpickles, and checks the JSON header (sizes, tensor shapes,
member count) before it allocates anything; writing is atomic.

An ensemble file stores member ``k``'s tensors under ``m{k}.``; its description is member 0's (so a reader of
``tasks`` needs nothing new) plus ``ensemble`` (K) and ``members`` (each member's own description). It is format
version 3, so an rlrm from before ensembles says "upgrade rlrm" instead of failing on the tensor names; a single
model is still written as version 2.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import rlrm
from rlrm import atomic
from rlrm.errors import ConfigError, ModelFileError
from rlrm.formats import check_format
from rlrm.model.ensemble import MAX_MEMBERS, RewardEnsemble
from rlrm.model.network import CLIP, RewardModel

FORMAT = "rlrm.reward_model"
#: 2: clip bounds per input group (``norm_low_*``, ``norm_high_*``); version 1 files get mean -/+ CLIP std.
#: 3: ensembles (``ensemble``, ``members``, tensors ``m{k}.*``); single models are still written as 2
FORMAT_VERSION = 3
_SINGLE_VERSION = 2
META_KEY = "rlrm"
#: what a model file may ask for: beyond these it is refused before anything is built
MAX_PARAMETERS = 10**8
MAX_WIDTH = 65536  # an encoder layer, or an input group's features
MAX_DISCRETE = 4096  # a Discrete space's one-hot table is n x n
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on its JSON header


def save(model: RewardModel | RewardEnsemble, path: str | os.PathLike) -> Path:
    """Write ``model`` (or an ensemble, all members in the one file) to ``path`` (``.safetensors``) atomically;
    records the rlrm version and config."""
    path = Path(path)
    version = FORMAT_VERSION if isinstance(model, RewardEnsemble) else _SINGLE_VERSION
    desc = {"format": FORMAT, "format_version": version, "rlrm_version": rlrm.__version__, **model.describe()}
    members = model.members if isinstance(model, RewardEnsemble) else [model]
    tensors = {f"{_prefix(model, k)}{name}": v.detach().cpu().contiguous()
               for k, m in enumerate(members) for name, v in m.state_dict().items()}
    atomic.write_bytes(path, st_save(tensors, metadata={META_KEY: json.dumps(desc)}))
    return path


def read_description(path: str | os.PathLike) -> dict:
    """The JSON description stored in a model file (read from its header; no weights loaded)."""
    return _read_header(Path(path))[0]


def _prefix(model: RewardModel | RewardEnsemble, k: int) -> str:
    return f"m{k}." if isinstance(model, RewardEnsemble) else ""


def load(path: str | os.PathLike) -> RewardModel | RewardEnsemble:
    """Load a model saved by :func:`save` (safetensors + JSON; nothing is executed): a :class:`RewardModel`, or a
    :class:`RewardEnsemble` for an ensemble file.

    The header alone is checked first: member count within ``MAX_MEMBERS``, sizes within
    ``MAX_WIDTH``/``MAX_PARAMETERS`` (all members together), and every tensor's shape as the description implies;
    the members are built without memory (torch's meta device) until then.
    """
    path = Path(path)
    desc, header = _read_header(path)
    member_descs = _member_descriptions(path, desc)
    if sum(_check_sizes(path, d) for d in member_descs) > MAX_PARAMETERS:
        raise ModelFileError(f"{path}: the {len(member_descs)} members ask for more than {MAX_PARAMETERS:,} "
                             "parameters together")
    prefixes = [f"m{k}." for k in range(len(member_descs))] if "ensemble" in desc else [""]
    try:
        with torch.device("meta"):
            members = [RewardModel.from_description(d) for d in member_descs]
        ensemble = RewardEnsemble(members, desc.get("meta") or {}) if "ensemble" in desc else None
    except (ModelFileError, ConfigError) as err:
        raise ModelFileError(f"{path}: {err}") from None
    expected = {p + k: tuple(v.shape) for p, m in zip(prefixes, members) for k, v in m.state_dict().items()}
    _check_shapes(path, header, expected, desc["format_version"])
    tensors = _read_tensors(path)
    for p, m in zip(prefixes, members):
        m.to_empty(device="cpu")
        m.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}, strict=False)
        _finish(m, desc["format_version"])
    return members[0] if ensemble is None else ensemble


def _member_descriptions(path: Path, desc: dict[str, Any]) -> list[dict[str, Any]]:
    """The descriptions of the file's models: the file's own, or an ensemble's members (count checked)."""
    if "ensemble" not in desc:
        return [desc]
    k, members = desc["ensemble"], desc.get("members")
    if not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= MAX_MEMBERS:
        raise ModelFileError(f"{path}: field 'ensemble' is {k!r}; expected a member count from 2 to {MAX_MEMBERS}")
    if not isinstance(members, list) or len(members) != k or not all(isinstance(m, dict) for m in members):
        raise ModelFileError(f"{path}: field 'members': expected {k} member descriptions, found "
                             f"{len(members) if isinstance(members, list) else type(members).__name__}")
    return members


def _finish(model: RewardModel, version: int) -> None:
    """Bounds of files from before them, and eval mode."""
    if version < 2:
        with torch.no_grad():
            for gid in model.groups:
                mean, std = model.normalization(gid)
                low, high = model.clip_bounds(gid)
                low.copy_(mean - CLIP * std)
                high.copy_(mean + CLIP * std)
    model.eval()


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(description, tensor entries) from the file's JSON header, with the format checked."""
    if not path.exists():
        raise ModelFileError(f"{path}: reward model file not found")
    if path.is_dir():
        raise ModelFileError(f"{path}: expected a reward model file (.safetensors), found a directory")
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > min(size - 8, _MAX_HEADER):
            raise ModelFileError(f"{path}: not a readable rlrm reward model (truncated or not safetensors: header of "
                                 f"{n} bytes in a file of {size})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        meta = header.pop("__metadata__", None) if isinstance(header, dict) else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError(f"{path}: not a readable rlrm reward model (truncated or not safetensors: the header "
                             "is not JSON)") from None
    try:
        desc = json.loads(meta[META_KEY])
    except (KeyError, TypeError, json.JSONDecodeError):
        desc = None
    if not isinstance(desc, dict):
        raise ModelFileError(f"{path}: a safetensors file, but not an rlrm reward model (no 'rlrm' metadata)")
    check_format(desc, fmt=FORMAT, version=FORMAT_VERSION, where=str(path), error=ModelFileError)
    return desc, header


def _check_sizes(path: Path, desc: dict[str, Any]) -> int:
    """Refuse a description that asks for absurd sizes, from its numbers alone; returns its parameter count."""
    try:
        config, groups, tasks = desc["config"], desc["groups"], desc["tasks"]
        widths = [int(w) for w in config["encoder"]]
        inputs = list(config.get("inputs") or [])
        dims = {g: _group_dim(v, inputs) for g, v in groups.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ModelFileError(f"{path}: malformed model description: {type(err).__name__}: {err}") from None
    for name, value in [("config.encoder", max(widths, default=0)),
                        *((f"groups.{g}: input features", d) for g, d in dims.items())]:
        if value > MAX_WIDTH:
            raise ModelFileError(f"{path}: field {name!r} asks for a width of {value:,}; at most {MAX_WIDTH:,}")
    params = sum(d * widths[0] + widths[0] for d in dims.values()) if widths else 0
    params += sum(a * b + b for a, b in itertools.pairwise(widths)) + len(tasks) * (widths[-1] + 1 if widths else 0)
    if params > MAX_PARAMETERS:
        raise ModelFileError(f"{path}: the description asks for {params:,} parameters; at most {MAX_PARAMETERS:,}")
    return params


def _group_dim(group: dict[str, Any], inputs: list[str]) -> int:
    obs, action = _space_dim(group["obs_space"]), _space_dim(group["action_space"])
    return sum({"obs": obs, "next_obs": obs, "action": action, "done": 1}.get(i, 0) for i in inputs)


def _space_dim(d: dict[str, Any]) -> int:
    """The feature count of a space description, by arithmetic only (a description may ask for anything)."""
    kind = d["type"]
    if kind in ("Box", "MultiBinary"):
        shape = [int(x) for x in (d["shape"] if kind == "Box" else ([d["n"]] if isinstance(d["n"], int) else d["n"]))]
        dim = math.prod(shape)
    elif kind == "Discrete":
        dim = int(d["n"])
        if dim > MAX_DISCRETE:
            raise ValueError(f"a Discrete space of {dim:,} values; at most {MAX_DISCRETE:,}")
    elif kind == "MultiDiscrete":
        nvec = d["nvec"]
        flat = [int(x) for x in (nvec if isinstance(nvec, list) else [nvec])]
        while flat and isinstance(flat[0], list):  # nested nvec
            flat = [int(x) for row in flat for x in row]
        dim = sum(flat)
    elif kind in ("Dict", "Tuple"):
        parts = d["spaces"].values() if kind == "Dict" else d["spaces"]
        dim = sum(_space_dim(p) for p in parts)
    else:
        raise ValueError(f"unknown space type {kind!r}")
    if dim < 0 or dim > MAX_WIDTH:
        raise ValueError(f"a {kind} space of {dim:,} features; expected 0 to {MAX_WIDTH:,}")
    return dim


def _check_shapes(path: Path, header: dict[str, Any], expected: dict[str, tuple[int, ...]], version: int) -> None:
    """Every tensor the description implies is in the header with its shape, and nothing else."""
    if version < 2:  # files from before the clip bounds
        expected = {k: v for k, v in expected.items() if not k.startswith(("norm_low_", "norm_high_"))}
    missing, extra = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or extra:
        raise ModelFileError(f"{path}: weights do not match the stored architecture (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
    for k, shape in expected.items():
        found = header[k].get("shape") if isinstance(header[k], dict) else None
        if not isinstance(found, list) or tuple(found) != shape:
            raise ModelFileError(f"{path}: tensor {k!r} has shape {tuple(found or ())}, expected {shape}")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise ModelFileError(f"{path}: not a readable rlrm reward model (truncated or not safetensors: "
                             f"{str(err).splitlines()[0][:120]})") from None
