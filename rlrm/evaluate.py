"""``python -m rlrm.evaluate``: evaluate a saved agent on the TRUE reward (and the learned one, given a model)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from rlrm import cli
from rlrm import model as rm
from rlrm import spaces as sp
from rlrm.agents import detect_algo, load_agent, load_vecnormalize, make_vec_env
from rlrm.console import print_table
from rlrm.errors import ConfigError
from rlrm.evaluation import evaluate
from rlrm.tasks import Task, load_catalog


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlrm.evaluate", description=__doc__)
    p.add_argument("--agent", type=Path, required=True, help="agent .zip (e.g. runs/ppo/CartPole-v1_1/agent.zip)")
    p.add_argument("--task", default=None, help="task or env id (default: from the run's config.json)")
    p.add_argument("--tasks-file", action="append", default=[])
    p.add_argument("--reward-model", type=Path, default=None, help="also report the learned return")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of deterministic ones")
    cli.add_common_args(p)
    return p


def _run_config(agent_path: Path) -> dict:
    cfg = agent_path.parent / "config.json"
    if cfg.exists():
        try:
            return json.loads(cfg.read_text())
        except json.JSONDecodeError:
            raise ConfigError(f"{cfg}: not valid JSON") from None
    return {}


def main(args: argparse.Namespace) -> int:
    if not args.agent.exists():
        raise ConfigError(f"--agent {args.agent}: file not found")
    run_cfg = _run_config(args.agent)
    if args.task:
        task = load_catalog(args.tasks_file).task(args.task)
    elif "task" in run_cfg:
        task = Task.from_dict(run_cfg["task"], f"{args.agent.parent / 'config.json'}: field 'task'")
    else:
        raise ConfigError(f"--agent {args.agent}: no config.json beside it; name the env with --task")
    agent = load_agent(args.agent, algo=detect_algo(args.agent))
    probe = task.make_env()
    for what, mine, theirs in (("observation", agent.observation_space, probe.observation_space),
                               ("action", agent.action_space, probe.action_space)):
        if sp.layout(mine) != sp.layout(theirs):
            raise ConfigError(f"--agent {args.agent}: trained on another env: its {what} space is {mine}, "
                              f"{task.name} has {theirs}")
    probe.close()
    reward_model = args.reward_model or (Path(run_cfg["reward_model"]) if run_cfg.get("reward_model") else None)
    learned = rm.load(reward_model).reward_fn(task.name) if reward_model else None
    normalize = (run_cfg.get("agent") or {}).get("normalize")
    venv = make_vec_env(task, min(args.episodes, 5), args.seed, learned, normalize, training=False)
    stats = args.agent.parent / "vecnormalize.json"
    if normalize is not None and stats.exists():
        load_vecnormalize(venv, stats)
    res = evaluate(agent, venv, args.episodes, deterministic=not args.stochastic).summary()
    venv.close()
    print_table(f"{args.agent} on {task.name} ({res['episodes']} episodes)",
                [{"task": task.name, "true return": res["true_mean"], "± std": res["true_std"],
                  "learned return": res["learned_mean"], "episode length": res["length_mean"]}], digits=1)
    return 0


def entry(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv``); returns the exit code."""
    return cli.run(main, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(entry())
