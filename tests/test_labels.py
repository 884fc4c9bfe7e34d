"""rlrm.data.labels: env, python:module:function and file: (CSV/JSONL) labelers; bad labels are LabelErrors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from rlrm.data import labels
from rlrm.data.dataset import TransitionDataset
from rlrm.data.rollout import collect
from rlrm.errors import LabelError

_module_ids = itertools.count()


@pytest.fixture
def labeler_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a module of labeler functions into ``tmp_path`` (importable for this test) and return its name."""

    def write(source: str) -> str:
        name = f"rlrm_test_labelers_{next(_module_ids)}"
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
        return name

    return write


LABELERS = """
import numpy as np

def upright(ds):
    return np.cos(np.arctan2(ds.next_obs[:, 1], ds.next_obs[:, 0]))

def wrong_shape(ds):
    return np.zeros((len(ds), 2))

def has_nan(ds):
    out = np.zeros(len(ds))
    out[3] = np.nan
    return out

not_callable = 3
"""


def _custom_labels(ds: TransitionDataset) -> np.ndarray:
    return (ds.episode * 1000 + ds.step).astype(np.float32) / 7.0


# --------------------------------------------------------------------------- env and python:
def test_env_labeler_uses_the_env_reward(pendulum_ds: TransitionDataset) -> None:
    relabeled = labels.apply(pendulum_ds.with_labels(np.zeros(len(pendulum_ds)), "zeros"), "env")
    np.testing.assert_array_equal(relabeled.label, pendulum_ds.env_reward)
    assert relabeled.label_source == "env"


def test_python_labeler(pendulum_ds: TransitionDataset, labeler_module) -> None:
    mod = labeler_module(LABELERS)
    ds = labels.apply(pendulum_ds, f"python:{mod}:upright")
    expected = np.cos(np.arctan2(pendulum_ds.next_obs[:, 1], pendulum_ds.next_obs[:, 0]))
    np.testing.assert_allclose(ds.label, expected, rtol=1e-6)
    assert ds.label.dtype == np.float32 and ds.label_source == f"python:{mod}:upright"
    np.testing.assert_array_equal(ds.env_reward, pendulum_ds.env_reward)  # the oracle stays recorded


def test_collect_with_a_python_labeler(catalog, labeler_module) -> None:
    mod = labeler_module(LABELERS)
    ds = collect(catalog.task("Pendulum-v1"), 100, n_envs=2, seed=0, labeler=f"python:{mod}:upright", progress=False)
    assert ds.label_source == f"python:{mod}:upright"
    assert np.all(np.abs(ds.label) <= 1.0) and not np.allclose(ds.label, ds.env_reward)


def test_label_with_a_callable(pendulum_ds: TransitionDataset) -> None:
    ds = labels.label_with(pendulum_ds, _custom_labels)
    np.testing.assert_array_equal(ds.label, _custom_labels(pendulum_ds))
    assert "_custom_labels" in ds.label_source


@pytest.mark.parametrize("spec, words", [
    ("python:{mod}:wrong_shape", ["wrong_shape", "shape"]),
    ("python:{mod}:has_nan", ["has_nan", "non-finite", "step 3"]),
    ("python:{mod}:missing_fn", ["missing_fn"]),
    ("python:{mod}:not_callable", ["not_callable"]),
    ("python:rlrm_no_such_module_xyz:fn", ["rlrm_no_such_module_xyz"]),
    ("python:no_colon", ["python:package.module:function"]),
    ("human", ["human"]),
])
def test_bad_python_labelers_are_label_errors(pendulum_ds: TransitionDataset, labeler_module, spec: str,
                                              words: list[str]) -> None:
    mod = labeler_module(LABELERS)
    with pytest.raises(LabelError) as err:
        labels.apply(pendulum_ds, spec.format(mod=mod))
    assert all(w in str(err.value) for w in words), str(err.value)


# --------------------------------------------------------------------------- file: CSV and JSONL
@pytest.fixture(params=["csv", "jsonl"])
def label_file(request: pytest.FixtureRequest, cartpole_ds: TransitionDataset, tmp_path: Path) -> Path:
    path = tmp_path / f"labels.{request.param}"
    labels.write_label_file(path, cartpole_ds, _custom_labels(cartpole_ds))
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _row(path: Path, episode: int, step: int, label: str | float) -> str:
    if path.suffix == ".csv":
        return f"{episode},{step},{label}\n"
    return json.dumps({"episode": episode, "step": step, "label": label}) + "\n"


def _first_data_line(path: Path) -> int:
    """1-based line number of the first data row."""
    return 2 if path.suffix == ".csv" else 1


def _error(ds: TransitionDataset, path: Path) -> str:
    with pytest.raises(LabelError) as err:
        labels.apply(ds, f"file:{path}")
    return str(err.value)


def test_file_labels_round_trip(cartpole_ds: TransitionDataset, label_file: Path) -> None:
    ds = labels.apply(cartpole_ds, f"file:{label_file}")
    np.testing.assert_array_equal(ds.label, _custom_labels(cartpole_ds))
    assert ds.label_source == f"file:{label_file}"


def test_file_rows_in_any_order(cartpole_ds: TransitionDataset, label_file: Path) -> None:
    lines = _lines(label_file)
    head, rows = (lines[:1], lines[1:]) if label_file.suffix == ".csv" else ([], lines)
    label_file.write_text("".join(head + rows[::-1] + ["\n"]))  # reversed, plus a blank line at the end
    np.testing.assert_array_equal(labels.apply(cartpole_ds, f"file:{label_file}").label, _custom_labels(cartpole_ds))


def test_write_label_file_defaults_to_the_current_labels(cartpole_ds: TransitionDataset, tmp_path: Path) -> None:
    path = tmp_path / "template.csv"
    labels.write_label_file(path, cartpole_ds)
    assert _lines(path)[0] == "episode,step,label\n"
    assert len(_lines(path)) == len(cartpole_ds) + 1
    np.testing.assert_array_equal(labels.read_label_file(path, cartpole_ds), cartpole_ds.label)


def test_extra_row_names_file_and_line(cartpole_ds: TransitionDataset, label_file: Path) -> None:
    n_lines = len(_lines(label_file))
    with label_file.open("a") as f:
        f.write(_row(label_file, 99_999, 0, 1.0))
    msg = _error(cartpole_ds, label_file)
    assert f"{label_file}:{n_lines + 1}:" in msg and "99999" in msg and "matches no transition" in msg


def test_row_with_a_step_past_the_episode_end(cartpole_ds: TransitionDataset, label_file: Path) -> None:
    ep = int(cartpole_ds.episode[0])
    last = int(cartpole_ds.step[cartpole_ds.episode == ep].max())
    lines = _lines(label_file)
    lines.insert(_first_data_line(label_file) - 1, _row(label_file, ep, last + 1, 0.5))  # the first data line
    label_file.write_text("".join(lines))
    msg = _error(cartpole_ds, label_file)
    assert f"{label_file}:{_first_data_line(label_file)}:" in msg


def test_a_transition_without_a_row_is_dropped(cartpole_ds: TransitionDataset, label_file: Path) -> None:
    lines = _lines(label_file)
    i = _first_data_line(label_file) - 1 + 10  # the 11th transition
    del lines[i]
    label_file.write_text("".join(lines))
    ds = labels.apply(cartpole_ds, f"file:{label_file}")
    keep = np.arange(len(cartpole_ds)) != 10
    assert len(ds) == len(cartpole_ds) - 1
    np.testing.assert_array_equal(ds.label, _custom_labels(cartpole_ds)[keep])
    np.testing.assert_array_equal(ds.episode, cartpole_ds.episode[keep])
    np.testing.assert_array_equal(ds.step, cartpole_ds.step[keep])
    np.testing.assert_array_equal(ds.obs, cartpole_ds.obs[keep])


def test_a_file_with_no_rows_is_an_error(cartpole_ds: TransitionDataset, label_file: Path) -> None:
    label_file.write_text("".join(_lines(label_file)[:_first_data_line(label_file) - 1]))  # header only
    msg = _error(cartpole_ds, label_file)
    assert str(label_file) in msg and "no row labels a transition" in msg and "\n" not in msg


def test_duplicate_row_is_an_error(cartpole_ds: TransitionDataset, label_file: Path) -> None:
    lines = _lines(label_file)
    first = _first_data_line(label_file)
    lines.insert(first + 5, lines[first - 1])
    label_file.write_text("".join(lines))
    msg = _error(cartpole_ds, label_file)
    assert f"{label_file}:{first + 6}:" in msg and "duplicate" in msg


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_label_in_a_file_is_an_error(cartpole_ds: TransitionDataset, label_file: Path, bad: str) -> None:
    lines = _lines(label_file)
    line_no = _first_data_line(label_file) + 3
    ep, st = int(cartpole_ds.episode[3]), int(cartpole_ds.step[3])
    lines[line_no - 1] = _row(label_file, ep, st, float(bad)) if label_file.suffix == ".jsonl" else \
        _row(label_file, ep, st, bad)
    label_file.write_text("".join(lines))
    msg = _error(cartpole_ds, label_file)
    assert f"{label_file}:{line_no}:" in msg and "finite" in msg


def test_unparseable_row_names_the_line(cartpole_ds: TransitionDataset, label_file: Path) -> None:
    lines = _lines(label_file)
    line_no = _first_data_line(label_file) + 1
    lines[line_no - 1] = "zero,one,two\n" if label_file.suffix == ".csv" else '{"episode": 0, "step": \n'
    label_file.write_text("".join(lines))
    assert f"{label_file}:{line_no}:" in _error(cartpole_ds, label_file)


def test_csv_without_the_header(cartpole_ds: TransitionDataset, tmp_path: Path) -> None:
    path = tmp_path / "noheader.csv"
    path.write_text("0,0,1.0\n0,1,1.0\n")
    msg = _error(cartpole_ds, path)
    assert f"{path}:1:" in msg and "episode,step,label" in msg


def test_missing_file_and_unknown_suffix(cartpole_ds: TransitionDataset, tmp_path: Path) -> None:
    assert "not found" in _error(cartpole_ds, tmp_path / "nope.csv")
    (tmp_path / "labels.txt").write_text("episode,step,label\n")
    assert ".txt" in _error(cartpole_ds, tmp_path / "labels.txt")


def test_collect_with_a_label_file_of_another_dataset_fails(catalog, cartpole_ds: TransitionDataset,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "cp.csv"
    labels.write_label_file(path, cartpole_ds)
    # fewer transitions than the file labels: rows of its later episodes match none (the other way round, a file
    # labeling only some transitions, keeps those: test_a_transition_without_a_row_is_dropped)
    with pytest.raises(LabelError, match=r"matches no transition"):
        collect(catalog.task("CartPole-v1"), 600, n_envs=4, seed=0, labeler=f"file:{path}", progress=False)
