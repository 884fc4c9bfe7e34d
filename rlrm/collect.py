"""``python -m rlrm.collect``: roll out a behaviour policy, label transitions, write one dataset per task."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rlrm import cli
from rlrm.atomic import slug
from rlrm.data.behaviour import builtin_policy
from rlrm.data.rollout import Policy, collect, summary_row
from rlrm.data.teachers import Teacher, make_preferences
from rlrm.errors import ConfigError
from rlrm.rl.files import UntrustedAgentFile
from rlrm.rl.saved import agent_policy
from rlrm.tasks import Task, load_catalog

FLAGS = {"policy": "--policy", "agent": "--policy", "steps": "--steps", "out": "--out", "teacher": "--teacher",
         "segment length": "--segment-length", "n": "--preferences"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlrm.collect", description=__doc__)
    p.add_argument("--task", action="append", default=[], help="task name or env id (repeatable)")
    p.add_argument("--suite", action="append", default=[], help="suite name from envs/*.yaml (repeatable)")
    p.add_argument("--tasks-file", action="append", default=[], help="extra task/suite yaml file")
    p.add_argument("--steps", type=int, default=20_000, help="transitions per task (default 20000)")
    p.add_argument("--policy", default="random",
                   help="random | PATH.zip | mixture:PATH.zip:EPS | rlrm:NAME(key=value, ...), a shipped behaviour "
                        "policy such as rlrm:cartpole_wander (see rlrm.data.behaviour)")
    p.add_argument("--labeler", default=None, help="override: env | python:module:function | file:PATH")
    p.add_argument("--preferences", type=int, default=0, metavar="N", help="also ask a synthetic teacher about N "
                   "random segment pairs per task (saved as <out>/<task>.preferences beside the dataset)")
    p.add_argument("--teacher", default="oracle", help="oracle | stochastic:beta=B | myopic:gamma=G | mistake:eps=E | "
                   "skip:T | equal:T, combined with '+' (B-Pref teachers over the task's labels)")
    p.add_argument("--segment-length", type=int, default=25)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("data"), help="output folder; one dataset per task inside")
    p.add_argument("--no-progress", action="store_true")
    cli.add_env_module_args(p)
    cli.add_trust_agent_file_arg(p, "a --policy agent file")
    cli.add_common_args(p)
    return p


def main(args: argparse.Namespace) -> int:
    cli.allow_typed_env_modules(args.env_module, args.task)
    catalog = load_catalog(args.tasks_file)
    tasks = catalog.resolve(args.task, args.suite)
    if not tasks:
        raise ConfigError("name at least one --task or --suite")
    teacher = Teacher.parse(args.teacher) if args.preferences else None  # a bad spec fails before any rollout
    if args.preferences < 0 or args.segment_length < 1:
        raise ConfigError(f"--preferences must be >= 0 and --segment-length >= 1, got {args.preferences} and "
                          f"{args.segment_length}")
    rows = []
    for i, task in enumerate(tasks):
        seed = args.seed + 1000 * i
        policy = _policy(args, task, seed)
        ds = collect(task, args.steps, policy, n_envs=args.n_envs, seed=seed, labeler=args.labeler,
                     progress=not args.no_progress, policy_name=args.policy)
        path = ds.save(args.out / slug(task.name))
        row = {**summary_row(ds), "path": str(path)}
        if teacher is not None:
            prefs = make_preferences(ds, ds.label, args.preferences, args.segment_length, teacher, seed)
            prefs.save(args.out / f"{slug(task.name)}.preferences", dataset_dir=path)
            row["pairs"] = len(prefs)
        rows.append(row)
    columns = ["task", "transitions", "episodes", "label_source", "label_mean", "label_std", "path"]
    cli.print_table(f"Collected transitions ({args.policy} policy)", rows,
                    [*columns[:-1], "pairs", "path"] if teacher is not None else columns,
                    caption=f"pairs: answered by teacher {teacher.spec!r} (skipped ones dropped)" if teacher else None)
    return 0


def _policy(args: argparse.Namespace, task: Task, seed: int) -> Policy | None:
    if args.policy == "random":
        return None
    if args.policy.startswith("rlrm:"):
        return builtin_policy(args.policy, task, args.n_envs, seed)
    try:
        return agent_policy(args.policy, task, args.n_envs, seed, trust_agent_file=args.trust_agent_file)
    except UntrustedAgentFile as err:
        raise ConfigError(err.message("--trust-agent-file")) from None


def entry(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv``); returns the exit code."""
    return cli.run_main(main, build_parser(), argv, FLAGS)


if __name__ == "__main__":
    raise SystemExit(entry())
