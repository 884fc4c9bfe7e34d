"""Shared CLI plumbing: one-line errors, non-zero exit, traceback only with --debug."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from rlrm.errors import RlrmError


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug`` (show tracebacks) to a parser."""
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def run(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and call ``main``; print :class:`RlrmError` as one line and return exit code 2.

    :return: the process exit code (0 on success).
    """
    quiet_third_party()
    args = parser.parse_args(argv)
    try:
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


def csv_ints(text: str) -> list[int]:
    """Parse ``"256,256"`` into ``[256, 256]`` (argparse type)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 256,256, got {text!r}") from None


def quiet_third_party() -> None:
    """Silence chatty libraries for CLI runs (TensorFlow-style banners, W&B console spam)."""
    os.environ.setdefault("WANDB_SILENT", "true")
