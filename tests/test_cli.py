"""rlrm.cli: library messages shown in a CLI's terms, numbers formatted for the end-of-run tables."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlrm.cli import fmt, in_cli_terms
from rlrm.collect import entry as collect_entry

FLAGS = {"data": "--data", "output_dir": "--output-dir"}


def test_a_leading_parameter_name_becomes_its_flag() -> None:
    assert in_cli_terms("output_dir runs: not writable", FLAGS) == "--output-dir runs: not writable"
    assert in_cli_terms("data: no dataset found", FLAGS) == "--data: no dataset found"


def test_paths_and_other_words_are_left_alone() -> None:
    assert in_cli_terms("data/CartPole-v1: field 'obs'", FLAGS) == "data/CartPole-v1: field 'obs'"
    assert in_cli_terms("datasets differ", FLAGS) == "datasets differ"
    assert in_cli_terms("the output_dir is full", FLAGS) == "the output_dir is full"


def test_fmt() -> None:
    assert fmt(None) == "-" and fmt(math.nan) == "-" and fmt(True) == "yes"
    assert fmt(12345) == "12,345" and fmt(1.23456, 2) == "1.23" and fmt(1.5e6, 2) == "1.5e+06"


def test_collect_names_its_own_flag_for_a_missing_policy_file(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert collect_entry(["--task", "CartPole-v1", "--policy", str(tmp_path / "nope.zip"), "--steps", "10",
                  "--out", str(tmp_path / "data"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"python -m rlrm.collect: error: --policy {tmp_path / 'nope.zip'}: file not found"
    assert not (tmp_path / "data").exists()
