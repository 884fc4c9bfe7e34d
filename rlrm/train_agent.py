"""``python -m rlrm.train_agent``: train SB3 agents on a learned reward and evaluate them on the true one.

With no arguments it runs the built-in default end to end: collect random transitions for the
``default`` suite, train one multi-task reward model, train an agent per env on the learned reward and
one on the true reward (the baseline), evaluate all on the true reward, print a table.

Ctrl-C (or SIGTERM) stops the run in training at its next env step: its checkpoint is saved, the command exits
130, and ``--resume`` continues it. A run whose training is already complete finishes its final evaluation
first (its result is kept; the runs after it are not started). A second Ctrl-C stops at once: the last
checkpoint stays as it was. Each finished run is merged into ``<output-dir>/results.json`` at once, under a
lock, so commands sharing an output folder keep each other's rows; a run folder is owned by one process at a
time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlrm import cli, experiment
from rlrm import model as rm
from rlrm.errors import ConfigError
from rlrm.rl.folder import FeedbackSpec
from rlrm.rl.grid import BACKENDS, GridOptions, open_backend, run_grid
from rlrm.rl.hyperparams import check_spec, default_algo, load_spec, parse_params
from rlrm.rl.online import check_feedback
from rlrm.rl.worker import Outcome
from rlrm.tasks import load_catalog
from rlrm.wrappers import RewardShaping

FLAGS = {"output_dir": "--output-dir", "params": "--params", "reward_model": "--reward-model",
         "hyperparams_dir": "--hyperparams-dir", "budget": "--budget", "feedback_every": "--feedback-every",
         "pretrain_steps": "--pretrain-steps", "feedback_epochs": "--feedback-epochs", "query": "--query",
         "teacher": "--teacher", "segment_length": "--segment-length", "workers": "--workers",
         "backend": "--backend", "ray_address": "--ray-address", "cpus_per_run": "--cpus-per-run",
         "ask_first": "--ask-first",
         "label_transform": "--label-transform"}


PROG = "python -m rlrm.train_agent"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to train")
    g.add_argument("--task", "--env", dest="tasks", action="append", default=[],
                   help="task name or env id (repeatable)")
    g.add_argument("--suite", action="append", default=[], help="suite from envs/*.yaml (repeatable)")
    g.add_argument("--tasks-file", action="append", default=[], help="extra task/suite yaml")
    g.add_argument("--algo", default=None, help="ppo | sac | a2c | td3 | dqn (default: agents/algos.yaml per env)")
    g.add_argument("--seed", type=int, action="append", default=[], help="seed (repeatable; default 0)")
    cli.add_env_module_args(g)
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
    r.add_argument("--uncertainty", type=float, default=0.0, help="pay mean + U * std of an ensemble reward model "
                   "(train_reward --ensemble K): U < 0 conservative, U > 0 an exploration bonus (RUNE); not in "
                   "evaluations")
    r.add_argument("--uncertainty-decay", type=float, default=0.0, help="U shrinks by this fraction per env step")
    f = p.add_argument_group("online feedback: a teacher labels the agent's own transitions while it trains")
    f.add_argument("--feedback", choices=("labels", "preferences"), default=None,
                   help="labels: scalar labels per transition; preferences: segment pairs judged by the task's "
                   "labeler (files in <run>/feedback/)")
    f.add_argument("--teacher", default=None, help="labels: the labeler answering: env | rlrm:NAME(...) | "
                   "python:module:function | file:PATH (default: the task's labeler); preferences: a teacher spec "
                   "such as oracle or mistake:eps=0.1 (default oracle)")
    f.add_argument("--budget", type=int, default=None, help="labels (or pairs) the teacher may be asked for, "
                   "pretraining included")
    f.add_argument("--feedback-every", type=int, default=1000, help="env steps between feedback rounds")
    f.add_argument("--query", choices=("uniform", "disagreement"), default="uniform",
                   help="how queries are chosen: uniform, or where a 3-member ensemble trained on the answers so far "
                   "disagrees most (retrained each round; the agent is paid by the one warm-started model)")
    f.add_argument("--ask-first", nargs="+", choices=("ends", "top", "none"), default=None,
                   help="labels: strata asked about before --query fills a round, each at most a quarter of it: "
                   "ends (transitions that end an episode by termination: a goal, a crash), top (those the current "
                   "model pays most: where an agent exploiting its errors goes); default both, 'none' for neither")
    f.add_argument("--label-transform", choices=("none", "symlog"), default="none", help="labels: the loop's "
                   "model fits symlog(label) (a rare large bonus, such as a goal's +100, no longer drowns the small "
                   "dense rewards around it); a --reward-model keeps its own")
    f.add_argument("--pretrain-steps", type=int, default=None, help="random-policy transitions before training, "
                   "without --reward-model (labels: each one labeled, default a quarter of the budget; preferences: "
                   "default 1000, a quarter of the budget in pairs asked on them)")
    f.add_argument("--segment-length", type=int, default=25, help="preferences: steps per segment")
    f.add_argument("--feedback-epochs", type=int, default=20, help="training epochs per retraining (warm start)")
    h = p.add_argument_group("agent")
    h.add_argument("-n", "--timesteps", type=int, default=None, help="override n_timesteps")
    h.add_argument("--n-envs", type=int, default=None, help="override n_envs")
    h.add_argument("--params", nargs="+", default=[], metavar="KEY:VALUE", help="override hyperparameters")
    h.add_argument("--hyperparams-dir", type=Path, default=None, help="folder of <algo>.yaml (default: agents/)")
    h.add_argument("--eval-freq", type=int, default=None, help="env steps between evaluations (default n/5)")
    h.add_argument("--eval-episodes", type=int, default=10)
    h.add_argument("--checkpoint-freq", type=int, default=None, help="env steps between checkpoints (default n/10)")
    w = p.add_argument_group("where the runs run (results, folders and W&B are the same whatever the backend)")
    w.add_argument("--workers", type=int, default=None, help="runs at a time: local, N worker processes (default 1: "
                   "one after another in this process); ray, the most runs in flight and a local Ray's CPUs")
    w.add_argument("--backend", choices=BACKENDS, default="local", help="local (default) or ray (each run a Ray "
                   "task; pip install 'rlrm[ray]')")
    w.add_argument("--ray-address", default=None, help="an existing Ray cluster (HOST:PORT, ray://HOST:PORT or auto); "
                   "default: start a local Ray")
    w.add_argument("--cpus-per-run", type=int, default=1, help="ray: CPUs (and torch threads) per run")
    o = p.add_argument_group("output")
    o.add_argument("--output-dir", type=Path, default=Path("runs"))
    o.add_argument("--resume", action="store_true", help="continue unfinished runs, reuse finished ones")
    cli.add_wandb_args(o, " (one run per task/algo/seed/reward, grouped per command)")
    o.add_argument("--no-progress", action="store_true")
    cli.add_common_args(p)
    return p


def _feedback(args: argparse.Namespace, tasks: Sequence[Any]) -> FeedbackSpec | None:
    """The online feedback loop the flags ask for (checked before anything is created), or ``None``."""
    if args.feedback is None:
        if (args.budget is not None or args.teacher is not None or args.ask_first is not None
                or args.label_transform != "none"):
            raise ConfigError("--budget/--teacher/--ask-first/--label-transform: only with --feedback (train a "
                              "reward model with python -m rlrm.train_reward --label-transform otherwise)")
        return None
    if args.budget is None:
        raise ConfigError(f"--feedback {args.feedback}: needs --budget N (the most labels the teacher is asked for)")
    if args.reward != "learned":
        raise ConfigError(f"--feedback {args.feedback}: needs a learned reward, not --reward {args.reward}")
    strata = None if args.ask_first is None else tuple(s for s in args.ask_first if s != "none")
    if args.ask_first is not None and "none" in args.ask_first and strata:
        raise ConfigError(f"--ask-first {' '.join(args.ask_first)}: 'none' stands alone")
    spec = FeedbackSpec(args.feedback, args.teacher, args.budget, args.feedback_every, args.query,
                        args.pretrain_steps, args.feedback_epochs, args.segment_length, strata,
                        args.label_transform)
    for task in tasks:
        check_feedback(spec, task)
    return spec


class StopRequest:
    """The signal handler for SIGINT/SIGTERM. While ``armed`` (a run is training), the first signal asks the run to
    stop at its next step; a second one, or one while not armed, raises ``KeyboardInterrupt`` at once."""

    def __init__(self) -> None:
        self.armed = False
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.armed or self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # os.write: a print could re-enter a stderr write (a progress bar) that the signal interrupted
        os.write(2, b"stopping: the run saves a checkpoint at its next step, or finishes if its training is done "
                    b"(Ctrl-C again: stop at once)\n")


@contextlib.contextmanager
def _handling_signals(handler: StopRequest) -> Iterator[None]:
    """Install ``handler`` for SIGINT and SIGTERM (`kill` stops like Ctrl-C) and restore the old handlers after."""
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def main(args: argparse.Namespace) -> int:
    stop = StopRequest()
    cli.allow_typed_env_modules(args.env_module, args.tasks)
    with _handling_signals(stop), cli.show_data_warnings(PROG):
        return _main(args, stop)


def _main(args: argparse.Namespace, stop: StopRequest) -> int:
    catalog = load_catalog(args.tasks_file)
    builtin_default = not args.tasks and not args.suite
    tasks = catalog.resolve(args.tasks, args.suite or (["default"] if builtin_default else []))
    baseline = args.baseline if args.baseline is not None else builtin_default
    overrides = parse_params(args.params)
    if args.timesteps is not None:
        overrides["n_timesteps"] = args.timesteps
    if args.n_envs is not None:
        overrides["n_envs"] = args.n_envs
    for t in tasks:  # fail fast on bad hyperparameters before any long step
        check_spec(t, load_spec(args.algo or default_algo(t), t, overrides, args.hyperparams_dir))
    reward_model = args.reward_model
    if reward_model is not None:  # before anything is created: a model that does not load leaves no folder
        experiment.check_reward_model(reward_model, tasks)
    if args.uncertainty and (reward_model is None or rm.read_description(reward_model).get("ensemble", 1) < 2):
        raise ConfigError(f"--uncertainty {args.uncertainty}: weighs the std across ensemble members; give an "
                          "ensemble model (--reward-model M, trained with train_reward --ensemble K)")
    feedback = _feedback(args, tasks)
    grid = GridOptions(args.workers, args.backend, args.ray_address, args.cpus_per_run, tuple(args.env_module))
    experiment.read_results(args.output_dir)  # a broken results.json is refused before any training
    with open_backend(grid):  # Ray: connected (or started) before anything is created, shut down after
        return _execute(args, stop, tasks, Plan(reward_model, feedback, grid, baseline, overrides))


@dataclass
class Plan:
    """What the checks of a command settled, for :func:`_execute`."""

    reward_model: Path | None
    feedback: FeedbackSpec | None
    grid: GridOptions
    baseline: bool
    overrides: dict[str, Any]


def _execute(args: argparse.Namespace, stop: StopRequest, tasks: Sequence[Any], plan: Plan) -> int:
    """Build the reward model if needed, plan the runs, run them, print the table."""
    reward_model, feedback, grid, baseline, overrides = (plan.reward_model, plan.feedback, plan.grid, plan.baseline,
                                                         plan.overrides)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    group = f"train_agent-{time.strftime('%Y%m%d-%H%M%S')}"
    wandb = cli.wandb_options(args, group)
    if reward_model is None and args.reward == "learned" and feedback is None:
        built = experiment.build_reward_model(tasks, args.output_dir / "reward", collect_steps=args.collect_steps,
                                              epochs=args.reward_epochs, reuse=args.resume, wandb=wandb,
                                              progress=not args.no_progress)
        reward_model = built.path
        if built.result is None:
            print(f"reusing reward model {built.path}", file=sys.stderr)
        else:
            cli.print_metrics(built.path, built.result)
    rewards = [args.reward] + (["true"] if baseline and args.reward != "true" else [])
    specs = experiment.plan_runs(tasks, reward_model, experiment.PlanOptions(
        algo=args.algo, seeds=args.seed or [0], rewards=rewards, overrides=overrides,
        hyperparams_dir=args.hyperparams_dir, eval_freq=args.eval_freq, eval_episodes=args.eval_episodes,
        checkpoint_freq=args.checkpoint_freq or 0,
        shaping=RewardShaping(args.reward_scale, args.reward_clip, args.reward_alpha, args.uncertainty,
                              args.uncertainty_decay), feedback=feedback))
    recorded: list[dict[str, Any]] = []

    def record(outcome: Outcome) -> None:  # each finished run reaches results.json at once
        if outcome.result is not None:
            experiment.record_results(args.output_dir, [outcome.result])
            recorded.append(outcome.result)

    stop.armed = True
    try:
        outcomes = run_grid(specs, str(args.output_dir), grid, resume=args.resume, wandb=wandb,
                            command=" ".join(sys.argv), progress=not args.no_progress, stop=lambda: stop.requested,
                            on_outcome=record)
    finally:
        stop.armed = False
    failed = [o for o in outcomes if o.status == "failed"]
    interrupted = [o for o in outcomes if o.status == "interrupted"]
    if recorded or failed:
        print_results([o.result for o in outcomes if o.result is not None], args.eval_episodes, args.output_dir,
                      experiment.constant_heads(reward_model) if reward_model is not None else set(),
                      failed=[(specs[o.index].name, o.error or "") for o in failed])
    for o in failed:
        if o.detail:
            print(o.detail, file=sys.stderr)
    for o in interrupted:
        how = "continue with --resume" if o.resumable else "start it again without --resume"
        print(f"{o.error}; {how}", file=sys.stderr)
    if interrupted or (stop.requested and len(outcomes) < len(specs)):
        if len(outcomes) < len(specs) and not interrupted:
            first = specs[len(outcomes)]
            print(f"stopped before run {len(outcomes) + 1}/{len(specs)} ({first.name}); start the rest with "
                  "--resume", file=sys.stderr)
        return 130
    if failed:
        print(f"{PROG}: {len(failed)} of {len(specs)} runs failed (see the table); the others finished, "
              "--resume reuses them", file=sys.stderr)
        return 1
    return 0


CONSTANT_NOTE = "learned reward = constant: this row does not test reward learning"


def print_results(results: list[dict[str, Any]], episodes: int, output_dir: Path, constant: set[str],
                  failed: Sequence[tuple[str, str]] = ()) -> None:
    """The final table: true return (and learned) of every run, the true-reward baseline beside it.

    :param constant: tasks whose learned reward is a constant (labels constant in the data, like CartPole's +1):
        their rows say that they do not test reward learning.
    :param failed: runs that failed, ``(name, error)``: listed under the table.
    """
    fmt = cli.fmt

    def pm(mean: float | None, std: float | None) -> str:
        return "-" if mean is None else f"{fmt(mean, 1)} ± {fmt(std, 1)}"

    rows = [{"task": r["task"], "algo": r["algo"], "seed": r["seed"], "reward": r["reward"],
             "timesteps": r["timesteps"], "true return": pm(r["true_mean"], r["true_std"]),
             "learned return": fmt(r["learned_mean"], 1),
             "baseline true return": pm(r["baseline_mean"], r["baseline_std"]),
             "train s": f"{r['train_seconds']:.1f}", "queries": "-" if r["queries"] is None else str(r["queries"]),
             "note": CONSTANT_NOTE if r["reward"] == "learned" and r["task"] in constant else ""}
            for r in experiment.table_rows(results)]
    optional = {"note": lambda r: bool(r["note"]), "queries": lambda r: r["queries"] != "-"}
    columns = [c for c in rows[0] if c not in optional or any(optional[c](r) for r in rows)] if rows else None
    caption = "\n".join(f"FAILED {name}: {error}" for name, error in failed) or None
    cli.print_table("Agents evaluated on the TRUE reward "
                    f"({episodes} deterministic episodes each; results in {output_dir}/results.json)", rows, columns,
                    caption=caption)


def entry(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv``); returns the exit code."""
    return cli.run_main(main, build_parser(), argv, FLAGS)


if __name__ == "__main__":
    raise SystemExit(entry())
