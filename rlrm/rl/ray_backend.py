"""``--backend ray``: each run of a grid as a Ray task, on a local Ray (started here) or an existing cluster.

Ray is optional (``pip install 'rlrm[ray]'``) and imported only here. What travels:

- each run's :class:`~rlrm.rl.folder.RunSpec` (small), with the task's arguments;
- every reward-model file once, through Ray's object store: a worker that does not see the driver's file (another
  node) writes the bytes to ``$TMPDIR/rlrm-models/<sha256>.safetensors`` and trains on that copy (checked by its
  SHA-256, as every run checks its model);
- results come back to the driver, which merges them into ``results.json``. The run folders are written by the
  workers at ``output_dir``: on a cluster that path must be a shared filesystem (NFS, a mounted bucket), as Ray Tune
  asks of its ``storage_path``.

Progress and stopping go through one tiny Ray actor (:class:`_Control`; no CPU reserved): each run reports its
steps to it about once a second and gets the stop flag back in the same call; the driver reads every run's steps
from it twice a second. The first Ctrl-C sets the flag, so running runs stop at their next step with a checkpoint;
a second one cancels the tasks (Ray raises ``KeyboardInterrupt`` in them: they stop at once and keep their last
checkpoint). (One actor rather than a flag actor plus a ``ray.util.queue.Queue``, itself an actor: on a small
machine each actor is one more process sharing the runs' cores.)
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlrm import atomic
from rlrm.errors import ConfigError
from rlrm.rl.grid_progress import GridProgress
from rlrm.rl.worker import Outcome, RunJob, run_job, set_threads

#: seconds to reach a cluster's address before giving up
CONNECT_TIMEOUT = 10.0


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("backend ray: Ray is not installed; install it with pip install 'rlrm[ray]' (or "
                          "pip install ray)") from None
    return ray


def check_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """A clear error within ``timeout`` seconds if nothing answers at a cluster address (``HOST:PORT``,
    ``ray://HOST:PORT``; ``auto`` is left to Ray, which fails fast when no local cluster runs)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray_address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise ConfigError(f"ray_address {address!r}: cannot reach the Ray cluster within {timeout:.0f} s "
                          f"({err.strerror or type(err).__name__}); is `ray start --head` running there?") from None


@contextlib.contextmanager
def connected(opts: Any) -> Iterator[None]:
    """Ray imported, the cluster reached and connected to (or a local Ray started) for the block; shut down after
    if it was started here."""
    ray = import_ray()
    if opts.ray_address is not None:
        check_address(opts.ray_address)
    started_here = not ray.is_initialized()
    if started_here:
        _init(ray, opts)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def run_on_ray(jobs: Sequence[RunJob], opts: Any, *, progress: bool, stop: Callable[[], bool],
               on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
    """Run ``jobs`` as Ray tasks (see the module docstring); outcomes as they end. Connects for the call unless a
    connection is open (:func:`connected`)."""
    with connected(opts):
        return _run(import_ray(), jobs, opts, progress, stop, on_outcome)


def _init(ray: Any, opts: Any) -> None:
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if opts.ray_address is None:
        cpus = (opts.workers or os.cpu_count() or 1) * opts.cpus_per_run
        kwargs["num_cpus"] = cpus
    try:
        ray.init(address=opts.ray_address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        if opts.ray_address is None:
            raise ConfigError(f"backend ray: a local Ray could not start ({why})") from None
        raise ConfigError(f"ray_address {opts.ray_address!r}: Ray could not start or connect ({why})") from None


def _run(ray: Any, jobs: Sequence[RunJob], opts: Any, progress: bool, stop: Callable[[], bool],
         on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
    models = {m: ray.put(Path(m).read_bytes()) for m in {j.spec.reward_model for j in jobs if j.spec.reward_model}}
    control = ray.remote(num_cpus=0)(_Control).remote()
    task = ray.remote(_ray_task).options(num_cpus=opts.cpus_per_run, max_retries=0)
    pending, running, outcomes = list(jobs), {}, []
    limit = opts.workers or len(jobs)
    display = GridProgress(len(jobs), live=progress)
    stopping = False
    try:
        with display:
            while pending or running:
                if stop() and not stopping:
                    stopping = True
                    ray.get(control.set_stop.remote())
                    pending.clear()
                while pending and len(running) < limit and not stopping:
                    job = pending.pop(0)
                    ref = task.remote(job, models.get(job.spec.reward_model), control)
                    running[ref] = job
                    display.started(job.index, job.spec.name, job.spec.agent.n_timesteps)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for index, steps in ray.get(control.steps.remote()).items():
                    display.advance(index, steps)
                for ref in ready:
                    job = running.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as err:
                        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                        outcome = Outcome(job.index, "failed", error=f"Ray task failed: {first}")
                    outcomes.append(outcome)
                    display.finished(outcome, job.spec.name)
                    on_outcome(outcome)
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref)
        deadline = time.monotonic() + 30
        for ref in list(running):
            with contextlib.suppress(Exception):  # cancelled or stopped: its checkpoint is what is left
                ray.get(ref, timeout=max(deadline - time.monotonic(), 0.1))
        raise
    return outcomes


class _Control:
    """The grid's progress and stop request, shared by its tasks (a Ray actor)."""

    def __init__(self) -> None:
        self.stop = False
        self.done: dict[int, int] = {}

    def set_stop(self) -> None:
        self.stop = True

    def report(self, index: int, timesteps: int) -> bool:
        """A run's steps so far; whether it should stop."""
        self.done[index] = timesteps
        return self.stop

    def steps(self) -> dict[int, int]:
        return dict(self.done)


def _ray_task(job: RunJob, model: bytes | None, control: Any) -> Outcome:
    """One run inside a Ray worker."""
    import ray

    set_threads(job.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    if model is not None:
        job = replace(job, spec=_local_model(job.spec, model))
    requested = {"stop": False}

    def progress(index: int, timesteps: int, total: int) -> None:
        requested["stop"] = bool(ray.get(control.report.remote(index, timesteps)))

    return run_job(job, progress, lambda: requested["stop"])


def _local_model(spec: Any, data: bytes) -> Any:
    """The spec with a reward model path this worker can read: the driver's file when it is here and identical,
    else a cached copy of the bytes."""
    path = Path(spec.reward_model)
    if path.is_file() and atomic.file_sha256(path) == spec.reward_model_sha256:
        return spec
    cache = Path(tempfile.gettempdir()) / "rlrm-models"
    cache.mkdir(parents=True, exist_ok=True)
    local = cache / f"{spec.reward_model_sha256}.safetensors"
    if not local.is_file() or atomic.file_sha256(local) != spec.reward_model_sha256:
        atomic.write_bytes(local, data)
    return replace(spec, reward_model=str(local))
