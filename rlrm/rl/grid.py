"""Running a plan of runs: one after another in this process (the default), ``workers`` at a time in worker
processes of this machine, or as Ray tasks (:mod:`rlrm.rl.ray_backend`).

Whatever the backend, each run is :func:`rlrm.rl.runs.train_run` with the same spec (so the same folder layout,
``result.json`` and W&B run), with one torch thread (``threads``): results do not depend on the backend. The
driver gets each outcome as the run ends (``on_outcome``; the caller merges it into ``results.json``). A run that
fails is reported with its error and the others go on.

Stopping (``stop()`` turns true on the first Ctrl-C/SIGTERM): no further run starts; running worker processes get
SIGTERM and stop at their next step with a checkpoint (resumable); a ``KeyboardInterrupt`` in the driver (a
second Ctrl-C) sends a second SIGTERM, which stops them at once.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue as queue_mod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rlrm.errors import ConfigError
from rlrm.rl.folder import RunSpec
from rlrm.rl.grid_progress import GridProgress
from rlrm.rl.worker import Outcome, RunJob, run_job, worker_main

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class GridOptions:
    """How a plan is run.

    :param workers: runs at a time (``local``: worker processes, 1 = in this process; ``ray``: the most in flight,
        ``None``: as many as the cluster schedules).
    :param backend: ``local`` or ``ray``.
    :param ray_address: an existing Ray cluster (``None``: start a local Ray with ``workers * cpus_per_run`` CPUs).
    :param cpus_per_run: Ray CPUs (and torch threads) per run.
    :param env_modules: ``module:EnvId`` modules the workers may import (as the driver's ``--env-module``).
    """

    workers: int | None = 1
    backend: str = "local"
    ray_address: str | None = None
    cpus_per_run: int = 1
    env_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend {self.backend!r}: expected one of {list(BACKENDS)}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers {self.workers}: expected at least 1 run at a time")
        if self.cpus_per_run < 1:
            raise ConfigError(f"cpus_per_run {self.cpus_per_run}: expected at least 1")
        if self.backend == "local" and self.ray_address is not None:
            raise ConfigError("ray_address: only with --backend ray")

    @property
    def in_process(self) -> bool:
        return self.backend == "local" and (self.workers or 1) == 1


@contextlib.contextmanager
def open_backend(opts: GridOptions) -> Iterator[None]:
    """Before anything is created: for Ray, check it is installed, reach the cluster (a clear error within seconds if
    nothing answers) and connect, or start a local Ray; shut it down when the block ends."""
    if opts.backend != "ray":
        yield
        return
    from rlrm.rl.ray_backend import connected

    with connected(opts):
        yield


def run_grid(specs: Sequence[RunSpec], output_dir: str, opts: GridOptions, *, resume: bool = False,
             wandb: Any = None, command: str | None = None, progress: bool = True,
             stop: Callable[[], bool] = lambda: False,
             on_outcome: Callable[[Outcome], None] = lambda o: None) -> list[Outcome]:
    """Run every spec (see the module docstring); returns the outcomes in plan order (runs never started are left
    out)."""
    jobs = [RunJob(i, spec, str(output_dir), resume, wandb, command, opts.env_modules, opts.cpus_per_run)
            for i, spec in enumerate(specs)]
    if opts.backend == "ray":
        from rlrm.rl.ray_backend import run_on_ray

        outcomes = run_on_ray(jobs, opts, progress=progress, stop=stop, on_outcome=on_outcome)
    elif opts.in_process:
        outcomes = _run_here(jobs, progress, stop, on_outcome)
    else:
        outcomes = _run_processes(jobs, opts.workers or 1, progress, stop, on_outcome)
    return sorted(outcomes, key=lambda o: o.index)


def _run_here(jobs: Sequence[RunJob], progress: bool, stop: Callable[[], bool],
              on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
    """One run after another in this process, with SB3's own progress bar (the default). A plan of one run lets its
    error propagate (one clear line from the CLI); in a longer plan a failed run is reported and the next starts."""
    outcomes = []
    display = GridProgress(len(jobs), live=False)
    for job in jobs:
        if stop():
            break
        display.started(job.index, job.spec.name, job.spec.agent.n_timesteps)
        outcome = run_job(job, stop=stop, bar=progress, raise_errors=len(jobs) == 1)
        outcomes.append(outcome)
        display.finished(outcome, job.spec.name)
        on_outcome(outcome)
        if outcome.status == "interrupted":
            break
    return outcomes


def _run_processes(jobs: Sequence[RunJob], workers: int, progress: bool, stop: Callable[[], bool],
                   on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
    """``workers`` spawned worker processes, each training one run after another (imports paid once per worker); a
    worker that dies (a crash, a kill, out of memory) fails only its run and is replaced."""
    ctx = mp.get_context("spawn")  # never fork a process that holds torch threads
    messages = ctx.Queue()
    pending = list(jobs)
    idle: list[_Worker] = []
    busy: dict[int, _Worker] = {}  # run index -> the worker training it
    outcomes: list[Outcome] = []
    display = GridProgress(len(jobs), live=progress)
    stopping = 0  # SIGTERMs sent to the busy workers
    count = min(workers, len(jobs))
    try:
        with display:
            idle = [_Worker(ctx, messages) for _ in range(count)]
            while pending or busy:
                if stop() and stopping == 0:
                    stopping = _signal_all(busy, 1)
                    pending.clear()
                while pending and idle and not stop():
                    job, worker = pending.pop(0), idle.pop()
                    worker.send(job)
                    busy[job.index] = worker
                    display.started(job.index, job.spec.name, job.spec.agent.n_timesteps)
                done = _drain(messages, display, timeout=0.2)
                for index, worker in list(busy.items()):
                    if index not in {o.index for o in done} and not worker.proc.is_alive():
                        done += _drain(messages, display, timeout=1.0)  # its outcome may still be in the pipe
                        if index not in {o.index for o in done}:
                            done.append(Outcome(index, "failed", error=f"worker process exited with code "
                                                f"{worker.proc.exitcode} before reporting (killed? out of memory?)"))
                for outcome in done:
                    worker = busy.pop(outcome.index)
                    if worker.proc.is_alive():
                        idle.append(worker)
                    elif pending and not stop():
                        idle.append(_Worker(ctx, messages))
                    outcomes.append(outcome)
                    display.finished(outcome, jobs[outcome.index].spec.name)
                    on_outcome(outcome)
    except KeyboardInterrupt:
        _signal_all(busy, 2 - stopping)  # a second Ctrl-C: stop at once
        for worker in busy.values():
            worker.proc.join(timeout=30)
        raise
    finally:
        for worker in [*idle, *busy.values()]:
            worker.close()
    return outcomes


class _Worker:
    """A spawned worker process and the queue its runs come through."""

    def __init__(self, ctx: Any, messages: Any) -> None:
        self.jobs = ctx.Queue()
        self.proc = ctx.Process(target=worker_main, args=(self.jobs, messages), daemon=False, name="rlrm-worker")
        self.proc.start()

    def send(self, job: RunJob) -> None:
        self.jobs.put(job)

    def close(self) -> None:
        if self.proc.is_alive():
            self.jobs.put(None)  # no more runs: the worker exits
            self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)


def _signal_all(busy: dict[int, _Worker], times: int) -> int:
    for _ in range(max(times, 0)):
        for worker in busy.values():
            if worker.proc.is_alive():
                worker.proc.terminate()  # SIGTERM: the worker's TermStop
    return times


def _drain(messages: Any, display: GridProgress, timeout: float) -> list[Outcome]:
    """Read every message waiting (the first wait up to ``timeout``): progress goes to the display, outcomes are
    returned."""
    outcomes = []
    wait = timeout
    while True:
        try:
            msg = messages.get(timeout=wait) if wait > 0 else messages.get_nowait()
        except queue_mod.Empty:
            return outcomes
        wait = 0
        if msg[0] == "progress":
            display.advance(msg[1], msg[2])
        else:
            outcomes.append(msg[1])
