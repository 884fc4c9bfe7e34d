"""Shared CLI plumbing: one-line errors, non-zero exit, traceback only with --debug."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from rlrm.errors import RlrmError
from rlrm.tracking import WandbOptions


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug`` (show tracebacks) to a parser."""
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def run(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and call ``main``; print :class:`RlrmError` as one line and return exit code 2.

    :return: the process exit code (0 on success).
    """
    args = parser.parse_args(argv)
    try:
        configure_process()
        return int(main(args) or 0)
    except RlrmError as err:
        if getattr(args, "debug", False):
            raise
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # unwritable dirs, missing files the library did not wrap
        if getattr(args, "debug", False):
            raise
        print(f"{parser.prog}: error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


def add_wandb_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "") -> None:
    """``--wandb``, ``--wandb-project``, ``--wandb-entity``, ``--wandb-mode``."""
    parser.add_argument("--wandb", action="store_true", help=f"log to Weights & Biases{what}")
    parser.add_argument("--wandb-project", default="rlrm")
    parser.add_argument("--wandb-entity", default=None)
    parser.add_argument("--wandb-mode", default=None, help="auto | online | offline | disabled (default auto: "
                        "offline without an API key or network)")


def wandb_options(args: argparse.Namespace, group: str | None = None) -> WandbOptions:
    """The W&B options parsed by :func:`add_wandb_args`."""
    return WandbOptions(args.wandb, args.wandb_project, args.wandb_entity, args.wandb_mode, group)


def csv_ints(text: str) -> list[int]:
    """Parse ``"256,256"`` into ``[256, 256]`` (argparse type)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 256,256, got {text!r}") from None


def configure_process() -> None:
    """CLI-wide settings: quiet W&B console output, and one torch thread (``$RLRM_TORCH_THREADS`` overrides).

    One thread because rlrm's networks are small MLPs stepped between env steps: a second intra-op thread
    buys nothing on an idle machine (PPO CartPole 20k: 4.1 s vs 4.3 s here) and is several times slower
    when the cores are shared (75.8 s vs 12.1 s with other jobs running).
    """
    os.environ.setdefault("WANDB_SILENT", "true")
    import torch

    try:
        torch.set_num_threads(max(1, int(os.environ.get("RLRM_TORCH_THREADS", "1"))))
    except ValueError:
        raise RlrmError(f"$RLRM_TORCH_THREADS must be a positive integer, got "
                        f"{os.environ['RLRM_TORCH_THREADS']!r}") from None
