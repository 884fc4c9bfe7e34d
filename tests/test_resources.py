"""The shipped data folders (envs/, agents/) are found in a checkout and inside an installed wheel."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlrm import resources

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_envs_and_agents_inside_the_package() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert include == {"envs": "rlrm/_data/envs", "agents": "rlrm/_data/agents"}


def test_data_dir_prefers_the_packaged_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "site-packages" / "rlrm"
    (pkg / "_data" / "agents").mkdir(parents=True)
    monkeypatch.setattr(resources, "_PKG", pkg)
    assert resources.data_dir("agents") == pkg / "_data" / "agents"  # as installed from a wheel
    with pytest.raises(FileNotFoundError, match="envs"):
        resources.data_dir("envs")


def test_data_dir_in_a_checkout_is_the_top_level_folder() -> None:
    assert resources.data_dir("envs") == ROOT / "envs"
    assert (resources.data_dir("agents") / "ppo.yaml").exists()
