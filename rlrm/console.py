"""End-of-run tables (the first thing a person reads)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


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


def slug(name: str) -> str:
    """A task name as a file/folder name (``Pendulum-v1/upright`` → ``Pendulum-v1__upright``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("/", "__"))
