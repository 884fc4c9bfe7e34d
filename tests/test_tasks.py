"""rlrm.tasks: the shipped catalog, user task files, clear errors for unknown names and bad fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlrm import tasks
from rlrm.errors import TaskError
from rlrm.tasks import Catalog, Task, allow_env_modules, ensure_registered, env_module_of, load_catalog


@pytest.fixture
def allowed_modules(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """A fresh allow-list of env modules for one test (the module-level one is process-wide)."""
    fresh: set[str] = set()
    monkeypatch.setattr(tasks, "_ALLOWED_ENV_MODULES", fresh)
    return fresh


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_shipped_classic_suite(catalog: Catalog) -> None:
    assert catalog.suites["classic"] == ["CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCarContinuous-v0"]
    tasks = catalog.suite("classic")
    assert [t.name for t in tasks] == catalog.suites["classic"]
    assert all(t.env_id == t.name and t.labeler == "env" for t in tasks)


@pytest.mark.parametrize("name", ["LunarLander-v3", "HalfCheetah-v5", "CartPole-v1", "MountainCarContinuous-v0"])
def test_shipped_tasks_are_registered_envs(catalog: Catalog, name: str) -> None:
    assert name in catalog.tasks
    task = catalog.task(name)
    assert task.env_id == name
    ensure_registered(task.env_id)


def test_shipped_task_makes_its_env(catalog: Catalog) -> None:
    env = catalog.task("CartPole-v1").make_env()
    try:
        assert env.spec is not None and env.spec.id == "CartPole-v1"
    finally:
        env.close()


@pytest.mark.parametrize("lookup", [lambda c: c.task("NoSuchEnv-v0"), lambda c: c.suite("no-such-suite"),
                                    lambda c: c.resolve(["CartPole-v1", "NoSuchEnv-v0"]),
                                    lambda c: c.resolve(suites=["nope"])],
                         ids=["task", "suite", "resolve-task", "resolve-suite"])
def test_unknown_names_are_task_errors(catalog: Catalog, lookup) -> None:
    with pytest.raises(TaskError, match=r"NoSuchEnv-v0|no-such-suite|nope"):
        lookup(catalog)


def test_unknown_task_error_lists_known_tasks(catalog: Catalog) -> None:
    with pytest.raises(TaskError, match="CartPole-v1"):
        catalog.task("NoSuchEnv-v0")


@pytest.mark.parametrize("env_id", ["NoSuchEnv-v0", "gymnasium:NoSuchEnv-v0"])
def test_unknown_env_id_is_a_task_error(env_id: str) -> None:
    with pytest.raises(TaskError, match="unknown env id"):
        ensure_registered(env_id)
    with pytest.raises(TaskError):
        Task("custom", env_id).make_env()


def test_an_allowed_module_that_cannot_be_imported_is_a_task_error(allowed_modules: set[str]) -> None:
    allow_env_modules(["no_such_module_xyz"])
    with pytest.raises(TaskError, match="cannot import module 'no_such_module_xyz'"):
        ensure_registered("no_such_module_xyz:Foo-v0")


@pytest.mark.parametrize("name, says", [
    ("Taxi-v3", r"deprecated\. Please use `Taxi-v4`"),  # Gymnasium 1.x: Taxi-v3 was replaced by v4
    ("CartPolee-v1", r"Did you mean: `CartPole`\?"),
    ("Taxi-v9", r"provides versioned environments: \[ `v4` \]"),
])
def test_unknown_task_passes_gymnasium_s_reason_on(catalog: Catalog, name: str, says: str) -> None:
    # defect 12: "unknown task or env id" alone hid why (deprecated, misspelt, no such version)
    with pytest.raises(TaskError, match=says) as err:
        catalog.task(name)
    assert str(err.value).startswith(f"unknown task or env id {name!r}: ") and "known tasks: " in str(err.value)


def test_plain_registered_env_id_works_as_an_oracle_task(catalog: Catalog) -> None:
    assert "FrozenLake-v1" not in catalog.tasks
    task = catalog.task("FrozenLake-v1")
    assert (task.name, task.env_id, task.labeler) == ("FrozenLake-v1", "FrozenLake-v1", "env")
    assert [t.name for t in catalog.resolve(["FrozenLake-v1"], ["classic"])][-1] == "FrozenLake-v1"


def test_module_prefixed_env_id_is_imported_first(allowed_modules: set[str]) -> None:
    allow_env_modules(["gymnasium.envs.classic_control"])
    ensure_registered("gymnasium.envs.classic_control:CartPole-v1")
    assert env_module_of("gymnasium.envs.classic_control:CartPole-v1") == "gymnasium.envs.classic_control"
    assert env_module_of("CartPole-v1") is None


def test_a_module_is_imported_only_when_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                allowed_modules: set[str]) -> None:
    # security: an id read back from a file (a run's config.json) must not import a module of the working folder
    marker = tmp_path / "imported.txt"
    (tmp_path / "pwnmod_tasks.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TaskError, match=r"module 'pwnmod_tasks' .*--env-module pwnmod_tasks"):
        ensure_registered("pwnmod_tasks:CartPole-v1")
    with pytest.raises(TaskError, match="--env-module pwnmod_tasks"):
        Task("t", "pwnmod_tasks:CartPole-v1").make_env()
    with pytest.raises(TaskError, match="--env-module pwnmod_tasks"):  # not hidden behind "unknown task"
        load_catalog().task("pwnmod_tasks:CartPole-v1")
    assert not marker.exists()
    allow_env_modules(["pwnmod_tasks"])
    ensure_registered("pwnmod_tasks:CartPole-v1")
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("name", ["", "../evil", "a b", "mod:Env"])
def test_allowed_module_names_are_module_names(name: str, allowed_modules: set[str]) -> None:
    with pytest.raises(TaskError, match="expected a dotted Python module name"):
        allow_env_modules([name])


def test_resolve_keeps_order_without_duplicates(catalog: Catalog) -> None:
    names = [t.name for t in catalog.resolve(["Pendulum-v1", "LunarLander-v3"], ["classic"])]
    assert names == ["CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCarContinuous-v0", "LunarLander-v3"]


def test_user_task_file_adds_tasks_and_suites(tmp_path: Path) -> None:
    path = _write(tmp_path / "mine.yaml", """
tasks:
  Pendulum-v1/short:
    env_id: Pendulum-v1
    max_episode_steps: 50
    env_kwargs: {g: 9.0}
    description: a shorter pendulum
suites:
  mine: [Pendulum-v1/short, CartPole-v1]
""")
    cat = load_catalog([path])
    task = cat.task("Pendulum-v1/short")
    assert task.env_id == "Pendulum-v1" and task.max_episode_steps == 50 and task.env_kwargs == {"g": 9.0}
    assert [t.name for t in cat.suite("mine")] == ["Pendulum-v1/short", "CartPole-v1"]
    assert "classic" in cat.suites  # shipped files are still there
    env = task.make_env()
    try:
        assert env.spec.max_episode_steps == 50
        assert env.unwrapped.g == 9.0
    finally:
        env.close()


def test_rlrm_tasks_environment_variable_adds_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "env.yaml", "tasks:\n  cp-alias: {env_id: CartPole-v1}\n")
    monkeypatch.setenv("RLRM_TASKS", str(path))
    assert load_catalog().task("cp-alias").env_id == "CartPole-v1"


@pytest.mark.parametrize("text, field", [
    ("tasks:\n  Foo:\n    env_id: CartPole-v1\n    rewrad: 1\n", "rewrad"),
    ("tasks:\n  Foo:\n    env_id: CartPole-v1\n    labeler: human\n", "labeler"),
    ("tasks:\n  Foo:\n    env_id: CartPole-v1\n    env_kwargs: [1, 2]\n", "env_kwargs"),
    ("tasks:\n  Foo: [CartPole-v1]\n", "Foo"),
    ("taskz:\n  Foo: {}\n", "taskz"),
    ("suites:\n  s: CartPole-v1\n", "suite 's'"),
    ("suites:\n  s: []\n", "suite 's'"),
    ("tasks: {Foo: {env_id: [unclosed\n", "YAML"),
])
def test_bad_task_file_names_the_file_and_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = _write(tmp_path / "bad_tasks.yaml", text)
    with pytest.raises(TaskError) as err:
        load_catalog([path])
    msg = str(err.value)
    assert str(path) in msg
    assert field in msg


def test_missing_task_file_is_a_task_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="not found"):
        load_catalog([tmp_path / "nope.yaml"])


def test_task_dict_round_trip() -> None:
    task = Task("Pendulum-v1/x", "Pendulum-v1", {"g": 8.0}, "python:pkg.mod:fn", 100)
    assert Task.from_dict(task.to_dict()) == task
    with pytest.raises(TaskError, match="where-it-came-from"):
        Task.from_dict({"env_id": "CartPole-v1"}, "where-it-came-from")
