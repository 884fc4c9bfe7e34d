"""One run of a grid inside a worker (a process of this machine, or a Ray task): the run's outcome as plain data,
its progress sent to the driver, and the process settings of a worker (its torch threads, signals, env modules).

Kept free of torch/SB3 imports at module level: a spawned worker sets its thread count before torch loads.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlrm.errors import RlrmError
from rlrm.tracking import WandbOptions

#: seconds between a worker's progress messages
REPORT_SECONDS = 1.0


@dataclass
class Outcome:
    """How one run of a grid ended: ``done`` (``result``), ``interrupted`` (stopped; ``resumable`` says whether
    ``--resume`` continues it) or ``failed`` (``error``: one line; ``detail``: the traceback of an unexpected one)."""

    index: int
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    resumable: bool = True
    detail: str | None = None


@dataclass(frozen=True)
class RunJob:
    """What a worker needs to train run ``index`` of a plan (the spec travels as a :class:`RunSpec`)."""

    index: int
    spec: Any  # RunSpec (typed loosely: this module does not import torch-bound modules at import time)
    output_dir: str
    resume: bool = False
    wandb: WandbOptions | None = None
    command: str | None = None
    env_modules: tuple[str, ...] = ()
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def set_threads(threads: int) -> None:
    """Limit the BLAS/OpenMP pools of this process before torch is imported, and torch's own."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_job(job: RunJob, progress: Callable[[int, int, int], None] | None = None,
            stop: Callable[[], bool] = lambda: False, *, bar: bool = False, raise_errors: bool = False) -> Outcome:
    """Train ``job``'s run (see :func:`rlrm.rl.runs.train_run`) and say how it ended.

    :param progress: called as ``progress(index, timesteps, total)`` about once a second while it trains.
    :param bar: SB3's progress bar (a run in the driver's own process).
    :param raise_errors: let a failure propagate instead of returning it as a ``failed`` outcome.
    """
    from rlrm.rl.runs import RunInterrupted, train_run
    from rlrm.tasks import allow_env_modules

    allow_env_modules(job.env_modules)
    callbacks = [_progress_callback(job.index, job.spec.agent.n_timesteps, progress)] if progress else []
    try:
        result = train_run(job.spec, Path(job.output_dir), resume=job.resume, wandb=job.wandb, progress=bar,
                           command=job.command, stop=stop, callbacks=callbacks)
        return Outcome(job.index, "done", result=result)
    except RunInterrupted as err:
        return Outcome(job.index, "interrupted", error=str(err), resumable=err.resumable)
    except Exception:
        if raise_errors:
            raise
        return _failed(job.index)


def _failed(index: int) -> Outcome:
    """The outcome of the exception being handled: an :class:`RlrmError` is its one line, anything else its type,
    first line and traceback."""
    err = sys.exc_info()[1]
    if isinstance(err, RlrmError):
        return Outcome(index, "failed", error=str(err))
    first = str(err).splitlines()[0] if str(err) else ""
    return Outcome(index, "failed", error=f"{type(err).__name__}: {first}", detail=traceback.format_exc())


def _progress_callback(index: int, total: int, report: Callable[[int, int, int], None]) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class ReportProgress(BaseCallback):
        """Calls ``report(index, timesteps, total)`` at most once per :data:`REPORT_SECONDS`."""

        def __init__(self) -> None:
            super().__init__()
            self.last = 0.0

        def _on_step(self) -> bool:
            now = time.monotonic()
            if now - self.last >= REPORT_SECONDS:
                self.last = now
                report(index, int(self.num_timesteps), total)
            return True

    return ReportProgress()


class TermStop:
    """A worker process's stop request: the driver sends SIGTERM; the first asks the run to stop at its next step
    (checkpointed, resumable), a second raises ``KeyboardInterrupt`` (stop at once). SIGINT is ignored: a Ctrl-C
    in a terminal reaches the whole process group, and the driver forwards it once. A worker whose driver died
    (killed) stops the same way, instead of training on as an orphan."""

    def __init__(self) -> None:
        self.requested = False
        self.parent = os.getppid()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __call__(self) -> bool:
        if os.getppid() != self.parent:
            self.requested = True
        return self.requested


def _next_job(jobs: Any, stop: TermStop) -> RunJob | None:
    """The next run from the driver, or ``None`` when there is none (or the driver is gone)."""
    import queue

    while not stop():
        try:
            return jobs.get(timeout=1.0)
        except queue.Empty:
            continue
    return None


def worker_main(jobs: Any, messages: Any) -> None:
    """Entry point of a local worker process: train the runs that come through ``jobs`` (until ``None``), sending
    progress and each outcome through ``messages``. Its threads are set once, from the first run."""
    stop = TermStop()
    os.environ.setdefault("WANDB_SILENT", "true")
    threads = None

    def progress(index: int, timesteps: int, total: int) -> None:
        messages.put(("progress", index, timesteps, total))

    while (job := _next_job(jobs, stop)) is not None:
        if threads is None:
            threads = job.threads
            set_threads(threads)
        try:
            outcome = run_job(job, progress, stop)
        except KeyboardInterrupt:  # a second SIGTERM outside train_run's own handling
            outcome = Outcome(job.index, "interrupted", error="stopped at once", resumable=True)
        messages.put(("outcome", outcome))
        if stop.requested:
            return
