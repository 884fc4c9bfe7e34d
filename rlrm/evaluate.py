"""``python -m rlrm.evaluate``: evaluate an agent, or a reward model on labeled data. Two modes, exactly one:

- ``--agent AGENT.zip``: a saved agent on the TRUE reward (and the learned one, given ``--reward-model``). For an
  agent inside an rlrm run folder (its final ``agent.zip`` or a checkpoint's) the run's own settings are used:
  task, normalization statistics, reward shaping, evaluation seed and episode count, so the numbers equal the
  run's ``result.json`` for the same agent. The agent file is loaded without unpickling anything from it
  (unpickling runs any code a file holds); an SB3 file whose pickled settings rlrm cannot rebuild loads only with
  --trust-agent-file.
- ``--data DIR ... --reward-model MODEL``: a reward model against labeled datasets, per task: R², Spearman
  correlation, return-ranking accuracy, EPIC distance to the function behind the labels (where rlrm knows it: the
  env's own reward for some envs, ``rlrm:`` labelers; not ``python:`` or ``file:`` labels) and the number of
  transitions. ``--json PATH`` also writes them to a file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import rlrm
from rlrm import atomic, cli
from rlrm import model as rm
from rlrm.errors import ConfigError
from rlrm.rl.evaluation import evaluate_agent
from rlrm.rl.files import UntrustedAgentFile
from rlrm.rl.folder import RunFolder
from rlrm.rl.saved import load_agent_for_eval
from rlrm.tasks import load_catalog
from rlrm.train.heldout import evaluate_model
from rlrm.train.job import load_datasets

FLAGS = {"agent": "--agent", "task": "--task", "reward_model": "--reward-model", "episodes": "--episodes",
         "tasks": "--tasks", "data": "--data"}
REWARD_COLUMNS = ["task", "n", "r2", "spearman", "ranking_acc", "epic"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlrm.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = p.add_argument_group("what to evaluate (exactly one)")
    modes.add_argument("--agent", type=Path, default=None,
                       help="an agent .zip (e.g. runs/ppo/CartPole-v1_1/agent.zip), on the true reward")
    modes.add_argument("--data", nargs="+", type=Path, default=None,
                       help="labeled dataset folders (or folders of datasets): evaluate --reward-model on them")
    p.add_argument("--reward-model", type=Path, default=None,
                   help="with --agent: also report the learned return; with --data: the model to evaluate")
    agent = p.add_argument_group("--agent options")
    agent.add_argument("--task", default=None, help="task or env id (default: from the run's config.json)")
    agent.add_argument("--tasks-file", action="append", default=[])
    agent.add_argument("--episodes", type=int, default=None, help="default: the run's eval episodes, else 10")
    agent.add_argument("--seed", type=int, default=None, help="default: the run's evaluation seed, else 12345")
    agent.add_argument("--stochastic", action="store_true", help="sample actions instead of deterministic ones")
    data = p.add_argument_group("--data options")
    data.add_argument("--tasks", nargs="+", default=[], help="evaluate only these tasks (default: all found)")
    data.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    cli.add_env_module_args(agent)
    cli.add_trust_agent_file_arg(p, "the agent file")
    cli.add_common_args(p)
    return p


def main(args: argparse.Namespace) -> int:
    if (args.agent is None) == (args.data is None):
        raise ConfigError("give exactly one of --agent (evaluate an agent) or --data (evaluate --reward-model on "
                          f"labeled datasets); got {'both' if args.agent is not None else 'neither'}")
    return evaluate_agent_main(args) if args.agent is not None else evaluate_reward_main(args)


def evaluate_agent_main(args: argparse.Namespace) -> int:
    """``--agent``: the agent on the true reward (and the learned one, given ``--reward-model``)."""
    if args.tasks or args.json is not None:
        raise ConfigError(f"{'--tasks' if args.tasks else '--json'} goes with --data (evaluating a reward model), "
                          "not with --agent")
    if not args.agent.exists():
        raise ConfigError(f"agent {args.agent}: file not found")
    cli.allow_typed_env_modules(args.env_module, [args.task])
    folder = RunFolder.of_agent(args.agent)
    task = load_catalog(args.tasks_file).task(args.task) if args.task else None
    if task is None and folder is None:
        raise ConfigError(f"agent {args.agent}: no run folder (config.json) around it; name the env with --task")
    try:
        loaded = load_agent_for_eval(args.agent, folder, task=task, n_episodes=args.episodes, seed=args.seed,
                                     reward_model=rm.load(args.reward_model) if args.reward_model else None,
                                     trust_agent_file=args.trust_agent_file)
    except UntrustedAgentFile as err:
        raise ConfigError(err.message("--trust-agent-file")) from None
    res = evaluate_agent(loaded.agent, loaded.venv, loaded.episodes, deterministic=not args.stochastic).summary()
    loaded.venv.close()
    cli.print_table(f"{args.agent} on {loaded.task.name} ({res['episodes']} episodes, seed {loaded.seed})",
                    [{"task": loaded.task.name, "true return": res["true_mean"], "± std": res["true_std"],
                      "learned return": res["learned_mean"], "episode length": res["length_mean"]}], digits=1)
    return 0


def evaluate_reward_main(args: argparse.Namespace) -> int:
    """``--data``: the reward model against the labeled datasets, per task."""
    agent_only = [flag for flag, used in (("--task", args.task), ("--tasks-file", args.tasks_file),
                                          ("--episodes", args.episodes is not None),
                                          ("--seed", args.seed is not None), ("--stochastic", args.stochastic))
                  if used]
    if agent_only:
        raise ConfigError(f"{agent_only[0]} goes with --agent (evaluating an agent), not with --data")
    if args.reward_model is None:
        raise ConfigError("--data needs --reward-model: the reward model to evaluate on the datasets")
    model = rm.load(args.reward_model)
    datasets = load_datasets(args.data, args.tasks)
    if not datasets:
        raise ConfigError(f"data {' '.join(map(str, args.data))}: no datasets found")
    try:
        results = evaluate_model(model, datasets)
    except ConfigError as err:  # a task without a head, spaces that do not fit: name the model file
        raise ConfigError(f"{args.reward_model}: {err}") from None
    cli.print_table(f"{args.reward_model} on {len(datasets)} dataset(s)",
                    [{"task": task, **r} for task, r in results.items()], REWARD_COLUMNS)
    for task, r in results.items():
        if r.get("note"):
            print(f"{task}: {r['note']}")
    if args.json is not None:
        atomic.write_json(args.json, {"rlrm_version": rlrm.__version__, "reward_model": str(args.reward_model),
                                      "data": [str(d) for d in args.data], "tasks_filter": list(args.tasks),
                                      "tasks": results})
        print(f"metrics written to {args.json}")
    return 0


def entry(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv``); returns the exit code."""
    return cli.run_main(main, build_parser(), argv, FLAGS)


if __name__ == "__main__":
    raise SystemExit(entry())
