"""Reward-training throughput of ``train_reward_model`` against a bare torch loop, and dataset load time.

(a) Throughput (transitions/s) on the 4 classic tasks (CartPole-v1, Acrobot-v1, Pendulum-v1,
    MountainCarContinuous-v0), 20k random transitions each. ``TrainResult.transitions_per_s`` counts only
    the time of the optimization steps (validation, checkpoint copies and final metrics are outside it).
    The bare loop uses a model of the same config and the same feature tensors (``model.features`` on the
    same train split), the same batch size (split evenly over the tasks, as ``balanced`` sampling does) and
    the same number of steps: sample indices, forward per task, MSE, one Adam step. The two run
    interleaved, round after round (the order flips each round); the ratio is the median of per-round
    ratios.

    Ablations (the bare loop plus one thing the trainer does, 100-step rounds in rotating order) say
    where a gap comes from.

    Torch runs with one thread by default (``--threads 0``: torch's default, 2 here): with another
    process on the second core, two intra-op threads stall each other and a round's throughput drops
    from ~150k/s to ~1k-30k/s, which drowns the ratio.

(b) ``TransitionDataset.load`` time for 1M Pendulum-v1 transitions (collected once with the random policy,
    saved under ``--data-dir``; later runs reuse it). Files are in the page cache (warm), as after a save.

    python benchmarks/train_throughput.py            # full run (~5 min the first time, collection included)
    python benchmarks/train_throughput.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from rlrm.data.dataset import TransitionDataset
from rlrm.data.rollout import collect
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.tasks import Task
from rlrm.train.loop import TrainConfig, split_seed, train_reward_model

TASKS = ["CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCarContinuous-v0"]


def datasets(data_dir: Path, steps: int) -> list[TransitionDataset]:
    """20k random transitions per task, collected once and cached under ``data_dir``."""
    out = []
    for i, name in enumerate(TASKS):
        path = data_dir / f"{name}_{steps}"
        if (path / "manifest.json").exists():
            out.append(TransitionDataset.load(path))
            continue
        ds = collect(Task(name, name), steps, n_envs=8, seed=1000 + i, progress=False)
        ds.save(path)
        out.append(ds)
    return out


class BareLoop:
    """A minimal loop over the same model config and feature tensors as the trainer."""

    def __init__(self, dss: list[TransitionDataset], cfg: TrainConfig, extras: tuple[str, ...] = ()) -> None:
        # like the trainer, leave out tasks whose labels are constant (they predict their mean and take no part in
        # the loss): the same work per step on both sides
        dss = [ds for ds in dss if float(np.std(ds.label)) > 1e-8]
        self.dss, self.cfg, self.extras = dss, cfg, set(extras)
        probe = RewardModel(ModelConfig())
        self.x, self.y, self.names = [], [], []
        for ds in dss:  # the trainer's split and features
            probe.add_task(ds.task, ds.obs_space, ds.action_space)
            train, _ = ds.split_by_episode(cfg.val_frac, seed=split_seed(ds.task.name, cfg.seed))
            self.x.append(torch.from_numpy(probe.features(ds.task.name, train.obs, train.action, train.next_obs,
                                                          train.terminated)))
            self.y.append(torch.from_numpy(np.asarray(train.label)))
            self.names.append(ds.task.name)
        self.share = cfg.batch_size // len(dss)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.perm = [torch.randperm(len(y), generator=self.gen) for y in self.y]
        self.pos = [0] * len(self.y)

    def _fresh_model(self) -> tuple[RewardModel, torch.optim.Optimizer]:
        """A new model and optimizer each run, as each trainer call has (same seed, normalization, label scale)."""
        torch.manual_seed(self.cfg.seed)
        model = RewardModel(ModelConfig())
        for ds in self.dss:
            model.add_task(ds.task, ds.obs_space, ds.action_space)
        for gid in model.groups:
            x = torch.cat([x for x, n in zip(self.x, self.names) if model.tasks[n].group == gid]).double()
            model.set_normalization(gid, x.mean(0).numpy(), x.std(0, unbiased=False).numpy())
        for n, y in zip(self.names, self.y):
            model.set_label_scale(n, float(y.mean()), float(y.std(unbiased=False)))
        self.scales = [model.tasks[n].label_std for n in self.names]
        model.train()
        return model, torch.optim.Adam(model.parameters(), lr=self.cfg.lr)

    def _indices(self, t: int) -> torch.Tensor:
        if "randperm indices" in self.extras:  # the trainer's shuffled passes (see loop._next_indices)
            n, k = len(self.y[t]), self.share
            if self.pos[t] + k > n:
                self.perm[t], self.pos[t] = torch.randperm(n, generator=self.gen), 0
            idx = self.perm[t][self.pos[t]:self.pos[t] + k]
            self.pos[t] += k
            return idx
        return torch.randint(len(self.y[t]), (self.share,), generator=self.gen)

    def run(self, steps: int) -> float:
        """Transitions per second over ``steps`` optimization steps of a fresh model."""
        model, opt = self._fresh_model()
        trainer_loss, sync = "trainer loss" in self.extras, "float(loss)" in self.extras
        mse = torch.nn.functional.mse_loss
        running = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            if trainer_loss:  # zeros() start, / label_std, share weighting (loop.py's loss)
                loss = torch.zeros(())
                for t, name in enumerate(self.names):
                    idx = self._indices(t)
                    err = (model(name, self.x[t][idx]) - self.y[t][idx]) / self.scales[t]
                    loss = loss + (1.0 / len(self.names)) * (err * err).mean()
            else:
                loss = None
                for t, name in enumerate(self.names):
                    idx = self._indices(t)
                    term = mse(model(name, self.x[t][idx]), self.y[t][idx])
                    loss = term if loss is None else loss + term
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sync:  # the trainer's running loss (one sync per step)
                running += float(loss.detach())
        return steps * self.share * len(self.names) / (time.perf_counter() - t0)


def bench_training(dss: list[TransitionDataset], rounds: int, epochs: int) -> dict[str, list[float]]:
    """``train_reward_model`` and the bare loop, alternating (the order flips every round)."""
    cfg = TrainConfig(epochs=epochs, batch_size=256, patience=0, seed=0)
    n_train = sum(len(ds.split_by_episode(cfg.val_frac, seed=split_seed(ds.task.name, cfg.seed))[0]) for ds in dss)
    steps = epochs * max(1, math.ceil(n_train / cfg.batch_size))  # the trainer's step count
    bare = BareLoop(dss, cfg)
    bare.run(20)  # warm-up
    runners = {"train_reward_model": lambda: train_reward_model(dss, cfg, model_config=ModelConfig(),
                                                                progress=False).transitions_per_s,
               "bare loop": lambda: bare.run(steps)}
    rates: dict[str, list[float]] = {k: [] for k in runners}
    print(f"{n_train} training transitions, {steps} steps of {cfg.batch_size} per round")
    for r in range(rounds):
        for k in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            rates[k].append(runners[k]())
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()), flush=True)
    return rates


def bench_ablations(dss: list[TransitionDataset], rounds: int, steps: int) -> dict[str, list[float]]:
    """The bare loop plus each piece of the trainer's step, in many short rotating rounds."""
    cfg = TrainConfig(batch_size=256, seed=0)
    parts = ("randperm indices", "trainer loss", "float(loss)")
    loops = {"bare loop" + "".join(f" +{e}" for e in ex): BareLoop(dss, cfg, ex)
             for ex in [(), *((p,) for p in parts), parts]}
    for loop in loops.values():
        loop.run(20)
    names = list(loops)
    rates: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            rates[k].append(loops[k].run(steps))
    return rates


def bench_load(data_dir: Path, n: int, repeats: int) -> tuple[Path, dict[str, list[float]]]:
    path = data_dir / f"Pendulum-v1_{n}"
    if not (path / "manifest.json").exists():
        t0 = time.perf_counter()
        collect(Task("Pendulum-v1", "Pendulum-v1"), n, n_envs=8, seed=0, progress=False).save(path)
        print(f"collected and saved {n:,} Pendulum-v1 transitions in {time.perf_counter() - t0:.1f} s -> {path}")
    times: dict[str, list[float]] = {"load": [], "load(mmap=True)": [], "of which validate": []}
    TransitionDataset.load(path)  # warm the page cache
    for _ in range(repeats):
        t0 = time.perf_counter()
        ds = TransitionDataset.load(path)
        times["load"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ds.validate(str(path))
        times["of which validate"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        TransitionDataset.load(path, mmap=True)
        times["load(mmap=True)"].append(time.perf_counter() - t0)
        assert len(ds) == n
    return path, times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2k transitions per task, 100k for the load test")
    p.add_argument("--steps", type=int, default=None, help="transitions per task (default 20000)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved trainer/bare rounds (default 15; the ablations run 3x as many short ones)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trainer call (the bare loop runs as many steps)")
    p.add_argument("--no-ablations", action="store_true", help="skip the bare-loop ablations")
    p.add_argument("--load-n", type=int, default=None, help="transitions for the load test (default 1000000)")
    p.add_argument("--load-repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1; 0: torch's default). On a 2-core machine shared with other work, "
                        "a second intra-op thread stalls on the busy core and throughput swings 10-100x")
    p.add_argument("--data-dir", type=Path, default=Path("/tmp/rlrm_bench"))
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-load", action="store_true")
    args = p.parse_args()
    steps = args.steps or (2_000 if args.quick else 20_000)
    rounds = args.rounds or (2 if args.quick else 15)
    load_n = args.load_n or (100_000 if args.quick else 1_000_000)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"{platform.machine()}, python {platform.python_version()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}")
    rows: list[tuple[str, str, str]] = []
    if not args.skip_train:
        dss = datasets(args.data_dir, steps)
        rates = bench_training(dss, rounds, args.epochs)
        ratio = statistics.median(a / b for a, b in zip(rates["train_reward_model"], rates["bare loop"]))
        for k, v in rates.items():
            rate = statistics.median(v)
            rows.append((f"train {k}", f"{rate:,.0f} transitions/s", f"{256 / rate * 1e3:.2f} ms/step"))
        rows.append(("target: trainer >= 0.9x bare loop", f"{ratio:.3f}x", "met" if ratio >= 0.9 else "NOT met"))
        if not args.no_ablations:
            abl = bench_ablations(dss, 3 * rounds, 100)
            ref = abl["bare loop"]
            for k, v in abl.items():
                r = statistics.median(a / b for a, b in zip(v, ref))
                extra = statistics.median(256 / a - 256 / b for a, b in zip(v, ref)) * 1e3
                rows.append((f"ablation: {k}", f"{r:.3f}x bare loop", f"{extra:+.3f} ms/step"))
    if not args.skip_load:
        path, times = bench_load(args.data_dir, load_n, args.load_repeats)
        for k, v in times.items():
            rows.append((f"{k} {load_n:,} Pendulum-v1", f"median {statistics.median(v) * 1e3:.1f} ms",
                         f"min {min(v) * 1e3:.1f} ms, max {max(v) * 1e3:.1f} ms"))
        size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
        med = statistics.median(times["load"])
        rows.append((f"target: load < 2 s ({size:.0f} MiB on disk)", f"{med:.3f} s", "met" if med < 2 else "NOT met"))
    print()
    w = max(len(r[0]) for r in rows)
    for a, b, c in rows:
        print(f"{a:<{w}}  {b:>26}  {c}")


if __name__ == "__main__":
    main()
