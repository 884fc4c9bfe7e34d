"""Shared CLI plumbing: one-line errors naming the flag, non-zero exit, traceback only with --debug; the end-of-run
tables (the first thing a person reads)."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rlrm.errors import RlrmError
from rlrm.tasks import allow_env_modules, env_module_of
from rlrm.tracking import WandbOptions
from rlrm.train.checks import DataWarning
from rlrm.train.job import metrics_path
from rlrm.train.loop import TrainResult


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug`` (show tracebacks) to a parser."""
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def run_main(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None = None, flags: Mapping[str, str] | None = None) -> int:
    """Parse ``argv`` and call ``main``; print :class:`RlrmError` as one line and return exit code 2.

    :param flags: library parameter names and the flags that set them (``{"output_dir": "--output-dir"}``): an
        error message that starts with a parameter name is shown with the flag instead.
    :return: the process exit code (0 on success).
    """
    args = parser.parse_args(argv)
    try:
        configure_process()
        return int(main(args) or 0)
    except RlrmError as err:
        if getattr(args, "debug", False):
            raise
        print(f"{parser.prog}: error: {in_cli_terms(str(err), flags or {})}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # unwritable dirs, missing files the library did not wrap
        if getattr(args, "debug", False):
            raise
        print(f"{parser.prog}: error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


def in_cli_terms(message: str, flags: Mapping[str, str]) -> str:
    """A library message (which names parameters) in a CLI's terms (its flags), first word only."""
    m = re.match(r"(\w+)(?=[:\s]|$)", message)  # a parameter name, not the start of a path like data/x
    if m and m.group(1) in flags:
        return flags[m.group(1)] + message[m.end():]
    return message


def add_env_module_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--env-module MODULE`` (repeatable): the only way a ``module:EnvId`` env id may import its module."""
    parser.add_argument("--env-module", action="append", default=[], metavar="MODULE",
                        help="import MODULE for module:EnvId env ids (repeatable; a module named only in a file is "
                             "never imported)")


def allow_typed_env_modules(env_modules: Sequence[str], typed_ids: Sequence[str | None] = ()) -> None:
    """Allow the modules named with ``--env-module`` and those of ``module:EnvId`` ids typed on the command line."""
    allow_env_modules([*env_modules, *filter(None, (env_module_of(t) for t in typed_ids if t))])


def add_trust_agent_file_arg(parser: argparse.ArgumentParser, what: str) -> None:
    """``--trust-agent-file``: unpickle an agent zip as SB3 does (runs any code it holds)."""
    parser.add_argument("--trust-agent-file", action="store_true",
                        help=f"unpickle {what} as SB3 does: runs any code it holds; only for files you trust")


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
    buys nothing on an idle machine and is several times slower when the cores are shared (measured in
    benchmarks/RESULTS.md).
    """
    os.environ.setdefault("WANDB_SILENT", "true")
    import torch

    try:
        torch.set_num_threads(max(1, int(os.environ.get("RLRM_TORCH_THREADS", "1"))))
    except ValueError:
        raise RlrmError(f"$RLRM_TORCH_THREADS must be a positive integer, got "
                        f"{os.environ['RLRM_TORCH_THREADS']!r}") from None


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers short and aligned; NaN/None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 10 ** -digits):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                digits: int = 3, caption: str | None = None) -> None:
    """Print ``rows`` (dicts) as a table with ``columns`` (default: the first row's keys)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    table = Table(title=title, title_justify="left", header_style="bold", caption=caption, caption_justify="left")
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*(fmt(r.get(c), digits) for c in columns))
    console = Console()
    # Off a terminal (CI logs, pipes) rich assumes 80 columns and wraps cells; let the table be as wide as it is.
    Console(width=console.width if console.is_terminal else 200).print(table)


METRIC_COLUMNS = ["task", "n_train", "n_val", "mse", "r2", "spearman", "ranking_acc"]
#: shown when some task has them: EPIC distance to the labels' reward function, the single-task comparison
OPTIONAL_METRIC_COLUMNS = ["epic", "pref_acc", "n_pairs_val", "single_task_r2", "negative_transfer"]


@contextmanager
def show_data_warnings(prog: str) -> Iterator[None]:
    """Show each :class:`DataWarning` raised inside the block as one stderr line, ``<prog>: warning: ...``, every
    time (other warnings as Python shows them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        default = warnings.showwarning

        def show(message: Any, category: type[Warning], *rest: Any, **kwargs: Any) -> None:
            if issubclass(category, DataWarning):
                print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)
            else:
                default(message, category, *rest, **kwargs)

        warnings.showwarning = show
        yield


def print_metrics(out: Path, result: TrainResult) -> None:
    """The held-out metrics table of a trained model."""
    rows = [{"task": t, **m} for t, m in result.metrics.items()]
    extra = [c for c in OPTIONAL_METRIC_COLUMNS if any(c in r for r in rows)]
    adaptation = result.model.meta.get("adaptation")
    mode = "span of earlier heads" if adaptation and adaptation["mode"] == "span" else (
        f"{adaptation['mode']} encoder" if adaptation else "")
    how = (f"new tasks: {mode}" + (f" (chosen: {adaptation.get('rule', 'lowest validation loss')})"
                                   if adaptation["requested"] == "auto" else "")
           + f", validated by {adaptation['validation']}; ") if adaptation else ""
    print_table(f"Reward model {out} (held-out episodes; {how}best epoch {result.best_epoch}/{len(result.history)}; "
                f"metrics in {metrics_path(out)})", rows, METRIC_COLUMNS + extra,
                caption="r2/spearman '-': the labels are constant there (mse tells the fit)"
                + ("; preference-only tasks: no mse/r2 (their reward is known up to shift and scale), pref_acc on "
                   "held-out pairs" if "pref_acc" in extra else "")
                + ("; negative_transfer: held-out r2 below the task's single-task model's by > 0.01"
                   if "negative_transfer" in extra else ""))
