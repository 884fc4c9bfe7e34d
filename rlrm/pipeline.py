"""The learned-reward pipeline behind ``train_agent``: a reward model for the tasks, the plan of runs
(task × seed × reward source), and the rows of the final table. A grid scheduler reuses these."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlrm.agents import default_algo, load_spec
from rlrm.console import fmt, slug
from rlrm.data.collect import collect
from rlrm.errors import ConfigError
from rlrm.model import read_description
from rlrm.model.network import ModelConfig
from rlrm.runs import RunSpec
from rlrm.tasks import Task
from rlrm.tracking import WandbOptions
from rlrm.train import job
from rlrm.train.loop import TrainConfig


def check_heads(model_path: Path, tasks: Sequence[Task]) -> None:
    """A clear error if the model file lacks a head for any of ``tasks`` (reads only its description)."""
    desc = read_description(model_path)
    missing = [t.name for t in tasks if t.name not in desc["tasks"]]
    if missing:
        raise ConfigError(f"{model_path}: the reward model has no head for task(s) {missing}; it has "
                          f"{sorted(desc['tasks'])}")


def build_reward_model(tasks: Sequence[Task], folder: Path, collect_steps: int = 20_000, epochs: int = 30,
                       seed: int = 0, reuse: bool = False, wandb: WandbOptions | None = None,
                       progress: bool = True) -> Path:
    """Collect random-policy transitions (labeled by each task's labeler) and train one model for all tasks.

    :param reuse: keep ``folder/reward_model.safetensors`` if it already has a head for every task.
    :return: the model file.
    """
    out = folder / "reward_model.safetensors"
    if reuse and out.exists():
        try:
            check_heads(out, tasks)
            print(f"reusing reward model {out}")
            return out
        except ConfigError:
            pass
    data_dirs = []
    for i, task in enumerate(tasks):
        ds = collect(task, collect_steps, "random", n_envs=8, seed=seed + 1000 + i, progress=progress)
        data_dirs.append(ds.save(folder / "data" / slug(task.name)))
    job.run(data_dirs, out, TrainConfig(epochs=epochs, seed=seed), ModelConfig(), wandb=wandb, progress=progress)
    return out


@dataclass
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
    reward_kwargs: dict[str, Any] = field(default_factory=dict)


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
                                     reward_kwargs=opts.reward_kwargs if reward == "learned" else {}))
    return specs


def _num(value: Any) -> float:
    """A stored number (``None`` in JSON for NaN) as a float."""
    return float("nan") if value is None else float(value)


def table_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the final table: each learned-reward run with the true-reward baseline's return beside it."""
    base = {(r["task"], r["algo"], r["seed"]): r for r in results if r["reward"] == "true"}
    rows = []
    for r in results:
        b = base.get((r["task"], r["algo"], r["seed"])) if r["reward"] == "learned" else None
        rows.append({"task": r["task"], "algo": r["algo"], "seed": r["seed"], "reward": r["reward"],
                     "timesteps": r["timesteps"],
                     "true return": f"{fmt(_num(r['true_mean']), 1)} ± {fmt(_num(r['true_std']), 1)}",
                     "learned return": fmt(_num(r["learned_mean"]), 1),
                     "baseline true return": f"{fmt(_num(b['true_mean']), 1)} ± {fmt(_num(b['true_std']), 1)}"
                     if b else "-",
                     "train s": f"{float(r.get('train_seconds', float('nan'))):.1f}"})
    return rows
