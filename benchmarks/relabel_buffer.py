"""Seconds to relabel a full 1M-transition replay buffer with :func:`rlrm.rl.relabel.relabel_buffer` (issue #11).

HalfCheetah-v5 shapes (17-d observations, 6-d actions; the spaces are built directly, MuJoCo is not needed): an SB3
``ReplayBuffer`` of ``--rows`` transitions over ``--n-envs`` envs, filled with random data (1% of transitions end an
episode, half of those by a time limit), and the default 64x64 model's NumPy reward function (random weights, a
feature standardization near the data's, the ``auto`` dtype). Target: at most 2 s for 1M rows.

Each configuration is timed ``--repeats`` times; the script prints the median and the spread (min-max), and checks
4,096 relabelled rows against ``model.predict`` (torch) within 1e-5. ``--sweep`` also times other batch sizes and
the float64 path. The matrix products dominate, and OpenBLAS's threads matter on a busy machine: the first line
prints ``OPENBLAS_NUM_THREADS`` (set it in the environment to compare, e.g. ``OPENBLAS_NUM_THREADS=1``).

    python benchmarks/relabel_buffer.py            # full run
    python benchmarks/relabel_buffer.py --quick    # smoke run (100,000 rows, 2 repeats)
    OPENBLAS_NUM_THREADS=1 python benchmarks/relabel_buffer.py --sweep
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import time

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer

from rlrm.model.network import ModelConfig, RewardModel
from rlrm.reward_fn import RewardFn
from rlrm.rl.relabel import relabel_buffer
from rlrm.tasks import Task

TARGET_S = 2.0
OBS = spaces.Box(-np.inf, np.inf, (17,), np.float64)  # as HalfCheetah-v5 (SB3 stores float64 observations then)
ACT = spaces.Box(-1.0, 1.0, (6,), np.float32)
TASK = "HalfCheetah-v5"


def _buffer(rows: int, n_envs: int, seed: int = 0) -> ReplayBuffer:
    buf = ReplayBuffer(rows, OBS, ACT, device="cpu", n_envs=n_envs)
    rng = np.random.default_rng(seed)
    for arr in (buf.observations, buf.next_observations):
        arr[...] = rng.normal(size=arr.shape)
    buf.actions[...] = rng.uniform(-1, 1, size=buf.actions.shape)
    ended = rng.random(buf.dones.shape) < 0.01
    buf.dones[...] = ended
    buf.timeouts[...] = ended & (rng.random(ended.shape) < 0.5)
    buf.full, buf.pos = True, 0
    return buf


def _model(seed: int = 0) -> RewardModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = RewardModel(ModelConfig())
    model.add_task(Task(TASK, TASK), OBS, ACT)
    (gid, group), = model.groups.items()
    model.set_normalization(gid, rng.normal(scale=0.1, size=group.dim), rng.uniform(0.5, 2.0, size=group.dim))
    model.set_label_scale(TASK, -1.0, 3.0)
    return model.eval()


def _time(buf: ReplayBuffer, fn: RewardFn, batch_size: int, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        relabel_buffer(buf, fn, batch_size=batch_size, version=1)
        out.append(time.perf_counter() - t)
    return out


def _check(buf: ReplayBuffer, model: RewardModel, n: int = 4096) -> float:
    """Largest |relabelled - model.predict| over ``n`` random rows."""
    rows = np.random.default_rng(1).choice(buf.rewards.size, n, replace=False)
    flat = buf.rewards.reshape(-1)
    obs, nxt = (a.reshape(-1, 17)[rows] for a in (buf.observations, buf.next_observations))
    act = buf.actions.reshape(-1, 6)[rows]  # [-1, 1] bounds: SB3's rescaling is the identity
    term = (buf.dones.reshape(-1)[rows] > 0) & ~(buf.timeouts.reshape(-1)[rows] > 0)
    return float(np.max(np.abs(flat[rows] - model.predict(TASK, obs, act, nxt, term))))


def _describe(name: str, times: list[float]) -> str:
    med = statistics.median(times)
    verdict = "meets" if max(times) <= TARGET_S else ("misses" if min(times) > TARGET_S else "borderline")
    return (f"{name:<28} median {med:.3f} s  spread {min(times):.3f}-{max(times):.3f} s  "
            f"({len(times)} runs; {verdict}, target {TARGET_S:.0f} s)")


def _machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines() if "Model name" in line)
    except (OSError, subprocess.CalledProcessError, StopIteration):
        cpu = "unknown CPU"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cores = len(os.sched_getaffinity(0))
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    return (f"{cpu}, {cores} cores, OPENBLAS_NUM_THREADS={blas}, numpy {np.__version__}, {datetime.date.today()}, "
            f"commit {commit}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--n-envs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=65536)
    ap.add_argument("--sweep", action="store_true", help="also time other batch sizes and both dtypes")
    ap.add_argument("--quick", action="store_true", help="100,000 rows, 2 repeats")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.repeats = 100_000, 2
    print(_machine())
    buf = _buffer(args.rows, args.n_envs)
    model = _model()
    fn = model.reward_fn(TASK)
    print(f"{args.rows:,} rows ({buf.buffer_size:,} steps x {args.n_envs} envs), 17-d obs, 6-d action, "
          f"default {model.config.encoder} model, NumPy dtype {fn.dtype}")
    relabel_buffer(buf, fn, batch_size=args.batch_size)  # warm-up (plans the batch shapes)
    print(_describe(f"batch {args.batch_size}", _time(buf, fn, args.batch_size, args.repeats)))
    print(f"max |relabelled - model.predict| over 4,096 rows: {_check(buf, model):.2e}")
    if args.sweep:
        runs = [("float32", bs) for bs in (4096, 16384, 65536, 262144)] + [("float64", args.batch_size)]
        for dtype, bs in runs:
            f = model.reward_fn(TASK, dtype=dtype)
            relabel_buffer(buf, f, batch_size=bs)
            print(_describe(f"{dtype} batch {bs}", _time(buf, f, bs, max(3, args.repeats // 2))))


if __name__ == "__main__":
    main()
