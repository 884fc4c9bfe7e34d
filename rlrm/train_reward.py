"""``python -m rlrm.train_reward``: train one multi-task reward model on labeled transitions."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rlrm import cli
from rlrm.model.features import INPUTS
from rlrm.model.network import ModelConfig
from rlrm.train.job import train_job
from rlrm.train.loop import SAMPLING, TrainConfig, TrainResult

FLAGS = {"out": "--out", "tasks": "--tasks", "init": "--init", "data": "--data"}
METRIC_COLUMNS = ["task", "n_train", "n_val", "mse", "r2", "spearman", "ranking_acc"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlrm.train_reward", description=__doc__)
    p.add_argument("--data", nargs="+", required=True, help="dataset folders (or folders of datasets)")
    p.add_argument("--tasks", nargs="+", default=[], help="train only these tasks (default: all found)")
    p.add_argument("--out", type=Path, default=Path("models/reward_model.safetensors"))
    p.add_argument("--init", type=Path, default=None, help="extend this model (adds heads for new tasks)")
    p.add_argument("--freeze-encoder", action="store_true", help="train only new heads (few-shot)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--val-frac", type=float, default=0.1)
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (0: off)")
    p.add_argument("--sampling", choices=SAMPLING, default="balanced")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder", type=cli.csv_ints, default=[64, 64], help="encoder widths (default 64,64)")
    p.add_argument("--activation", default="relu")
    p.add_argument("--layer-norm", action="store_true")
    p.add_argument("--inputs", default="obs,action,next_obs", help=f"subset of {','.join(INPUTS)}")
    cli.add_wandb_args(p)
    p.add_argument("--no-progress", action="store_true")
    cli.add_common_args(p)
    return p


def main(args: argparse.Namespace) -> int:
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      val_frac=args.val_frac, seed=args.seed, sampling=args.sampling, patience=args.patience,
                      freeze_encoder=args.freeze_encoder)
    model_cfg = ModelConfig(encoder=args.encoder, activation=args.activation, layer_norm=args.layer_norm,
                            inputs=[s.strip() for s in args.inputs.split(",") if s.strip()])
    result = train_job(args.data, args.out, cfg, model_cfg, tasks=args.tasks, init=args.init,
                       wandb=cli.wandb_options(args), progress=not args.no_progress)
    print_metrics(args.out, result)
    return 0


def print_metrics(out: Path, result: TrainResult) -> None:
    """The held-out metrics table of a trained model."""
    rows = [{"task": t, **m} for t, m in result.metrics.items()]
    cli.print_table(f"Reward model {out} (held-out episodes; best epoch {result.best_epoch}/{len(result.history)})",
                    rows, METRIC_COLUMNS, caption="r2/spearman '-': the labels are constant there (mse tells the fit)")


def entry(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv``); returns the exit code."""
    return cli.run_main(main, build_parser(), argv, FLAGS)


if __name__ == "__main__":
    raise SystemExit(entry())
