"""Experiment tracking: a tiny ``Tracker`` protocol, a no-op tracker and a W&B tracker.

W&B never blocks or breaks a run. ``mode="auto"``/``"online"`` first sends one real HTTP request to the W&B
host (2 s at most, DNS included) and goes offline with a one-line notice when there is no API key, the host
cannot be reached or does not answer, or it rejects the key. ``wandb.init`` then gets a short timeout, and
any W&B failure (at init or later) is one line on stderr: the run falls back to offline logging, or to no
logging at all, and training carries on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import netrc
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from rlrm.atomic import file_sha256, slug
from rlrm.errors import ConfigError

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT = 2.0  # seconds for the whole probe: DNS, connect and the HTTP answer
INIT_TIMEOUT = 12.0  # seconds wandb.init may take once the probe said the host answers
FINISH_TIMEOUT = 60.0  # seconds run.finish() waits on uploads; what is left stays on disk for `wandb sync`
OFFLINE = "logging offline (upload later with `wandb sync`)"
ARTIFACT_NAME_MAX = 128  # W&B's limit on artifact names


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
    def image(self, name: str, path: str | os.PathLike) -> None: ...
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

    def image(self, name: str, path: str | os.PathLike) -> None:
        pass

    def artifact(self, path: str | os.PathLike, name: str, type: str, role: str = "output") -> None:
        pass

    def finish(self) -> None:
        pass


def _reason(err: BaseException) -> str:
    """An exception as a short phrase for a one-line notice (its type and the first line of its message)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def _base_url() -> str:
    return (os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def _api_key(host: str) -> str | None:
    """The key wandb would use: ``WANDB_API_KEY``, else the password for ``host`` in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        auth = netrc.netrc().authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return None
    return auth[2] if auth else None


def _reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether ``host:port`` accepts a TCP connection (tells "unreachable" apart from "does not answer")."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_probe(url: str, api_key: str, timeout: float) -> str | None:
    """Ask W&B at ``url`` whose key ``api_key`` is (a GraphQL ``viewer`` query, as wandb's own login check).

    :return: None when the host answers over HTTP without rejecting the key (any status but 401/403: a
        404 from a proxy still means the network works, and ``wandb.init`` tells the rest); else why not.
    """
    host = urlparse(url).hostname or url
    token = base64.b64encode(f"api:{api_key}".encode()).decode()
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": "query { viewer { id } }"}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return f"{host} rejected the API key (HTTP {err.code})"
        return None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            return f"{host} did not answer within {PROBE_TIMEOUT:g} s"
        return f"{host} is not reachable ({err.reason})"
    except TimeoutError:
        return f"{host} did not answer within {PROBE_TIMEOUT:g} s"
    except Exception as err:  # a malformed answer (http.client.BadStatusLine, ssl errors, ...): not a W&B server
        return f"{host} did not answer like W&B ({_reason(err)})"


def _probe(url: str, api_key: str) -> str | None:
    """Whether W&B at ``url`` can be used now (None) or why not, within :data:`PROBE_TIMEOUT` in all.

    Runs in a daemon thread: socket timeouts do not bound DNS look-ups or a host that trickles bytes.
    """
    try:
        parsed = urlparse(url)
        host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:  # a port that is not a number, a broken IPv6 address
        return f"WANDB_BASE_URL {url!r} is not an http(s) URL"
    if parsed.scheme not in ("http", "https") or not host:
        return f"WANDB_BASE_URL {url!r} is not an http(s) URL"
    result: list[str | None] = []

    # behind an HTTP(S)_PROXY only the proxy is reachable directly; urllib and wandb both go through it
    proxied = bool(urllib.request.getproxies().get(parsed.scheme)) and not urllib.request.proxy_bypass(host)

    def check() -> None:
        start = time.monotonic()
        try:
            if not proxied and not _reachable(host, port, PROBE_TIMEOUT):
                result.append(f"{host} is not reachable")
                return
            result.append(_http_probe(url, api_key, max(0.1, PROBE_TIMEOUT - (time.monotonic() - start))))
        except Exception as err:  # e.g. a bad proxy setting: never a traceback from this thread
            result.append(f"{host} could not be probed ({_reason(err)})")

    thread = threading.Thread(target=check, name="rlrm-wandb-probe", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT + 0.5)
    return result[0] if result else f"{host} did not answer within {PROBE_TIMEOUT:g} s"


def _resolve(requested: str | None) -> tuple[str, str | None]:
    """:func:`resolve_mode` with the reason for going offline as a bare phrase."""
    requested = (requested or os.environ.get("WANDB_MODE") or "auto").lower()
    if requested == "dryrun":
        requested = "offline"
    if requested not in MODES:
        raise ConfigError(f"W&B mode {requested!r} (WandbOptions.mode or WANDB_MODE): expected one of "
                          f"{', '.join(MODES)}")
    if requested in ("offline", "disabled"):
        return requested, None
    url = _base_url()
    try:
        host = urlparse(url).hostname or "api.wandb.ai"
    except ValueError:  # _probe names the bad URL
        host = "api.wandb.ai"
    api_key = _api_key(host)
    if not api_key:
        return "offline", "no API key found"
    why = _probe(url, api_key)
    return ("offline", why) if why else ("online", None)


def resolve_mode(requested: str | None) -> tuple[str, str | None]:
    """Decide the W&B mode, waiting on the network for :data:`PROBE_TIMEOUT` (+0.5 s grace) at most.

    :return: ``(mode, notice or None)``; the notice is the line to print when ``auto``/``online`` went offline.
    """
    mode, why = _resolve(requested)
    return mode, (f"W&B: {why}; {OFFLINE}" if why else None)


def artifact_name(name: str) -> str:
    """``name`` as a valid W&B artifact name: ASCII letters, digits, ``-_.``, at most 128 characters (a long
    name keeps its start and gets a short hash, so two long names stay distinct)."""
    safe = slug(name) or "artifact"
    if len(safe) <= ARTIFACT_NAME_MAX:
        return safe
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{safe[:ARTIFACT_NAME_MAX - len(digest) - 1]}-{digest}"


class WandbTracker:
    """A :class:`Tracker` writing to one W&B run. A failing W&B call is one line on stderr (the first time)
    and is otherwise ignored: tracking never stops training."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self._warned = False

    @property
    def run_id(self) -> str:
        """The W&B run id (store it to resume the same run later)."""
        return str(self.run.id)

    def _shielded(self, what: str, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as err:  # wandb raises CommError, UsageError, ValueError, ... depending on version
            if not self._warned:
                self._warned = True
                print(f"W&B: {what} failed ({_reason(err)}); carrying on without it", file=sys.stderr)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._shielded("log", lambda: self.run.log(metrics, step=step))

    def step_metric(self, name: str) -> None:
        """Plot every metric against ``name`` (a key logged with each row, such as SB3's ``global_step``)."""

        def define() -> None:
            self.run.define_metric(name)
            self.run.define_metric("*", step_metric=name)

        self._shielded("define_metric", define)

    def summary(self, values: dict[str, Any]) -> None:
        def write() -> None:
            for k, v in values.items():
                self.run.summary[k] = v

        self._shielded("summary", write)

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        def write() -> None:
            import wandb

            columns = list(rows[0])
            self.run.log({name: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})

        if rows:
            self._shielded(f"table {name!r}", write)

    def image(self, name: str, path: str | os.PathLike) -> None:
        """Log an image file (a PNG figure) under ``name``."""
        def write() -> None:
            import wandb

            self.run.log({name: wandb.Image(str(path))})

        self._shielded(f"image {name!r}", write)

    def artifact(self, path: str | os.PathLike, name: str, type: str, role: str = "output") -> None:
        """Attach a file: ``role="output"`` logs it; ``"input"`` declares it used (online) or, offline where
        W&B cannot use artifacts, records its sha256 in the config and logs it so the file travels with the run.
        ``name`` is made a valid artifact name (:func:`artifact_name`)."""
        def attach() -> None:
            import wandb

            file = Path(path)
            digest = file_sha256(file)
            art = wandb.Artifact(artifact_name(name), type=type, metadata={"path": str(file), "sha256": digest})
            art.add_file(str(file))
            if role == "input":
                self.run.config.update({f"input/{type}": str(file), f"input/{type}_sha256": digest},
                                       allow_val_change=True)
                if not self.run.offline:
                    self.run.use_artifact(art)
                    return
            self.run.log_artifact(art)

        self._shielded(f"artifact {Path(path).name}", attach)

    def finish(self) -> None:
        self._shielded("finish", self.run.finish)


def init_wandb(options: WandbOptions | None, *, config: dict[str, Any] | None = None, name: str | None = None,
               job_type: str | None = None, directory: str | os.PathLike | None = None,
               run_id: str | None = None) -> Tracker:
    """A W&B tracker for ``options`` (mode resolved by :func:`resolve_mode`), or a :class:`NullTracker` when
    W&B is off. Never raises on a W&B failure: an online run that cannot start falls back to an offline one,
    and one that cannot start offline either to a :class:`NullTracker`, each with one line on stderr.

    :param run_id: resume this W&B run (a resumed rlrm run keeps logging into the same W&B run).
    """
    if options is None or not options.enabled:
        return NullTracker()
    mode, why = _resolve(options.mode)
    if mode == "disabled":
        return NullTracker()
    os.environ.setdefault("WANDB_SILENT", "true")
    # wandb reports its own errors to the W&B host at exit, waiting up to 2 x 10 s on a host that just failed
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    if directory is not None:
        # absolute: W&B's service process outlives a run and resolves relative paths against its own cwd
        directory = Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
    kwargs = {"project": options.project, "entity": options.entity, "config": config or {}, "name": name,
              "group": options.group, "job_type": job_type, "dir": str(directory) if directory else None,
              "reinit": "create_new", "id": run_id, "resume": "allow" if run_id else None}
    run, err = _start(mode, kwargs)
    if run is None and mode == "online":
        why = f"could not start the run ({err})"
        mode = "offline"
        run, err = _start(mode, kwargs)
    if run is None:
        failed = f"{why}, and an offline run failed too" if why else "an offline run failed"
        print(f"W&B: {failed} ({err}); not logging to W&B", file=sys.stderr)
        return NullTracker()
    if why:
        print(f"W&B: {why}; {OFFLINE}", file=sys.stderr)
    return WandbTracker(run)


def _start(mode: str, kwargs: dict[str, Any]) -> tuple[Any, str | None]:
    """``wandb.init`` in ``mode``: ``(run, None)``, or ``(None, why)`` on any failure."""
    # wandb.init validates WANDB_MODE itself and refuses rlrm's "auto": the mode is decided, so say it there
    saved = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = mode
    try:
        import wandb

        settings = wandb.Settings(init_timeout=INIT_TIMEOUT, finish_timeout=FINISH_TIMEOUT, console="off")
        return wandb.init(mode=mode, settings=settings, **kwargs), None
    except Exception as err:  # CommError, UsageError, AuthenticationError, a failed service process, ...
        return None, _reason(err)
    finally:
        if saved is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = saved
