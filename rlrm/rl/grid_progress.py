"""What a person watching a grid sees: on a terminal one live line per running run under an overall bar (rich);
in a log file (or with ``live=False``) one plain line when a run starts or ends, and a summary of the running runs
every minute."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rlrm.rl.worker import Outcome

#: seconds between the plain-text summaries of running runs
SUMMARY_SECONDS = 60.0


class GridProgress:
    """Progress of a plan of ``total`` runs (a context manager: the live display runs inside it)."""

    def __init__(self, total: int, *, live: bool = True) -> None:
        self.total = total
        self.done = self.failed = 0
        self.names: dict[int, str] = {}
        self.steps: dict[int, tuple[int, int]] = {}
        self.started_at: dict[int, float] = {}
        self.console = Console(stderr=True)
        self.live = live and self.console.is_terminal
        self.last_summary = time.monotonic()
        self._progress: Progress | None = None
        self._tasks: dict[int, Any] = {}
        self._overall: Any = None

    def __enter__(self) -> GridProgress:
        if self.live:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=self.console)
            self._progress.start()
            self._overall = self._progress.add_task(self._overall_text(), total=self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _overall_text(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"[bold]grid[/bold]: {self.done}/{self.total} runs done{failed}, {len(self.names)} running"

    def _say(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def started(self, index: int, name: str, timesteps: int) -> None:
        self.names[index], self.steps[index], self.started_at[index] = name, (0, timesteps), time.monotonic()
        self._say(f"[{index + 1}/{self.total}] {name}: {timesteps:,} steps")
        if self._progress is not None:
            self._tasks[index] = self._progress.add_task(f"  {name}", total=timesteps)
            self._progress.update(self._overall, description=self._overall_text())

    def advance(self, index: int, timesteps: int) -> None:
        if index not in self.names:
            return
        self.steps[index] = (timesteps, self.steps[index][1])
        if self._progress is not None and index in self._tasks:
            self._progress.update(self._tasks[index], completed=timesteps)
        elif time.monotonic() - self.last_summary >= SUMMARY_SECONDS:
            self.last_summary = time.monotonic()
            running = " · ".join(f"{self.names[i]} {100 * s / max(t, 1):.0f}%" for i, (s, t) in self.steps.items())
            self._say(f"running ({self.done}/{self.total} done): {running}")

    def finished(self, outcome: Outcome, name: str) -> None:
        seconds = time.monotonic() - self.started_at.pop(outcome.index, time.monotonic())
        self.names.pop(outcome.index, None)
        self.steps.pop(outcome.index, None)
        if outcome.status == "done":
            self.done += 1
            r = outcome.result or {}
            mean = r.get("true_mean")
            text = f"true return {mean:.1f}" if isinstance(mean, float) else "done"
            self._say(f"[{outcome.index + 1}/{self.total}] {name}: {text} ({seconds:.0f} s)")
        elif outcome.status == "failed":
            self.failed += 1
            self._say(f"[{outcome.index + 1}/{self.total}] {name}: FAILED: {outcome.error}")
        else:
            self._say(f"[{outcome.index + 1}/{self.total}] {name}: {outcome.error}")
        if self._progress is not None:
            task = self._tasks.pop(outcome.index, None)
            if task is not None:
                self._progress.remove_task(task)
            self._progress.update(self._overall, completed=self.done + self.failed, description=self._overall_text())
