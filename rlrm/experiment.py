"""The experiment behind one ``train_agent`` command: a reward model for its tasks, the plan of runs
(task × seed × reward source), the ``results.json`` that the runs of an output folder share, and the rows of the
final table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlrm import atomic
from rlrm import model as rm
from rlrm.atomic import slug
from rlrm.data.rollout import collect
from rlrm.errors import ConfigError
from rlrm.model import read_description
from rlrm.model.network import ModelConfig
from rlrm.rl.folder import FeedbackSpec, RunSpec, exclusive
from rlrm.rl.hyperparams import default_algo, load_spec
from rlrm.tasks import Task
from rlrm.tracking import WandbOptions
from rlrm.train.job import train_job
from rlrm.train.loop import TrainConfig, TrainResult
from rlrm.wrappers import RewardShaping


def check_heads(model_path: Path, tasks: Sequence[Task]) -> None:
    """A clear error if the model file lacks a head for any of ``tasks`` (reads only its description)."""
    desc = read_description(model_path)
    missing = [t.name for t in tasks if t.name not in desc["tasks"]]
    if missing:
        raise ConfigError(f"{model_path}: the reward model has no head for task(s) {missing}; it has "
                          f"{sorted(desc['tasks'])}")


def check_reward_model(model_path: Path, tasks: Sequence[Task]) -> None:
    """Load the model file whole and check its heads, before anything is created (a clear error if not)."""
    check_heads(model_path, tasks)
    model = rm.load(model_path)
    for task in tasks:
        model.reward_fn(task.name)


@dataclass(frozen=True)
class RewardModelBuild:
    """A reward model made for an experiment: its file, and the training result (``None`` when reused)."""

    path: Path
    result: TrainResult | None = None


def build_reward_model(tasks: Sequence[Task], folder: Path, *, collect_steps: int = 20_000, epochs: int = 30,
                       seed: int = 0, reuse: bool = False, wandb: WandbOptions | None = None,
                       progress: bool = True) -> RewardModelBuild:
    """Collect random-policy transitions (labeled by each task's labeler) and train one model for all tasks.

    :param reuse: keep ``folder/reward_model.safetensors`` if it already has a head for every task.
    """
    out = folder / "reward_model.safetensors"
    if reuse and out.exists():
        try:
            check_heads(out, tasks)
            return RewardModelBuild(out)
        except ConfigError:
            pass
    data_dirs = []
    for i, task in enumerate(tasks):
        ds = collect(task, collect_steps, n_envs=8, seed=seed + 1000 + i, progress=progress)
        data_dirs.append(ds.save(folder / "data" / slug(task.name)))
    result = train_job(data_dirs, out, TrainConfig(epochs=epochs, seed=seed), ModelConfig(), wandb=wandb,
                       progress=progress)
    return RewardModelBuild(out, result)


@dataclass(kw_only=True)
class PlanOptions:
    """How each run of a plan is set up (see ``python -m rlrm.train_agent --help``)."""

    algo: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    rewards: list[str] = field(default_factory=lambda: ["learned"])
    overrides: dict[str, Any] = field(default_factory=dict)
    hyperparams_dir: Path | None = None
    eval_freq: int | None = None
    eval_episodes: int = 10
    checkpoint_freq: int = 0
    shaping: RewardShaping = field(default_factory=RewardShaping)
    feedback: FeedbackSpec | None = None  # an online feedback loop in each learned-reward run


def plan_runs(tasks: Sequence[Task], reward_model: Path | None, opts: PlanOptions) -> list[RunSpec]:
    """The runs: task × seed × reward source, each a schedulable, resumable unit."""
    specs = []
    for task in tasks:
        agent = load_spec(opts.algo or default_algo(task), task, opts.overrides, opts.hyperparams_dir)
        eval_freq = opts.eval_freq if opts.eval_freq is not None else max(agent.n_timesteps // 5, 1)
        for seed in opts.seeds:
            for reward in opts.rewards:
                specs.append(RunSpec(task, agent, seed, reward, str(reward_model) if reward_model else None,
                                     eval_freq=eval_freq, eval_episodes=opts.eval_episodes,
                                     checkpoint_freq=opts.checkpoint_freq,
                                     shaping=opts.shaping if reward == "learned" else RewardShaping(),
                                     feedback=opts.feedback if reward == "learned" else None))
    return specs


RESULTS = "results.json"


def read_results(output_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``output_dir/results.json`` (``[]`` if there is none yet)."""
    path = output_dir / RESULTS
    try:
        rows = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # nothing there yet (a bad output_dir is met when it is made)
        return []
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); fix or delete it (each run folder keeps its own "
                          "result.json)") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"{path}: expected a JSON list of result rows (objects)")
    return rows


def record_results(output_dir: Path, results: Sequence[dict[str, Any]]) -> None:
    """Merge run results into ``output_dir/results.json``: one row per run (by its key: task, agent, seed,
    reward model), a newer result replacing the row of the same run in place.

    Several commands may share an output folder: the read-merge-write holds a lock, so none loses another's rows.
    """
    path = output_dir / RESULTS
    with exclusive(output_dir / f".{RESULTS}.lock"):
        rows = read_results(output_dir)
        index = {_run_of(r): i for i, r in enumerate(rows)}
        for r in results:
            if _run_of(r) in index:
                rows[index[_run_of(r)]] = r
            else:
                index[_run_of(r)] = len(rows)
                rows.append(r)
        try:
            atomic.write_json(path, rows)
        except OSError as err:
            raise ConfigError(f"{path}: cannot write ({err.strerror or type(err).__name__})") from None


def _run_of(row: dict[str, Any]) -> str:
    return str(row.get("key") or row.get("run_dir"))


def table_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the final table: each run's numbers, a learned-reward run with its true-reward baseline beside it."""
    base = {(r["task"], r["algo"], r["seed"]): r for r in results if r["reward"] == "true"}
    rows = []
    for r in results:
        b = base.get((r["task"], r["algo"], r["seed"])) if r["reward"] == "learned" else None
        rows.append({"task": r["task"], "algo": r["algo"], "seed": r["seed"], "reward": r["reward"],
                     "timesteps": r["timesteps"], "true_mean": _num(r["true_mean"]), "true_std": _num(r["true_std"]),
                     "learned_mean": _num(r["learned_mean"]),
                     "baseline_mean": _num(b["true_mean"]) if b else None,
                     "baseline_std": _num(b["true_std"]) if b else None,
                     "train_seconds": _num(r.get("train_seconds")),
                     "queries": (r.get("feedback") or {}).get("queries")})
    return rows


def _num(value: Any) -> float:
    """A stored number (``None`` in JSON for NaN) as a float."""
    return float("nan") if value is None else float(value)


def constant_heads(model_path: Path) -> set[str]:
    """Tasks whose learned reward is a constant (their labels were constant in the data, like CartPole's +1): a run
    on one tests the pipeline, not reward learning."""
    desc = read_description(model_path)
    return {name for name, head in desc["tasks"].items() if float(head.get("label_std", 1.0)) == 0.0}
