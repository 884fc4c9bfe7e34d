"""Experiment tracking: a tiny ``Tracker`` protocol, a no-op tracker and a W&B tracker.

W&B never blocks a default path: ``mode="auto"`` goes offline (with a one-line notice) when there is
no API key or the W&B host cannot be reached within 2 s, before ``wandb.init`` is called.
"""

from __future__ import annotations

import netrc
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from rlrm.atomic import file_sha256, slug
from rlrm.errors import ConfigError

MODES = ("auto", "online", "offline", "disabled")


@dataclass
class WandbOptions:
    """How to log to W&B (``enabled=False``: not at all)."""

    enabled: bool = False
    project: str = "rlrm"
    entity: str | None = None
    mode: str | None = None
    group: str | None = None


class Tracker(Protocol):
    """What training code logs through."""

    run_id: str | None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def summary(self, values: dict[str, Any]) -> None: ...
    def table(self, name: str, rows: list[dict[str, Any]]) -> None: ...
    def artifact(self, path: str | os.PathLike, name: str, type: str, role: str = "output") -> None: ...
    def finish(self) -> None: ...


class NullTracker:
    """Logs nothing."""

    run_id: str | None = None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        pass

    def artifact(self, path: str | os.PathLike, name: str, type: str, role: str = "output") -> None:
        pass

    def finish(self) -> None:
        pass


def _api_key_present(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(requested: str | None) -> tuple[str, str | None]:
    """Decide the W&B mode without waiting on the network; returns ``(mode, notice or None)``."""
    requested = (requested or os.environ.get("WANDB_MODE") or "auto").lower()
    if requested == "dryrun":
        requested = "offline"
    if requested not in MODES:
        raise ConfigError(f"wandb mode {requested!r}: expected one of {', '.join(MODES)}")
    if requested in ("offline", "disabled"):
        return requested, None
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host, port = url.hostname or "api.wandb.ai", url.port or (443 if url.scheme == "https" else 80)
    if not _api_key_present(host):
        return "offline", "W&B: no API key found; logging offline (upload later with `wandb sync`)"
    if not _reachable(host, port):
        return "offline", f"W&B: {host} is not reachable; logging offline (upload later with `wandb sync`)"
    return "online", None


class WandbTracker:
    """A :class:`Tracker` writing to one W&B run."""

    def __init__(self, run: Any) -> None:
        self.run = run

    @property
    def run_id(self) -> str:
        """The W&B run id (store it to resume the same run later)."""
        return str(self.run.id)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self.run.summary[k] = v

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        import wandb

        if not rows:
            return
        columns = list(rows[0])
        self.run.log({name: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})

    def artifact(self, path: str | os.PathLike, name: str, type: str, role: str = "output") -> None:
        """Attach a file: ``role="output"`` logs it; ``"input"`` declares it used (online) or, offline where
        W&B cannot use artifacts, records its sha256 in the config and logs it so the file travels with the run."""
        import wandb

        path = Path(path)
        digest = file_sha256(path)
        art = wandb.Artifact(slug(name), type=type, metadata={"path": str(path), "sha256": digest})
        art.add_file(str(path))
        if role == "input":
            self.run.config.update({f"input/{type}": str(path), f"input/{type}_sha256": digest},
                                   allow_val_change=True)
            if not self.run.offline:
                self.run.use_artifact(art)
                return
        self.run.log_artifact(art)

    def finish(self) -> None:
        self.run.finish()


def init_wandb(options: WandbOptions | None, *, config: dict[str, Any] | None = None, name: str | None = None,
               job_type: str | None = None, directory: str | os.PathLike | None = None,
               run_id: str | None = None) -> Tracker:
    """A W&B tracker for ``options`` (mode resolved by :func:`resolve_mode`), or a :class:`NullTracker` when
    W&B is off.

    :param run_id: resume this W&B run (a resumed rlrm run keeps logging into the same W&B run).
    """
    if options is None or not options.enabled:
        return NullTracker()
    resolved, notice = resolve_mode(options.mode)
    if resolved == "disabled":
        return NullTracker()
    if notice:
        print(notice, file=sys.stderr)
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    if directory is not None:
        # absolute: W&B's service process outlives a run and resolves relative paths against its own cwd
        directory = Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=options.project, entity=options.entity, config=config or {}, name=name,
                     group=options.group, job_type=job_type, dir=str(directory) if directory else None,
                     mode=resolved, reinit="create_new", id=run_id, resume="allow" if run_id else None,
                     settings=wandb.Settings(init_timeout=30, console="off"))
    return WandbTracker(run)
