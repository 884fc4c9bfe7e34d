"""Shared fixtures: small datasets collected once per session, a scratch working folder, offline W&B."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tiny models: one thread is much faster than several fighting over a busy CPU, and keeps runs reproducible.
torch.set_num_threads(1)

# Before anything imports wandb: never go online from a test, and keep its console quiet.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"

from rlrm.data.dataset import TransitionDataset  # noqa: E402
from rlrm.data.rollout import collect  # noqa: E402
from rlrm.tasks import Catalog, load_catalog  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _sb3_logdir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Agents trained directly in a test (no custom logger) make SB3 create a ``SB3-<date>`` folder in the system's
    temporary directory per ``learn()``; keep those in pytest's own temporary tree."""
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3_logs"))


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    """The shipped task catalog."""
    return load_catalog()


def _collect(catalog: Catalog, name: str, steps: int) -> TransitionDataset:
    return collect(catalog.task(name), steps, n_envs=4, seed=0, progress=False)


@pytest.fixture(scope="session")
def pendulum_ds(catalog: Catalog) -> TransitionDataset:
    """2,000 random Pendulum-v1 transitions with oracle labels (Box obs, Box action). Do not mutate."""
    return _collect(catalog, "Pendulum-v1", 2000)


@pytest.fixture(scope="session")
def pendulum_20k(catalog: Catalog) -> TransitionDataset:
    """20,000 random Pendulum-v1 transitions with oracle labels (100 episodes). Do not mutate."""
    return _collect(catalog, "Pendulum-v1", 20_000)


@pytest.fixture(scope="session")
def cartpole_ds(catalog: Catalog) -> TransitionDataset:
    """2,000 random CartPole-v1 transitions (Box obs, Discrete action, many short episodes). Do not mutate."""
    return _collect(catalog, "CartPole-v1", 2000)


@pytest.fixture(scope="session")
def acrobot_ds(catalog: Catalog) -> TransitionDataset:
    """2,000 random Acrobot-v1 transitions (a third pair of spaces). Do not mutate."""
    return _collect(catalog, "Acrobot-v1", 2000)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside ``tmp_path`` so MUJOCO_LOG.TXT, wandb/ and default output folders never land in the
    repository; returns the folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
