"""W&B never waits long and never breaks a run (issue #8 item 6): a host that takes connections but never
answers, a rejected API key, a host that answers but is not W&B, a non-ASCII model file name, and W&B calls
failing after init. Every server here is a thread on 127.0.0.1 that stops by itself."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from wandb_records import find_run_dirs, history, records, run_file

from rlrm import tracking
from rlrm.data.dataset import TransitionDataset

REPO = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "2", "--encoder", "16,16", "--no-progress"]
FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters, like a real key
SERVER_LIFETIME = 90.0  # seconds: every server loop ends by itself after this at the latest
# seconds for a whole CLI run: only a hang guard (a busy 2-core machine needs ~30 s; wandb's default init waits 90 s)
HANG_GUARD = 75.0


# --------------------------------------------------------------------------- local servers
@pytest.fixture
def silent_url() -> Iterator[str]:
    """A URL whose host accepts TCP connections and then never writes a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        deadline = time.monotonic() + SERVER_LIFETIME
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])  # keep it open, say nothing
        for conn in held:
            conn.close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)


def _http_server(status: int, body: bytes) -> Iterator[str]:
    """A URL whose host answers every request with ``status`` and ``body``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.timeout = 0.2
    stop = threading.Event()

    def serve() -> None:
        deadline = time.monotonic() + SERVER_LIFETIME
        while not stop.is_set() and time.monotonic() < deadline:
            server.handle_request()
        server.server_close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    stop.set()
    thread.join(5)


@pytest.fixture
def rejecting_url() -> Iterator[str]:
    """A URL whose host answers 401 to everything (a rejected API key)."""
    yield from _http_server(401, b'{"errors": [{"message": "user is not logged in"}]}')


@pytest.fixture
def not_wandb_url() -> Iterator[str]:
    """A URL whose host answers 200 to everything, but not as W&B would."""
    yield from _http_server(200, b'{"errors": [{"message": "this is not W&B"}]}')


@pytest.fixture
def refused_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------- helpers
@pytest.fixture
def data(pendulum_ds: TransitionDataset, workdir: Path) -> Path:
    # Pendulum: varying labels, so training prints no data warning and logs every epoch
    pendulum_ds.save(workdir / "data" / "Pendulum-v1")
    return workdir / "data"


def _train(workdir: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m rlrm.train_reward --wandb`` in a fresh process, as a user runs it; returns it and its seconds."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    full_env.update({"HOME": str(workdir / "home"), "WANDB_SILENT": "true",
                     "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p), **env})
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "rlrm.train_reward", "--data", "data", *args, *FAST, "--wandb"],
                          cwd=workdir, env=full_env, capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - start


def _one_wandb_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("W&B: "), proc.stderr
    return lines[0]


def _epochs_logged(root: Path) -> list[int]:
    runs = find_run_dirs(root)
    assert len(runs) == 1, runs
    return [r["epoch"] for r in history(runs[0]) if "epoch" in r]


# --------------------------------------------------------------------------- the CLI, as a user meets it
def test_host_that_never_answers_trains_offline_with_one_line(data: Path, workdir: Path, silent_url: str) -> None:
    proc, seconds = _train(workdir, "--out", "models/rm.safetensors", WANDB_MODE="auto",
                           WANDB_BASE_URL=silent_url, WANDB_API_KEY=FAKE_KEY)
    line = _one_wandb_line(proc)
    assert "did not answer" in line and "logging offline" in line, line
    assert seconds < HANG_GUARD, f"took {seconds:.0f} s"
    assert (workdir / "models" / "rm.safetensors").exists()
    assert _epochs_logged(workdir / "models") == [1, 2]


def test_rejected_api_key_trains_offline_with_one_line(data: Path, workdir: Path, rejecting_url: str) -> None:
    proc, seconds = _train(workdir, "--out", "models/rm.safetensors", WANDB_MODE="auto",
                           WANDB_BASE_URL=rejecting_url, WANDB_API_KEY=FAKE_KEY)
    line = _one_wandb_line(proc)
    assert "rejected the API key" in line and "401" in line and "logging offline" in line, line
    assert seconds < HANG_GUARD, f"took {seconds:.0f} s"
    assert (workdir / "models" / "rm.safetensors").exists()
    assert _epochs_logged(workdir / "models") == [1, 2]


def test_online_mode_against_a_host_that_is_not_wandb_falls_back_offline(data: Path, workdir: Path,
                                                                         not_wandb_url: str) -> None:
    # the probe gets an HTTP answer, so wandb.init itself runs online and fails: the fallback is what is tested
    proc, seconds = _train(workdir, "--out", "models/rm.safetensors", "--wandb-mode", "online", WANDB_MODE="online",
                           WANDB_BASE_URL=not_wandb_url, WANDB_API_KEY=FAKE_KEY)
    line = _one_wandb_line(proc)
    assert "could not start the run" in line and "logging offline" in line, line
    assert seconds < HANG_GUARD, f"took {seconds:.0f} s"
    assert (workdir / "models" / "rm.safetensors").exists()
    assert _epochs_logged(workdir / "models") == [1, 2]


def test_non_ascii_model_name_logs_a_valid_artifact(data: Path, workdir: Path) -> None:
    proc, _ = _train(workdir, "--out", "models/modèle_ü.safetensors", WANDB_MODE="offline")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert not proc.stderr.strip(), proc.stderr  # nothing went wrong, so nothing to say
    assert (workdir / "models" / "modèle_ü.safetensors").exists()
    (run,) = find_run_dirs(workdir / "models")
    artifacts = [r.artifact for r in records(run_file(run))
                 if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "reward_model"]
    assert [a.name for a in artifacts] == ["reward-model-mod_le__"]
    assert [m.path for m in artifacts[0].manifest.contents] == ["modèle_ü.safetensors"]


def test_init_against_a_silent_host_returns_an_offline_tracker_quickly(workdir: Path, silent_url: str,
                                                                      capsys: pytest.CaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in (("HOME", str(workdir / "home")), ("WANDB_API_KEY", FAKE_KEY), ("WANDB_BASE_URL", silent_url)):
        monkeypatch.setenv(var, value)
    start = time.monotonic()
    tracker = tracking.init_wandb(tracking.WandbOptions(True, project="p", mode="online"), directory=workdir / "out")
    seconds = time.monotonic() - start
    tracker.finish()
    assert isinstance(tracker, tracking.WandbTracker) and tracker.run.offline
    assert capsys.readouterr().err.count("W&B: ") == 1
    assert seconds < 20, f"took {seconds:.0f} s"  # the probe's 2 s and an offline init; before: 45 s, then a crash


# --------------------------------------------------------------------------- resolve_mode
@pytest.fixture
def fake_key(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(workdir / "home"))
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.delenv("WANDB_MODE", raising=False)


@pytest.mark.usefixtures("fake_key")
def test_resolve_mode_silent_host_goes_offline_after_the_probe(silent_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", silent_url)
    start = time.monotonic()
    mode, notice = tracking.resolve_mode("auto")
    seconds = time.monotonic() - start
    assert mode == "offline" and notice and "127.0.0.1 did not answer within 2 s" in notice, notice
    assert seconds < tracking.PROBE_TIMEOUT + 1.5, f"took {seconds:.1f} s"


@pytest.mark.usefixtures("fake_key")
@pytest.mark.parametrize("requested", ["auto", "online"])
def test_resolve_mode_refused_port_goes_offline(refused_url: str, requested: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", refused_url)
    start = time.monotonic()
    mode, notice = tracking.resolve_mode(requested)
    assert time.monotonic() - start < tracking.PROBE_TIMEOUT + 1.5
    assert mode == "offline" and notice and "127.0.0.1 is not reachable" in notice, notice
    assert notice.count("\n") == 0


@pytest.mark.usefixtures("fake_key")
def test_resolve_mode_rejected_key_and_any_other_answer(rejecting_url: str, not_wandb_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", rejecting_url)
    mode, notice = tracking.resolve_mode("auto")
    assert mode == "offline" and notice and "rejected the API key (HTTP 401)" in notice, notice
    monkeypatch.setenv("WANDB_BASE_URL", not_wandb_url + "/")
    assert tracking.resolve_mode("auto") == ("online", None)  # an HTTP answer: wandb.init tells the rest


def test_resolve_mode_accepts_auto_from_the_environment(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    # rlrm's "auto" is no wandb mode: it must never reach wandb.init through WANDB_MODE
    monkeypatch.setenv("HOME", str(workdir / "home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "auto")
    assert tracking.resolve_mode(None)[0] == "offline"
    tracker = tracking.init_wandb(tracking.WandbOptions(True, project="p"), directory=workdir / "out")
    assert isinstance(tracker, tracking.WandbTracker) and tracker.run.offline
    tracker.finish()
    assert os.environ["WANDB_MODE"] == "auto"


# --------------------------------------------------------------------------- after init
def test_tracker_calls_never_raise_after_wandb_fails(workdir: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(workdir / "home"))
    tracker = tracking.init_wandb(tracking.WandbOptions(True, project="p", mode="offline"), directory=workdir / "out")
    assert isinstance(tracker, tracking.WandbTracker) and tracker.run_id
    tracker.run.finish()  # every later call makes wandb raise (a finished run), as a dead service would
    (workdir / "m.bin").write_bytes(b"model")
    tracker.log({"loss": 1.0}, step=1)
    tracker.summary({"r2": 0.5})
    tracker.table("metrics", [{"task": "t", "mse": 0.1}])
    tracker.artifact(workdir / "m.bin", name="model", type="reward_model")
    tracker.artifact(workdir / "missing.bin", name="model", type="reward_model")
    tracker.finish()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("W&B: log failed (UsageError") and "carrying on" in lines[0], err


# --------------------------------------------------------------------------- artifact names
@pytest.mark.parametrize("name", ["reward-model-modèle_ü", "agent-Pendulum-v1/upright-sac", "日本語", "",
                                  "x" * 300, "y" * 129])
def test_artifact_names_are_always_valid(name: str) -> None:
    from wandb.sdk.artifacts._validators import validate_artifact_name

    safe = tracking.artifact_name(name)
    assert safe.isascii() and 0 < len(safe) <= 128
    assert validate_artifact_name(safe) == safe
    assert all(c.isalnum() or c in "-_." for c in safe), safe


def test_long_artifact_names_stay_distinct() -> None:
    a, b = tracking.artifact_name("m" * 200 + "a"), tracking.artifact_name("m" * 200 + "b")
    assert a != b and len(a) == len(b) == 128
    assert tracking.artifact_name("model-1") == "model-1"  # short ASCII names are kept as they are
