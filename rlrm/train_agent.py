"""``python -m rlrm.train_agent``: train SB3 agents on a learned reward and evaluate them on the true one.

With no arguments it runs the built-in default end to end: collect random transitions for the
``default`` suite, train one multi-task reward model, train an agent per env on the learned reward and
one on the true reward (the baseline), evaluate all on the true reward, print a table.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlrm import atomic, cli
from rlrm.agents import check_spec, default_algo, load_spec, parse_params
from rlrm.console import fmt, print_table, slug
from rlrm.data.collect import collect
from rlrm.errors import ConfigError
from rlrm.model import read_description
from rlrm.model.network import ModelConfig
from rlrm.runs import RunInterrupted, RunSpec
from rlrm.runs import run as run_one
from rlrm.tasks import Task, load_catalog
from rlrm.train import job
from rlrm.train.loop import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlrm.train_agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to train")
    g.add_argument("--task", "--env", dest="tasks", action="append", default=[],
                   help="task name or env id (repeatable)")
    g.add_argument("--suite", action="append", default=[], help="suite from envs/*.yaml (repeatable)")
    g.add_argument("--tasks-file", action="append", default=[], help="extra task/suite yaml")
    g.add_argument("--algo", default=None, help="ppo | sac | a2c | td3 | dqn (default: agents/algos.yaml per env)")
    g.add_argument("--seed", type=int, action="append", default=[], help="seed (repeatable; default 0)")
    r = p.add_argument_group("reward")
    r.add_argument("--reward", choices=("learned", "true"), default="learned",
                   help="learned (default) or true (the env's own reward: a baseline)")
    r.add_argument("--reward-model", type=Path, default=None,
                   help="reward model file; without it a model is trained first from random-policy data")
    r.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                   help="also train on the true reward for comparison (default: on for the built-in default)")
    r.add_argument("--collect-steps", type=int, default=20_000, help="transitions per task for the reward model")
    r.add_argument("--reward-epochs", type=int, default=30)
    r.add_argument("--reward-scale", type=float, default=1.0)
    r.add_argument("--reward-clip", type=float, default=None)
    r.add_argument("--reward-alpha", type=float, default=1.0, help="alpha*learned + (1-alpha)*true")
    h = p.add_argument_group("agent")
    h.add_argument("-n", "--timesteps", type=int, default=None, help="override n_timesteps")
    h.add_argument("--n-envs", type=int, default=None, help="override n_envs")
    h.add_argument("--params", nargs="+", default=[], metavar="KEY:VALUE", help="override hyperparameters")
    h.add_argument("--hyperparams-dir", type=Path, default=None, help="folder of <algo>.yaml (default: agents/)")
    h.add_argument("--eval-freq", type=int, default=None, help="env steps between evaluations (default n/5)")
    h.add_argument("--eval-episodes", type=int, default=10)
    h.add_argument("--checkpoint-freq", type=int, default=None, help="env steps between checkpoints (default n/10)")
    o = p.add_argument_group("output")
    o.add_argument("--output-dir", type=Path, default=Path("runs"))
    o.add_argument("--resume", action="store_true", help="continue unfinished runs, reuse finished ones")
    o.add_argument("--wandb", action="store_true", help="log to Weights & Biases (one run per task/algo/seed)")
    o.add_argument("--wandb-project", default="rlrm")
    o.add_argument("--wandb-entity", default=None)
    o.add_argument("--wandb-mode", default=None, help="auto | online | offline | disabled (default auto)")
    o.add_argument("--no-progress", action="store_true")
    cli.add_common_args(p)
    return p


def _learned_reward_model(args: argparse.Namespace, tasks: list[Task], wandb: job.WandbOptions) -> Path:
    """Use --reward-model, or collect random-policy data and train one model for all tasks."""
    if args.reward_model is not None:
        desc = read_description(args.reward_model)
        missing = [t.name for t in tasks if t.name not in desc["tasks"]]
        if missing:
            raise ConfigError(f"{args.reward_model}: the reward model has no head for task(s) {missing}; it has "
                              f"{sorted(desc['tasks'])}")
        return args.reward_model
    base = args.output_dir / "reward"
    out = base / "reward_model.safetensors"
    if args.resume and out.exists():
        desc = read_description(out)
        if all(t.name in desc["tasks"] for t in tasks):
            print(f"reusing reward model {out}")
            return out
    data_dirs = []
    for i, task in enumerate(tasks):
        ds = collect(task, args.collect_steps, "random", n_envs=8, seed=1000 + i, progress=not args.no_progress)
        data_dirs.append(ds.save(base / "data" / slug(task.name)))
    job.run(data_dirs, out, TrainConfig(epochs=args.reward_epochs, seed=0), ModelConfig(), wandb=wandb,
            progress=not args.no_progress)
    return out


def plan(args: argparse.Namespace, tasks: list[Task], reward_model: Path | None, baseline: bool) -> list[RunSpec]:
    """The runs of this command: task × seed × reward source."""
    overrides = parse_params(args.params)
    if args.timesteps is not None:
        overrides["n_timesteps"] = args.timesteps
    if args.n_envs is not None:
        overrides["n_envs"] = args.n_envs
    rewards = ["learned"] if args.reward == "learned" else ["true"]
    if baseline and "true" not in rewards:
        rewards.append("true")
    reward_kwargs = {"scale": args.reward_scale, "clip": args.reward_clip, "alpha": args.reward_alpha}
    specs = []
    for task in tasks:
        agent = load_spec(args.algo or default_algo(task), task, overrides, args.hyperparams_dir)
        eval_freq = args.eval_freq if args.eval_freq is not None else max(agent.n_timesteps // 5, 1)
        for seed in args.seed or [0]:
            for reward in rewards:
                specs.append(RunSpec(task, agent, seed, reward, str(reward_model) if reward_model else None,
                                     eval_freq=eval_freq, eval_episodes=args.eval_episodes,
                                     checkpoint_freq=args.checkpoint_freq or 0,
                                     reward_kwargs=reward_kwargs if reward == "learned" else {}))
    return specs


def table_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the final table: each learned run with the baseline's true return beside it."""
    base = {(r["task"], r["algo"], r["seed"]): r for r in results if r["reward"] == "true"}
    rows = []
    for r in results:
        b = base.get((r["task"], r["algo"], r["seed"])) if r["reward"] == "learned" else None
        rows.append({"task": r["task"], "algo": r["algo"], "seed": r["seed"], "reward": r["reward"],
                     "timesteps": r["timesteps"],
                     "true return": f"{fmt(r['true_mean'], 1)} ± {fmt(r['true_std'], 1)}",
                     "learned return": fmt(r["learned_mean"], 1) if not math.isnan(r["learned_mean"]) else "-",
                     "baseline true return": f"{fmt(b['true_mean'], 1)} ± {fmt(b['true_std'], 1)}" if b else "-",
                     "train s": round(float(r.get("train_seconds", float("nan"))), 1)})
    return rows


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops like Ctrl-C: checkpoint saved, resumable
    catalog = load_catalog(args.tasks_file)
    builtin_default = not args.tasks and not args.suite
    tasks = catalog.resolve(args.tasks, args.suite or (["default"] if builtin_default else []))
    baseline = args.baseline if args.baseline is not None else builtin_default
    for t in tasks:  # fail fast on bad hyperparameters before any long step
        check_spec(t, load_spec(args.algo or default_algo(t), t, parse_params(args.params), args.hyperparams_dir))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    group = f"train_agent-{time.strftime('%Y%m%d-%H%M%S')}"
    wandb = job.WandbOptions(args.wandb, args.wandb_project, args.wandb_entity, args.wandb_mode, group)
    reward_model = _learned_reward_model(args, tasks, wandb) if args.reward == "learned" else args.reward_model
    specs = plan(args, tasks, reward_model, baseline)
    results = []
    for i, spec in enumerate(specs, 1):
        print(f"[{i}/{len(specs)}] {spec.name}: {spec.agent.n_timesteps:,} steps", file=sys.stderr)
        try:
            results.append(run_one(spec, args.output_dir, resume=args.resume, wandb=wandb,
                                   progress=not args.no_progress, command=" ".join(sys.argv)))
        except RunInterrupted as err:
            print(f"{err}", file=sys.stderr)
            return 130
    atomic.write_json(args.output_dir / "results.json", results)
    print_table("Agents evaluated on the TRUE reward "
                f"({args.eval_episodes} deterministic episodes each; results in {args.output_dir}/results.json)",
                table_rows(results))
    return 0


def entry(argv: Sequence[str] | None = None) -> int:
    cli.quiet_third_party()
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(entry())
