"""``python -m rlrm.train_reward``: train one multi-task reward model on labeled transitions."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rlrm import cli
from rlrm.errors import ConfigError
from rlrm.model.features import INPUTS
from rlrm.model.network import LABEL_TRANSFORMS, ModelConfig
from rlrm.train.job import train_job
from rlrm.train.loop import SAMPLING, TrainConfig
from rlrm.train.weighting import TASK_WEIGHTING

PROG = "python -m rlrm.train_reward"
FLAGS = {"out": "--out", "tasks": "--tasks", "init": "--init", "data": "--data",
         "adapt": "--freeze-encoder/--finetune/--span", "task_weighting": "--task-weighting",
         "min_epoch_steps": "--min-epoch-steps",
         "ensemble": "--ensemble"}
#: the architecture flags, with their defaults for a new model (None in the parser: so --init can tell they were set)
ARCHITECTURE = {"encoder": [64, 64], "activation": "relu", "layer_norm": False, "inputs": ",".join(INPUTS)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--data", nargs="+", default=[], help="labeled dataset folders (or folders of datasets): their "
                   "labels are trained on (regression)")
    p.add_argument("--preferences", nargs="+", default=[], help="preference folders (rlrm.collect --preferences), "
                   "folders of them, or answers.jsonl files from the rlrm.queries page (Bradley-Terry loss)")
    p.add_argument("--preference-data", type=Path, default=None, help="the dataset a .jsonl answers file points "
                   "into (default: from query_set.json beside it)")
    p.add_argument("--pref-batch", type=int, default=32, help="preference pairs per step and task")
    p.add_argument("--tasks", nargs="+", default=[], help="train only these tasks (default: all found)")
    p.add_argument("--out", type=Path, default=Path("models/reward_model.safetensors"))
    p.add_argument("--init", type=Path, default=None, help="extend this model with the tasks it lacks, choosing a "
                   "frozen encoder, fine-tuning or a combination of earlier heads by validation loss (it keeps its "
                   "architecture, so --encoder/--activation/--layer-norm/--inputs cannot be set with it)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--freeze-encoder", action="store_true", help="with --init: train only new heads (few-shot); "
                      "earlier heads predict bit-identically")
    mode.add_argument("--finetune", action="store_true", help="with --init: train the whole model (its existing "
                      "weights at lr * --finetune-lr-scale)")
    mode.add_argument("--span", action="store_true", help="with --init: each new head a linear combination of the "
                      "earlier heads with the same spaces, fitted in closed form (a new task within a family, from "
                      "about as many labels as there are earlier heads)")
    p.add_argument("--finetune-lr-scale", type=float, default=0.1)
    p.add_argument("--task-weighting", choices=TASK_WEIGHTING, default="uncertainty",
                   help="how tasks share the encoder's update: uncertainty (learned per-task weights, Kendall et al. "
                   "2018; the default), equal (summed losses on standardized labels), pcgrad (gradient surgery)")
    p.add_argument("--ensemble", type=int, default=1, metavar="K", help="K members, each on its own bootstrap of "
                   "the episodes, in one model file (its std: uncertainty for train_agent and rlrm.queries)")
    p.add_argument("--label-transform", choices=LABEL_TRANSFORMS, default="none", help="for the tasks this adds: "
                   "none, or symlog (heads fit sign(y) log(1 + |y|): a rare large bonus, such as a goal's +100, no "
                   "longer drowns the small dense rewards around it); not with --ensemble or preferences")
    p.add_argument("--single-task-baselines", action="store_true", help="also train one model per task and report "
                   "per task whether sharing helped or hurt (negative transfer)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--val-frac", type=float, default=0.1)
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (0: off)")
    p.add_argument("--min-epoch-steps", type=int, default=20, help="optimizer steps per epoch at least (small "
                   "datasets: an epoch is several passes)")
    p.add_argument("--sampling", choices=SAMPLING, default="balanced")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder", type=cli.csv_ints, default=None, help="encoder widths (default 64,64)")
    p.add_argument("--activation", default=None, help="default relu")
    p.add_argument("--layer-norm", action="store_true", default=None)
    p.add_argument("--inputs", default=None, help=f"subset of {','.join(INPUTS)} (default: all)")
    cli.add_env_module_args(p)
    cli.add_wandb_args(p)
    p.add_argument("--no-progress", action="store_true")
    cli.add_common_args(p)
    return p


def main(args: argparse.Namespace) -> int:
    cli.allow_typed_env_modules(args.env_module)
    if not args.data and not args.preferences:
        raise ConfigError("give labeled data (--data DIR) and/or preferences (--preferences PATH)")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      val_frac=args.val_frac, seed=args.seed, sampling=args.sampling, patience=args.patience,
                      min_epoch_steps=args.min_epoch_steps, task_weighting=args.task_weighting,
                      finetune_lr_scale=args.finetune_lr_scale, pref_batch=args.pref_batch,
                      label_transform=args.label_transform)
    if args.label_transform != "none" and args.ensemble > 1:
        raise ConfigError(f"--label-transform {args.label_transform}: not with --ensemble yet (the ensemble's fast "
                          "reward path has no symlog output)")
    adapt = "frozen" if args.freeze_encoder else "finetune" if args.finetune else "span" if args.span else "auto"
    with cli.show_data_warnings(PROG):
        result = train_job(args.data, args.out, cfg, model_config(args), tasks=args.tasks, init=args.init,
                           adapt=adapt, single_task_baselines=args.single_task_baselines,
                           preferences=args.preferences, preference_data=args.preference_data,
                           ensemble=args.ensemble,
                           wandb=cli.wandb_options(args), progress=not args.no_progress)
    cli.print_metrics(args.out, result)
    return 0


def model_config(args: argparse.Namespace) -> ModelConfig | None:
    """The architecture the flags ask for; None with ``--init`` (the model keeps its own), where setting one is an
    error rather than silently ignored."""
    given = [f"--{k.replace('_', '-')}" for k in ARCHITECTURE if getattr(args, k) is not None]
    if args.init is not None:
        if given:
            raise ConfigError(f"--init {args.init}: the model keeps its own architecture; {', '.join(given)} cannot "
                              "be set with it")
        return None
    values = {k: default if getattr(args, k) is None else getattr(args, k) for k, default in ARCHITECTURE.items()}
    inputs = [s.strip() for s in values.pop("inputs").split(",") if s.strip()]
    return ModelConfig(**values, inputs=inputs)


def entry(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv``); returns the exit code."""
    return cli.run_main(main, build_parser(), argv, FLAGS)


if __name__ == "__main__":
    raise SystemExit(entry())
