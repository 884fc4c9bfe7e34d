"""Agent-training wall time on the learned reward against the true reward (PPO, CartPole-v1, 100k steps).

Both runs go through ``rlrm.rl.runs.train_run`` with the same ``RunSpec`` except the reward source (as
``train_agent`` plans them: the true-reward run also gets the model file, used only to report learned
returns at evaluation), the same seed, progress off, periodic evaluation off (``eval_freq`` past the end)
and a small final evaluation. The reward model is trained quickly on 10k random CartPole transitions.

The number compared is ``train_seconds`` from the run's result (the wall time of ``agent.learn`` only:
env stack construction and the final evaluation are outside it); the process CPU time of the whole
``run`` call is shown beside it (less sensitive to other processes than wall time). Runs alternate
(learned, true, learned, true, ...) so that load from other processes hits both; each pair gives a
ratio, and the median ratio is reported. A short untimed run of each kind comes first (warm-up).

Torch runs with ONE thread by default: on a 2-core machine shared with other work, a second intra-op
thread makes every small op wait for a busy core (we measured 25 s to 230 s for the same 100k-step run),
which swamps the difference being measured. ``--threads 0`` keeps torch's default.

    python benchmarks/agent_walltime.py              # 2 pairs of 100k-step runs (~3-4 min on 2 cores)
    python benchmarks/agent_walltime.py --quick      # 1 pair of 10k-step runs

CartPole's reward is +1 on every step, so the trained model predicts exactly 1.0 (constant labels, see
``RewardModel.set_label_scale``) while still running its whole network each step: both agents take the
same path, and the ratio measures only the cost of the learned reward.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import rlrm.rl.envs
from rlrm import model as rm
from rlrm.data.rollout import collect
from rlrm.rl.folder import RunSpec
from rlrm.rl.hyperparams import load_spec
from rlrm.rl.runs import train_run
from rlrm.tasks import Task
from rlrm.train.loop import TrainConfig, train_reward_model
from rlrm.wrappers import VecLearnedReward


class TimedVecLearnedReward(VecLearnedReward):
    """VecLearnedReward that adds up the time of its step_wait beyond the wrapped env's (the reward's cost)."""

    outer = 0.0
    inner = 0.0
    calls = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        inner_wait = self.venv.step_wait

        def timed_wait():  # found before the class method: VecLearnedReward.step_wait calls self.venv.step_wait()
            t0 = time.perf_counter()
            out = inner_wait()
            TimedVecLearnedReward.inner += time.perf_counter() - t0
            return out

        self.venv.step_wait = timed_wait

    def step_wait(self):
        t0 = time.perf_counter()
        out = super().step_wait()
        TimedVecLearnedReward.outer += time.perf_counter() - t0
        TimedVecLearnedReward.calls += 1
        return out


def reward_model(task: Task, out: Path, steps: int) -> Path:
    ds = collect(task, steps, n_envs=8, seed=1000, progress=False)
    res = train_reward_model([ds], TrainConfig(epochs=5, seed=0), progress=False)
    # CartPole's labels are constant: no epoch runs (the head predicts +1 exactly), but every env step still
    # pays the full NumPy reward path, which is what this benchmark times
    print(f"reward model: {steps} random transitions, {len(res.history)} epochs, "
          f"val R² {res.metrics[task.name]['r2']:.3f}, {res.seconds:.1f} s")
    return rm.save(res.model, out / "reward_model.safetensors")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: one pair of 10k-step runs")
    p.add_argument("--timesteps", type=int, default=None, help="agent steps per run (default 100000)")
    p.add_argument("--pairs", type=int, default=None, help="(learned, true) pairs (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--true-first", action="store_true", help="order true, learned in each pair")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)")
    p.add_argument("--out-dir", type=Path, default=Path("/tmp/rlrm_bench/agent_walltime"),
                   help="a fresh timestamped folder is made inside for this invocation")
    args = p.parse_args()
    timesteps = args.timesteps or (10_000 if args.quick else 100_000)
    pairs = args.pairs or (1 if args.quick else 2)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = args.out_dir / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    print(f"{platform.machine()}, python {platform.python_version()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}; runs in {out}")

    task = Task("CartPole-v1", "CartPole-v1")
    model_path = reward_model(task, out, 10_000)
    agent = load_spec("ppo", task, {"n_timesteps": timesteps})
    runs: list[tuple[str, float, float, float]] = []  # (reward, learn wall s, run() CPU s, run() wall s)
    in_reward: list[tuple[float, int, float]] = []
    rlrm.rl.envs.VecLearnedReward = TimedVecLearnedReward  # make_vec_env builds this one (timing only)
    order = ("true", "learned") if args.true_first else ("learned", "true")
    # untimed warm-up of both kinds: the first run in a process pays one-off costs (imports, first calls)
    warm = load_spec("ppo", task, {"n_timesteps": 2048})
    for reward in order:
        train_run(RunSpec(task, warm, seed=args.seed, reward=reward, reward_model=str(model_path), eval_freq=10**9,
                    eval_episodes=1), out / f"warmup_{reward}", progress=False, command="benchmarks/agent_walltime.py")
    for k in range(pairs):
        for reward in order:
            spec = RunSpec(task, agent, seed=args.seed, reward=reward, reward_model=str(model_path),
                           eval_freq=10 * timesteps, eval_episodes=2)
            timed = TimedVecLearnedReward
            timed.outer = timed.inner = 0.0
            timed.calls = 0
            t0, c0 = time.perf_counter(), time.process_time()
            res = train_run(spec, out / f"pair{k}_{reward}", progress=False, command="benchmarks/agent_walltime.py")
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs.append((reward, res["train_seconds"], cpu, wall))
            extra = ""
            if reward == "learned":  # includes the final evaluation env's steps (~4% of them), outside learn()
                in_reward.append((timed.outer - timed.inner, timed.calls, res["train_seconds"]))
                extra = (f", in the reward wrapper {timed.outer - timed.inner:.2f} s over {timed.calls} vector steps "
                         f"({(timed.outer - timed.inner) / timed.calls * 1e6:.1f} us each)")
            print(f"  pair {k + 1}/{pairs} {reward:>7}: learn {res['train_seconds']:.1f} s, run() {wall:.1f} s wall, "
                  f"{cpu:.1f} s CPU, true return {res['true_mean']:.1f}{extra}", flush=True)

    print(f"\nPPO CartPole-v1, {timesteps:,} steps, {agent.n_envs} envs, seed {args.seed}, "
          f"order {' '.join(order)} x {pairs}")
    print(f"{'pair':<6} {'learn wall s (learned)':>23} {'(true)':>8} {'ratio':>7} "
          f"{'run() CPU s (learned)':>22} {'(true)':>8} {'ratio':>7}")
    ratios, cpu_ratios = [], []
    for k in range(pairs):
        a, b = runs[2 * k], runs[2 * k + 1]
        (_, ll, lc, _), (_, tl, tc, _) = (a, b) if a[0] == "learned" else (b, a)
        ratios.append(ll / tl)
        cpu_ratios.append(lc / tc)
        print(f"{k + 1:<6} {ll:>23.1f} {tl:>8.1f} {ll / tl:>6.3f}x {lc:>22.1f} {tc:>8.1f} {lc / tc:>6.3f}x")
    # every two neighbouring runs (L T, T L, L T, ...): a slow drift of the machine's load cancels out
    adjacent = [(a[1] / b[1]) if a[0] == "learned" else (b[1] / a[1]) for a, b in itertools.pairwise(runs)]
    med = statistics.median(ratios)
    spent = statistics.median(s / (learn - s) for s, _, learn in in_reward)
    print(f"time inside VecLearnedReward (beyond the env step) during learned runs: median {spent * 100:.2f}% of "
          f"the rest of learn(): the reward's cost alone predicts a ratio of {1 + spent:.3f}x")
    print(f"median learned/true ratio: learn wall {med:.3f}x per pair, {statistics.median(adjacent):.3f}x over "
          f"neighbouring runs ({', '.join(f'{r:.3f}' for r in adjacent)}); "
          f"run() CPU {statistics.median(cpu_ratios):.3f}x")
    print(f"target: learned/true wall time <= 1.05: {med:.3f}x [{'met' if med <= 1.05 else 'NOT met'}]")

if __name__ == "__main__":
    main()
