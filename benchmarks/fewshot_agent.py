"""Agents on a new task learned from few labels (issue #9): does a few-shot head on a pretrained model train an
agent as good as the task's true reward does?

1. Pretrain one reward model on the ``cartpole_position`` training tasks (``rlrm:cartpole_wander`` data: random
   CartPole actions only cover |x| < 0.5).
2. Add the held-out task (default ``CartPole-v1/x0.75``) from ``--labels`` random transitions of wander data with
   ``extend_model(..., "auto")``; report its r2 / EPIC on fresh held-out wander data.
3. Train PPO (``agents/ppo.yaml``'s CartPole-v1 entry, which a task ``CartPole-v1/x0.75`` finds through its env id)
   on that learned reward and on the task's true reward, same seeds and budget, through ``rlrm.rl.runs.train_run``.
4. Evaluate every agent, and a uniformly random policy, on the task's own reward (the true return).

Normalized score = (mean learned-reward return - random) / (mean true-reward return - random), means over seeds;
the per-seed (paired) scores are listed too. Target: >= 0.9.

    python benchmarks/fewshot_agent.py                     # 3 seeds x 100k steps (~10 min on 2 cores)
    python benchmarks/fewshot_agent.py --quick             # 1 seed x 20k steps, small pretraining

Raw results go to ``benchmarks/fewshot_agent/`` (results.json, runs.csv); run folders and data to ``--work-dir``.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlrm import atomic
from rlrm import model as rm
from rlrm.data.behaviour import builtin_policy
from rlrm.data.dataset import TransitionDataset
from rlrm.data.rollout import collect
from rlrm.rl.evaluation import random_returns
from rlrm.rl.folder import RunSpec
from rlrm.rl.hyperparams import load_spec
from rlrm.rl.runs import train_run
from rlrm.tasks import Task, load_catalog
from rlrm.train import TrainConfig, evaluate_model, train_reward_model
from rlrm.train.fewshot import extend_model
from rlrm.train.heldout import predict_dataset

POLICY = "rlrm:cartpole_wander"
HERE = Path(__file__).resolve().parent


@dataclass
class Settings:
    """What one benchmark run does (see ``--help``)."""

    task: str = "CartPole-v1/x0.75"
    suite: str = "cartpole_position"
    pretrain_steps: int = 20_000
    pretrain_epochs: int = 50
    labels: int = 256
    seeds: tuple[int, ...] = (0, 1, 2)
    timesteps: int = 100_000
    eval_episodes: int = 20
    random_episodes: int = 200


def wander_data(task: Task, steps: int, seed: int) -> TransitionDataset:
    """``steps`` transitions of ``task`` driven by the wandering CartPole controller, labeled by the task."""
    policy = builtin_policy(POLICY, task, 8, seed)
    return collect(task, steps, policy, n_envs=8, seed=seed, progress=False, policy_name=POLICY)


def few_labels(task: Task, n: int, seed: int, pool: int = 10_000) -> TransitionDataset:
    """``n`` transitions drawn at random from ``pool`` wander transitions of ``task`` (their labels are all we use)."""
    ds = wander_data(task, pool, seed)
    rows = np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False))
    return ds.subset(rows)


def pretrain(tasks: list[Task], s: Settings) -> tuple[rm.RewardModel, dict[str, Any]]:
    """One model on the training tasks; returns it and its per-task validation metrics."""
    data = [wander_data(t, s.pretrain_steps, 100 + i) for i, t in enumerate(tasks)]
    result = train_reward_model(data, TrainConfig(epochs=s.pretrain_epochs, seed=0), progress=False)
    return result.model, result.metrics


def add_task(base: rm.RewardModel, task: Task, s: Settings) -> tuple[rm.RewardModel, dict[str, Any]]:
    """The held-out task added from ``s.labels`` labels (automatic mode); returns the model and what it reports."""
    few = few_labels(task, s.labels, seed=7)
    result = extend_model(base, [few], TrainConfig(seed=0), "auto", progress=False)
    heldout = wander_data(task, 10_000, seed=8)
    pred = predict_dataset(result.model, heldout)
    report = {"adaptation": result.model.meta["adaptation"], "cv_metrics": result.metrics[task.name],
              "heldout": evaluate_model(result.model, [heldout])[task.name],
              "learned_vs_true_max_abs_diff": float(np.max(np.abs(pred - heldout.label)))}
    return result.model, report


def random_return(task: Task, episodes: int, seed: int) -> dict[str, float]:
    """True return of uniformly random actions on ``task``, over ``episodes`` episodes."""
    returns = random_returns(task, episodes, seed)
    return {"mean": float(np.mean(returns)), "std": float(np.std(returns)), "episodes": episodes}


def train_agents(task: Task, model_path: Path, out: Path, s: Settings) -> list[dict[str, Any]]:
    """PPO on the learned and on the true reward, every seed; each run's result row."""
    agent = load_spec("ppo", task, {"n_timesteps": s.timesteps})
    rows = []
    for seed in s.seeds:
        for reward in ("learned", "true"):
            spec = RunSpec(task, agent, seed, reward, str(model_path) if reward == "learned" else None,
                           eval_freq=0, eval_episodes=s.eval_episodes)
            t0 = time.perf_counter()
            row = train_run(spec, out, progress=False)
            row["wall_seconds"] = round(time.perf_counter() - t0, 1)
            print(f"  seed {seed} {reward:7s}: true return {row['true_mean']:.1f} ± {row['true_std']:.1f} "
                  f"(learned {row['learned_mean']:.1f}) in {row['wall_seconds']} s", flush=True)
            rows.append(row)
    return rows


def scores(rows: list[dict[str, Any]], random: float) -> dict[str, Any]:
    """Normalized score of the mean returns, and per seed (learned and true runs of the same seed paired)."""
    by = {(r["seed"], r["reward"]): r["true_mean"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    learned = float(np.mean([by[(s, "learned")] for s in seeds]))
    true = float(np.mean([by[(s, "true")] for s in seeds]))
    return {"learned_mean": learned, "true_mean": true, "random_mean": random,
            "normalized": (learned - random) / (true - random),
            "per_seed": {s: (by[(s, "learned")] - random) / (by[(s, "true")] - random) for s in seeds}}


def machine() -> dict[str, str]:
    model_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout
    return {"cpu": model_name, "commit": commit.strip(), "python": platform.python_version(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_results(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "results.json", report)
    fields = ["task", "seed", "reward", "timesteps", "true_mean", "true_std", "learned_mean", "train_seconds",
              "wall_seconds"]
    lines = [",".join(fields)]
    for r in report["runs"]:
        lines.append(",".join(str(r[f]) for f in fields))
    atomic.write_bytes(out / "runs.csv", ("\n".join(lines) + "\n").encode())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default=Settings.task)
    p.add_argument("--labels", type=int, default=Settings.labels)
    p.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds))
    p.add_argument("--timesteps", type=int, default=Settings.timesteps)
    p.add_argument("--pretrain-steps", type=int, default=Settings.pretrain_steps)
    p.add_argument("--quick", action="store_true", help="1 seed, 20k PPO steps, 5k pretraining transitions per task")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/rlrm_fewshot_agent"))
    p.add_argument("--out", type=Path, default=HERE / "fewshot_agent")
    args = p.parse_args()
    torch.set_num_threads(1)
    s = Settings(task=args.task, labels=args.labels, seeds=tuple(args.seeds), timesteps=args.timesteps,
                 pretrain_steps=args.pretrain_steps)
    if args.quick:
        s = Settings(task=args.task, labels=args.labels, seeds=(0,), timesteps=20_000, pretrain_steps=5_000,
                     pretrain_epochs=10)
    catalog = load_catalog()
    task, train_tasks = catalog.task(s.task), catalog.suite(s.suite)
    start = time.perf_counter()
    times: dict[str, float] = {}

    base, pre_metrics = pretrain(train_tasks, s)
    times["pretrain_s"] = round(time.perf_counter() - start, 1)
    print(f"pretrained on {len(train_tasks)} tasks in {times['pretrain_s']} s: val r2 "
          f"{min(m['r2'] for m in pre_metrics.values()):.3f}..{max(m['r2'] for m in pre_metrics.values()):.3f}")

    t0 = time.perf_counter()
    model, fit = add_task(base, task, s)
    times["add_task_s"] = round(time.perf_counter() - t0, 1)
    h = fit["heldout"]
    print(f"added {task.name} from {s.labels} labels ({fit['adaptation']['mode']}) in {times['add_task_s']} s: "
          f"held-out r2 {h['r2']:.3f}, EPIC {h['epic']:.3f}")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    model_path = rm.save(model, args.work_dir / "reward_model.safetensors")

    random = random_return(task, s.random_episodes, seed=12345)
    print(f"random policy: true return {random['mean']:.1f} ± {random['std']:.1f}")
    t0 = time.perf_counter()
    runs = train_agents(task, model_path, args.work_dir / "runs", s)
    times["agents_s"] = round(time.perf_counter() - t0, 1)
    times["total_s"] = round(time.perf_counter() - start, 1)
    score = scores(runs, random["mean"])
    print(f"learned {score['learned_mean']:.1f}, true {score['true_mean']:.1f}, random {random['mean']:.1f}: "
          f"normalized {score['normalized']:.3f} (target >= 0.9); per seed {score['per_seed']}; "
          f"total {times['total_s']} s")
    report = {"settings": s.__dict__, "machine": machine(), "times": times, "pretrain_val_metrics": pre_metrics,
              "fewshot": fit, "random": random, "score": score, "runs": runs}
    write_results(args.out, report)


if __name__ == "__main__":
    main()
