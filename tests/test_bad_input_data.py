"""Bad input data, met the way a user meets it (issue #8, data layer): the CLIs in a subprocess exit 2 with one
line naming the file/field and what was expected, no traceback, nothing half-written, earlier results intact.

Covers: label files that are not UTF-8 or carry Excel's byte-order mark (#8.4), NaN/inf in Box observations and
actions (#8.7), JSONL/CSV values of the wrong type (#8.9), a file or foreign folder where a dataset goes (#8.13),
a full disk (#8.14), output modes under the user's umask (#8.17), and the one label check (#7 §1).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from rlrm import atomic
from rlrm.data import labels
from rlrm.data.dataset import MANIFEST, TransitionDataset
from rlrm.errors import DatasetError, LabelError
from rlrm.tasks import load_catalog

REPO = Path(__file__).resolve().parents[1]
COLLECT = "python -m rlrm.collect"
TRAIN = "python -m rlrm.train_reward"
# The reference rollout: the same arguments give the same transitions, so a label file written for it fits.
ROLLOUT = ["--task", "CartPole-v1", "--steps", "60", "--n-envs", "2", "--seed", "0", "--no-progress"]


# --------------------------------------------------------------------------- helpers
def _cli(module: str, *args: str, cwd: Path, preexec: Callable[[], None] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec)


def _error_line(proc: subprocess.CompletedProcess, prog: str) -> str:
    """The one error line of a failed run (exit code 2, no traceback)."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr
    return lines[0]


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every entry under ``folder`` (hidden ones included) with its sha256 and mode: to show nothing changed."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir", p.stat().st_mode)
    return out


def _hidden(folder: Path) -> list[str]:
    """Temporary leftovers (``.x.tmp``, ``.x.old``) anywhere under ``folder``."""
    return [str(p) for p in folder.rglob(".*")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/CartPole-v1`` written by ``python -m rlrm.collect`` with :data:`ROLLOUT` (env labels)."""
    root = tmp_path_factory.mktemp("reference")
    proc = _cli("rlrm.collect", *ROLLOUT, "--out", "data", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "data"


@pytest.fixture
def data(reference: Path, workdir: Path) -> Path:
    """A fresh copy of the reference ``data/`` folder in this test's working folder: an earlier result."""
    shutil.copytree(reference, workdir / "data")
    return workdir / "data"


# --------------------------------------------------------------------------- label files (#8.4, #8.9)
def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _rows(ds: TransitionDataset) -> list[dict]:
    return [{"episode": int(e), "step": int(s), "label": float(v)} for e, s, v in zip(ds.episode, ds.step, ds.label)]


def _csv(rows: list[dict]) -> bytes:
    return ("episode,step,label\n" + "".join(f"{r['episode']},{r['step']},{r['label']}\n" for r in rows)).encode()


def _set(rows: list[dict], i: int, **change: object) -> list[dict]:
    rows = [dict(r) for r in rows]
    rows[i].update(change)
    return rows


# name, file name, content from the reference rows, words the error line must hold. The CLI runs one case of
# each kind in a subprocess; the variants go through the same library check (5 s of imports saved per case).
BAD_LABEL_FILES: list[tuple[str, str, Callable[[list[dict]], bytes], list[str]]] = [
    ("latin-1 csv", "labels.csv", lambda rows: _csv(rows).replace(b"label\n", "label\n# caf\u00e9\n".encode("latin-1")),
     ["labels.csv:2:", "not UTF-8", "0xe9", "expected a UTF-8 file"]),
    ("jsonl episode 0.7", "labels.jsonl", lambda rows: _jsonl(_set(rows, 0, episode=0.7)),
     ["labels.jsonl:1:", "field 'episode'", "expected an integer, got 0.7"]),
    ("jsonl label true", "labels.jsonl", lambda rows: _jsonl(_set(rows, 2, label=True)),
     ["labels.jsonl:3:", "field 'label'", "expected a number, got true"]),
    ("csv episode 0.7", "labels.csv", lambda rows: _csv(_set(rows, 0, episode=0.7)),
     ["labels.csv:2:", "field 'episode'", "expected an integer, got '0.7'"]),
]
BAD_LABEL_FILE_VARIANTS: list[tuple[str, str, Callable[[list[dict]], bytes], list[str]]] = [
    ("utf-16 csv", "labels.csv", lambda rows: _csv(rows).decode().encode("utf-16"),
     ["labels.csv:1:", "UTF-16", "expected a UTF-8 file"]),
    ("latin-1 jsonl", "labels.jsonl", lambda rows: _jsonl(rows[:3]) + '{"note": "\u00e9"}\n'.encode("latin-1"),
     ["labels.jsonl:4:", "not UTF-8", "expected a UTF-8 file"]),
    ("jsonl step 3.0", "labels.jsonl", lambda rows: _jsonl(_set(rows, 3, step=3.0)),
     ["labels.jsonl:4:", "field 'step'", "expected an integer, got 3.0"]),
    ("jsonl episode true", "labels.jsonl", lambda rows: _jsonl(_set(rows, 1, episode=True)),
     ["labels.jsonl:2:", "field 'episode'", "expected an integer, got true"]),
    ("jsonl label string", "labels.jsonl", lambda rows: _jsonl(_set(rows, 2, label="0.5")),
     ["labels.jsonl:3:", "field 'label'", 'expected a number, got "0.5"']),
    ("jsonl label beyond float32", "labels.jsonl", lambda rows: _jsonl(_set(rows, 4, label=1e39)),
     ["labels.jsonl:5:", "field 'label'", "finite number"]),
    ("jsonl step past 2**32", "labels.jsonl",  # 0 * 2**32 + 2**32 used to be the key of episode 1, step 0
     lambda rows: _jsonl([r for r in rows if (r["episode"], r["step"]) != (1, 0)] +
                         [{"episode": 0, "step": 2 ** 32, "label": 1.0}]),
     ["labels.jsonl:", "episode 0 step 4294967296 matches no transition"]),
    ("csv label true", "labels.csv", lambda rows: _csv(_set(rows, 5, label="true")),
     ["labels.csv:7:", "field 'label'", "expected a number, got 'true'"]),
]


@pytest.mark.parametrize("name, file, content, words", BAD_LABEL_FILES, ids=[c[0] for c in BAD_LABEL_FILES])
def test_bad_label_file_is_one_line_and_keeps_the_earlier_dataset(data: Path, workdir: Path, name: str, file: str,
                                                                   content: Callable[[list[dict]], bytes],
                                                                   words: list[str]) -> None:
    rows = _rows(TransitionDataset.load(data / "CartPole-v1"))
    (workdir / file).write_bytes(content(rows))
    before = _snapshot(data)
    line = _error_line(_cli("rlrm.collect", *ROLLOUT, "--labeler", f"file:{file}", "--out", "data", cwd=workdir),
                       COLLECT)
    assert all(w in line for w in words), line
    assert _snapshot(data) == before and not _hidden(data)


@pytest.mark.parametrize("name, file, content, words", BAD_LABEL_FILE_VARIANTS,
                         ids=[c[0] for c in BAD_LABEL_FILE_VARIANTS])
def test_bad_label_file_variants(reference: Path, tmp_path: Path, name: str, file: str,
                                 content: Callable[[list[dict]], bytes], words: list[str]) -> None:
    ds = TransitionDataset.load(reference / "CartPole-v1")
    (tmp_path / file).write_bytes(content(_rows(ds)))
    with pytest.raises(LabelError) as err:
        labels.apply(ds, f"file:{tmp_path / file}")
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value), str(err.value)


def test_csv_with_a_utf8_byte_order_mark_is_accepted(data: Path, workdir: Path) -> None:
    """Excel's "CSV UTF-8" starts with a byte-order mark; the header used to read as '\\ufeffepisode'."""
    rows = _set(_rows(TransitionDataset.load(data / "CartPole-v1")), 0, label=0.25)
    (workdir / "labels.csv").write_bytes(b"\xef\xbb\xbf" + _csv(rows))
    proc = _cli("rlrm.collect", *ROLLOUT, "--labeler", "file:labels.csv", "--out", "labeled", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    got = TransitionDataset.load(workdir / "labeled" / "CartPole-v1")
    np.testing.assert_array_equal(got.label, np.float32([r["label"] for r in rows]))


def test_jsonl_with_a_utf8_byte_order_mark_is_accepted(reference: Path, tmp_path: Path) -> None:
    ds = TransitionDataset.load(reference / "CartPole-v1")
    rows = _set(_rows(ds), 0, label=0.25)
    (tmp_path / "labels.jsonl").write_bytes(b"\xef\xbb\xbf" + _jsonl(rows))
    got = labels.apply(ds, f"file:{tmp_path / 'labels.jsonl'}")
    np.testing.assert_array_equal(got.label, np.float32([r["label"] for r in rows]))


# --------------------------------------------------------------------------- NaN/inf in Box data (#8.7)
def _pendulum(n_episodes: int = 4, length: int = 25, seed: int = 0) -> TransitionDataset:
    """Random Pendulum-v1-shaped transitions (Box observation and Box action), built without an env."""
    catalog = load_catalog()
    task = catalog.task("Pendulum-v1")
    env = task.make_env()
    n = n_episodes * length
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    step = np.tile(np.arange(length), n_episodes)
    ds = TransitionDataset.from_arrays(
        task, env.observation_space, env.action_space, obs=obs, action=rng.uniform(-2, 2, (n, 1)).astype(np.float32),
        next_obs=np.roll(obs, -1, axis=0), terminated=np.zeros(n, bool), truncated=step == length - 1,
        episode=np.repeat(np.arange(n_episodes), length), step=step, env_reward=rng.normal(size=n))
    env.close()
    return ds


def _poke(folder: Path, field: str, value: float) -> None:
    """Put ``value`` in three rows of ``field``; the first is row 30 = episode 1, step 5."""
    arr = np.load(folder / f"{field}.npy")
    arr[[30, 31, 60], 0] = value
    np.save(folder / f"{field}.npy", arr)


NON_FINITE_WORDS = ["3 row(s)", "non-finite", "row 30 (episode 1, step 5)", "must be finite"]


def test_non_finite_observation_is_refused_before_training(workdir: Path) -> None:
    """It used to train a model whose normalization statistics were NaN."""
    _pendulum().save(workdir / "data" / "Pendulum-v1")
    _poke(workdir / "data" / "Pendulum-v1", "obs", np.nan)
    proc = _cli("rlrm.train_reward", "--data", str(workdir / "data"), "--out", "models/rm.safetensors", "--epochs",
                "1", "--encoder", "8", "--no-progress", cwd=workdir)
    line = _error_line(proc, TRAIN)
    for word in (f"{workdir / 'data' / 'Pendulum-v1'}: field 'obs'", *NON_FINITE_WORDS):
        assert word in line, line
    assert not (workdir / "models").exists() or not any((workdir / "models").iterdir())


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("field, value", [("obs", np.inf), ("next_obs", np.nan), ("action", -np.inf)])
def test_non_finite_box_values_are_refused_on_load(tmp_path: Path, field: str, value: float, mmap: bool) -> None:
    folder = _pendulum().save(tmp_path / "Pendulum-v1")
    _poke(folder, field, value)
    with pytest.raises(DatasetError) as err:
        TransitionDataset.load(folder, mmap=mmap)
    for word in (f"{folder}: field '{field}'", *NON_FINITE_WORDS):
        assert word in str(err.value), str(err.value)


def test_non_finite_observation_is_refused_in_memory() -> None:
    ds = _pendulum()
    obs = ds.obs.copy()
    obs[7, 2] = np.nan
    with pytest.raises(DatasetError, match=r"<memory>: field 'obs': 1 row\(s\) with non-finite values .* row 7 "):
        TransitionDataset.from_arrays(ds.task, ds.obs_space, ds.action_space, obs=obs, action=ds.action,
                                      next_obs=ds.next_obs, terminated=ds.terminated, truncated=ds.truncated,
                                      episode=ds.episode, step=ds.step)


# --------------------------------------------------------------------------- what stands where a dataset goes (#8.13)
def _a_file(target: Path) -> None:
    target.write_text("my notes, not a dataset\n")


def _a_foreign_folder(target: Path) -> None:
    target.mkdir()
    (target / "notes.txt").write_text("keep me\n")


def _a_foreign_manifest(target: Path) -> None:
    target.mkdir()
    (target / MANIFEST).write_text('{"format": "someone.else"}\n')


@pytest.mark.parametrize("make, words", [
    (_a_file, ["a file is in the way"]),
    (_a_foreign_folder, ["a folder that is not an rlrm dataset is in the way"]),
], ids=["file", "folder without manifest"])
def test_collect_refuses_to_replace_what_is_not_a_dataset(workdir: Path, make: Callable[[Path], None],
                                                          words: list[str]) -> None:
    """It used to move the file/folder to a hidden ``.CartPole-v1.old`` and delete it."""
    (workdir / "data").mkdir()
    make(workdir / "data" / "CartPole-v1")
    before = _snapshot(workdir / "data")
    line = _error_line(_cli("rlrm.collect", *ROLLOUT, "--out", "data", cwd=workdir), COLLECT)
    assert "error: data/CartPole-v1: " in line and all(w in line for w in words), line
    assert _snapshot(workdir / "data") == before


def test_save_refuses_a_folder_with_another_formats_manifest(reference: Path, tmp_path: Path) -> None:
    _a_foreign_manifest(tmp_path / "ds")
    before = _snapshot(tmp_path)
    with pytest.raises(DatasetError, match=r"/ds: a folder that is not an rlrm dataset is in the way"):
        TransitionDataset.load(reference / "CartPole-v1").save(tmp_path / "ds")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("existing", ["dataset", "empty folder"])
def test_save_still_replaces_a_dataset_or_an_empty_folder(reference: Path, tmp_path: Path, existing: str) -> None:
    if existing == "dataset":
        _pendulum().save(tmp_path / "ds")
    else:
        (tmp_path / "ds").mkdir()
    TransitionDataset.load(reference / "CartPole-v1").save(tmp_path / "ds")
    assert TransitionDataset.load(tmp_path / "ds").task.name == "CartPole-v1" and not _hidden(tmp_path)


# --------------------------------------------------------------------------- a full disk (#8.14)
@contextlib.contextmanager
def _small_tmpfs(folder: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A real, tiny filesystem at ``folder`` (needs root and permission to mount; skips otherwise)."""
    folder.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    options = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, f"rlrm-test-{uuid.uuid4().hex[:8]}",
                           str(folder)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _file_size_limit(limit: int) -> Callable[[], None]:
    """In the child: writes past ``limit`` bytes fail with EFBIG ("File too large") instead of killing it."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("how", ["tmpfs", "file size limit"])
def test_disk_full_names_the_cause_and_the_path_and_keeps_the_earlier_dataset(reference: Path, workdir: Path,
                                                                              how: str) -> None:
    """It used to say "12000 requested and 4064 written", numpy's words for a short write, and nothing else."""
    with contextlib.ExitStack() as stack:
        if how == "tmpfs":
            out = stack.enter_context(_small_tmpfs(workdir / "disk", "200k"))
            preexec, cause = None, "No space left on device"
        else:  # the same error path without root: the kernel refuses the write, as a full disk does
            out = workdir / "disk"
            out.mkdir()
            preexec, cause = _file_size_limit(100_000), "File too large"
        shutil.copytree(reference / "CartPole-v1", out / "CartPole-v1")
        before = _snapshot(out)
        proc = _cli("rlrm.collect", "--task", "CartPole-v1", "--steps", "12000", "--n-envs", "8", "--no-progress",
                    "--out", str(out), cwd=workdir, preexec=preexec)
        line = _error_line(proc, COLLECT)
        assert f"{out / 'CartPole-v1'}: cannot write the dataset: {cause}" in line, line
        assert _snapshot(out) == before and not _hidden(out)
        assert len(TransitionDataset.load(out / "CartPole-v1")) == 60


def test_read_only_target_names_the_cause_and_the_path(reference: Path, tmp_path: Path) -> None:
    """An OSError from numpy/os used to escape the library unnamed (the CLI then printed a hidden temp path)."""
    ds = TransitionDataset.load(reference / "CartPole-v1")
    with _small_tmpfs(tmp_path / "ro", "100k", read_only=True) as out, pytest.raises(DatasetError) as err:
        ds.save(out / "ds")
    assert f"{out / 'ds'}: cannot write the dataset: Read-only file system;" in str(err.value), str(err.value)


# --------------------------------------------------------------------------- modes follow the umask (#8.17)
@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o027])
def test_atomic_outputs_follow_the_umask(tmp_path: Path, mask: int) -> None:
    """Temp files/folders from mkstemp/mkdtemp (0600/0700) used to be renamed into place with their modes."""
    with _umask(mask):
        atomic.write_bytes(tmp_path / "a.bin", b"x")
        atomic.write_json(tmp_path / "a.json", {"a": 1})
        with atomic.temp_path(tmp_path / "b.zip") as tmp:
            tmp.write_bytes(b"zip")
        with atomic.directory(tmp_path / "d") as tmp:
            (tmp / "inner.txt").write_text("x")
    for name in ("a.bin", "a.json", "b.zip", "d/inner.txt"):
        assert _mode(tmp_path / name) == 0o666 & ~mask, name
    assert _mode(tmp_path / "d") == 0o777 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.json", "b.zip", "d"]


@pytest.mark.parametrize("mask", [0o022])
def test_collected_dataset_follows_the_umask(workdir: Path, mask: int) -> None:
    proc = _cli("rlrm.collect", *ROLLOUT, "--out", "data", cwd=workdir, preexec=lambda: os.umask(mask))
    assert proc.returncode == 0, proc.stderr
    folder = workdir / "data" / "CartPole-v1"
    assert _mode(folder) == 0o777 & ~mask
    modes = {p.name: _mode(p) for p in folder.iterdir()}
    assert MANIFEST in modes and set(modes.values()) == {0o666 & ~mask}, modes


# --------------------------------------------------------------------------- one label check (#7 §1)
def _bad_labels(n: int) -> dict[str, object]:
    big = np.zeros(n)
    big[4] = 1e39  # finite as float64, inf as the float32 labels are stored
    return {"booleans": np.zeros(n, bool), "strings": np.array(["0.5"] * n), "beyond float32": big,
            "shape (n, 1)": np.zeros((n, 1))}


BAD_LABEL_ARRAYS = {"booleans": "expected numbers", "strings": "expected numbers", "beyond float32": "non-finite",
                    "shape (n, 1)": "expected shape"}


@pytest.mark.parametrize("kind", list(BAD_LABEL_ARRAYS))
@pytest.mark.parametrize("where", ["with_labels", "label_with", "from_arrays"])
def test_every_label_entry_applies_the_same_check(kind: str, where: str) -> None:
    """Labels are numbers of shape (n,), finite as float32, whichever way they enter a dataset."""
    ds = _pendulum()
    label = _bad_labels(len(ds))[kind]
    if where == "with_labels":
        call, error = (lambda: ds.with_labels(label, "test")), DatasetError
    elif where == "label_with":
        call, error = (lambda: labels.label_with(ds, lambda _: label, "python:test:fn")), LabelError
    else:
        call, error = (lambda: TransitionDataset.from_arrays(
            ds.task, ds.obs_space, ds.action_space, obs=ds.obs, action=ds.action, next_obs=ds.next_obs,
            terminated=ds.terminated, truncated=ds.truncated, episode=ds.episode, step=ds.step, label=label)), \
            DatasetError
    with pytest.raises(error) as err:
        call()
    assert BAD_LABEL_ARRAYS[kind] in str(err.value) and "\n" not in str(err.value), str(err.value)
