"""``python -m rlrm.evaluate``: evaluate a saved agent on the TRUE reward (and the learned one, given a model).

For an agent inside an rlrm run folder (its final ``agent.zip`` or a checkpoint's) the run's own settings are
used: task, normalization statistics, reward shaping, evaluation seed and episode count, so the numbers equal
the run's ``result.json`` for the same agent.

The agent file is loaded without unpickling anything from it (unpickling runs any code a file holds); an SB3
file whose pickled settings rlrm cannot rebuild loads only with --trust-agent-file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rlrm import cli
from rlrm import model as rm
from rlrm.errors import ConfigError
from rlrm.rl.evaluation import evaluate_agent
from rlrm.rl.files import UntrustedAgentFile
from rlrm.rl.folder import RunFolder
from rlrm.rl.saved import load_agent_for_eval
from rlrm.tasks import load_catalog

FLAGS = {"agent": "--agent", "task": "--task", "reward_model": "--reward-model", "episodes": "--episodes"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlrm.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", type=Path, required=True, help="agent .zip (e.g. runs/ppo/CartPole-v1_1/agent.zip)")
    p.add_argument("--task", default=None, help="task or env id (default: from the run's config.json)")
    p.add_argument("--tasks-file", action="append", default=[])
    p.add_argument("--reward-model", type=Path, default=None, help="also report the learned return")
    p.add_argument("--episodes", type=int, default=None, help="default: the run's eval episodes, else 10")
    p.add_argument("--seed", type=int, default=None, help="default: the run's evaluation seed, else 12345")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of deterministic ones")
    cli.add_env_module_args(p)
    cli.add_trust_agent_file_arg(p, "the agent file")
    cli.add_common_args(p)
    return p


def main(args: argparse.Namespace) -> int:
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


def entry(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv``); returns the exit code."""
    return cli.run_main(main, build_parser(), argv, FLAGS)


if __name__ == "__main__":
    raise SystemExit(entry())
