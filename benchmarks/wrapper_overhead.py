"""Env steps/s of the reward-replacing wrappers against the raw VecEnv.

Variants (each a DummyVecEnv of ``task.make_env()``, stepped with the same pre-drawn random actions):

- ``raw``                  the bare envs
- ``raw+Monitor``          Monitor inside each env (the stack ``train_agent`` uses, without the reward)
- ``LearnedReward``        the ``gymnasium.Wrapper`` inside each env (one NumPy reward call per env step)
- ``VecLearnedReward``     the SB3 ``VecEnvWrapper`` over the raw envs (one batched call per vector step)
- ``Monitor+VecLearned``   VecLearnedReward over Monitor-wrapped envs: what ``train_agent`` actually runs
- ``torch predict``        reference: a VecEnvWrapper calling ``model.predict`` (torch) per vector step
- ``VecLearned ensemble``  VecLearnedReward over a RewardEnsemble of ``--ensemble`` (3) members: the mean and the
                           std (``info["reward_std"]``) from one batched evaluation per vector step (issue #10)
- ``... (NumPy)``          the same two with the compiled kernel off (``reward_fn(task, compiled=False)``): the NumPy
                           path, for the kernel's gain in the same rounds
- ``pass-through``         a VecEnvWrapper that only forwards: the cost of any wrapper layer
- ``VecLearned const``     VecLearnedReward with a reward function that returns zeros (no network): the wrapper's
                           own bookkeeping (terminal observations, infos, learned returns)
- ``VecLearned tiny net``  VecLearnedReward with an 8-unit network on the compiled kernel: the fixed cost of a
                           compiled call, with almost no arithmetic (``--decompose``; with the two above, it splits
                           VecLearnedReward's extra time into wrapper layer, bookkeeping, call, arithmetic)

All with the default model (``RewardModel(ModelConfig())`` plus the task's head, initial weights with a
random feature standardization and label scale: speed does not depend on them); the ensemble's members are
such models, each with its own weights, standardization and label scale. The machine may be
shared, so variants are interleaved in many short rounds (the order rotates each round) and each ratio
is the median over rounds of the per-round ratio. Rounds are short (200 vector steps, ~0.3 s for all variants)
so that a neighbour's load changes little within one: with 21 rounds of 1,000 steps (sessions 5-11) the medians
of one variant moved by ~0.1 from run to run on this host.

The script also checks that VecLearnedReward's rewards equal ``model.predict`` within 1e-5 on the
transitions it produced (terminal observations and TimeLimit truncation included), and for the ensemble
its rewards and ``info["reward_std"]`` against ``RewardEnsemble.predict(..., return_std=True)``.

    python benchmarks/wrapper_overhead.py            # full run
    python benchmarks/wrapper_overhead.py --quick    # smoke run (a few seconds)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import timeit
from collections.abc import Callable

import numba
import numpy as np
import torch
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper

from rlrm.model.ensemble import RewardEnsemble
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.tasks import Task
from rlrm.wrappers import LearnedReward, VecLearnedReward


class TorchPredict(VecEnvWrapper):
    """Reference: the learned reward through ``model.predict`` (torch) once per vector step."""

    def __init__(self, venv: VecEnv, model: RewardModel, task: str) -> None:
        super().__init__(venv)
        self.model, self.task = model, task
        self._obs = None
        self._actions = None

    def reset(self):
        self._obs = self.venv.reset()
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions
        self.venv.step_async(actions)

    def step_wait(self):
        obs, _true, dones, infos = self.venv.step_wait()
        next_obs = obs
        if dones.any():
            next_obs = obs.copy()
            for i in dones.nonzero()[0]:
                next_obs[i] = infos[i]["terminal_observation"]
        terminated = dones & ~np.array([info.get("TimeLimit.truncated", False) for info in infos])
        learned = self.model.predict(self.task, self._obs, self._actions, next_obs, terminated)
        self._obs = obs
        return obs, learned, dones, infos


class PassThrough(VecEnvWrapper):
    """Reference: a wrapper that only forwards."""

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        return self.venv.step_wait()


class ConstantReward:
    """Reference: a RewardFn without a network (zeros), for the wrapper's bookkeeping alone."""

    def __init__(self, task: Task) -> None:
        env = task.make_env()
        self.observation_space, self.action_space = env.observation_space, env.action_space
        env.close()

    def __call__(self, obs, action, next_obs, done) -> np.ndarray:
        return np.zeros(len(obs), np.float32)


def default_model(task: Task, done_input: bool = False, seed: int = 0, encoder: list[int] | None = None) -> RewardModel:
    torch.manual_seed(seed)
    env = task.make_env()
    config = ModelConfig(**({"encoder": encoder} if encoder else {}))
    model = RewardModel(ModelConfig(inputs=["obs", "action", "next_obs", "done"]) if done_input else config)
    model.add_task(task, env.observation_space, env.action_space)
    if done_input:  # make the flag matter: a large weight on the done column
        with torch.no_grad():
            model.stems[model.tasks[task.name].group][0].weight[:, -1] = 3.0
    # Feature standardization and label scale as a trained model has them (the NumPy path folds both into
    # its weights, so the check must not see only the identity); no effect on speed.
    rng = np.random.default_rng(seed)
    gid = model.tasks[task.name].group
    dim = model.groups[gid].dim
    model.set_normalization(gid, rng.normal(size=dim), rng.uniform(0.5, 2.0, size=dim))
    model.set_label_scale(task.name, -1.0 + seed, 3.0)
    env.close()
    model.eval()
    return model


def default_ensemble(task: Task, k: int) -> RewardEnsemble:
    """K default models, each with its own weights, standardization and label scale."""
    return RewardEnsemble([default_model(task, seed=i) for i in range(k)])


def variants(task: Task, n_envs: int, model: RewardModel, ensemble: RewardEnsemble | None = None,
             decompose: bool = False) -> dict[str, Callable[[], VecEnv]]:
    name = task.name
    if decompose:
        tiny = default_model(task, encoder=[8])
        extra_ref = {
            "pass-through": lambda: PassThrough(DummyVecEnv([task.make_env for _ in range(n_envs)])),
            "VecLearned const": lambda: VecLearnedReward(DummyVecEnv([task.make_env for _ in range(n_envs)]),
                                                         ConstantReward(task)),
            "VecLearned tiny net": lambda: VecLearnedReward(DummyVecEnv([task.make_env for _ in range(n_envs)]),
                                                            tiny, name)}
    else:
        extra_ref = {}
    extra = {} if ensemble is None else {
        "VecLearned ensemble": lambda: VecLearnedReward(DummyVecEnv([task.make_env for _ in range(n_envs)]),
                                                        ensemble, name),
        "VecLearned ens (NumPy)": lambda: VecLearnedReward(DummyVecEnv([task.make_env for _ in range(n_envs)]),
                                                           ensemble.reward_fn(name, compiled=False), name)}
    return {
        "raw": lambda: DummyVecEnv([task.make_env for _ in range(n_envs)]),
        "raw+Monitor": lambda: DummyVecEnv([lambda: Monitor(task.make_env()) for _ in range(n_envs)]),
        "LearnedReward": lambda: DummyVecEnv([lambda: LearnedReward(task.make_env(), model, name)
                                              for _ in range(n_envs)]),
        "VecLearnedReward": lambda: VecLearnedReward(DummyVecEnv([task.make_env for _ in range(n_envs)]), model, name),
        "VecLearned (NumPy)": lambda: VecLearnedReward(DummyVecEnv([task.make_env for _ in range(n_envs)]),
                                                       model.reward_fn(name, compiled=False), name),
        "Monitor+VecLearned": lambda: VecLearnedReward(
            DummyVecEnv([lambda: Monitor(task.make_env()) for _ in range(n_envs)]), model, name),
        "torch predict": lambda: TorchPredict(DummyVecEnv([task.make_env for _ in range(n_envs)]), model, name),
        **extra,
        **extra_ref,
    }


def draw_actions(venv: VecEnv, steps: int, seed: int) -> np.ndarray:
    space = venv.action_space
    space.seed(seed)
    return np.stack([np.stack([np.asarray(space.sample()) for _ in range(venv.num_envs)]) for _ in range(steps)])


def time_steps(venv: VecEnv, actions: np.ndarray) -> float:
    """Seconds for ``len(actions)`` vector steps (the env is already reset)."""
    step_async, step_wait = venv.step_async, venv.step_wait
    t0 = time.perf_counter()
    for a in actions:
        step_async(a)
        step_wait()
    return time.perf_counter() - t0


def check_rewards(task: Task, n_envs: int, model: RewardModel | RewardEnsemble, steps: int,
                  seed: int) -> tuple[float, int, int]:
    """Step VecLearnedReward, rebuild each transition independently, compare with ``model.predict`` (an ensemble's
    mean, and its std with ``info["reward_std"]``).

    Also checks the episode bookkeeping: ``info["learned_episode"]`` has the summed rewards and Monitor's
    length, and ``info["true_reward"]`` the env's reward.

    :return: (max abs difference, transitions checked, transitions that ended an episode).
    """
    venv = VecLearnedReward(DummyVecEnv([lambda: Monitor(task.make_env()) for _ in range(n_envs)]), model, task.name)
    venv.seed(seed)
    obs = venv.reset()
    actions = draw_actions(venv, steps, seed + 1)
    worst, ended = 0.0, 0
    returns = np.zeros(n_envs)
    for a in actions:
        next_obs, rewards, dones, infos = venv.step(a)
        real_next = np.array(next_obs, copy=True)
        terminated = np.zeros(n_envs, bool)
        for i in np.flatnonzero(dones):
            real_next[i] = infos[i]["terminal_observation"]
            terminated[i] = not infos[i].get("TimeLimit.truncated", False)
            ended += 1
        if isinstance(model, RewardEnsemble):
            expected, std = model.predict(task.name, obs, a, real_next, terminated, return_std=True)
            worst = max(worst, float(np.max(np.abs(np.array([i["reward_std"] for i in infos]) - std))))
        else:
            expected = model.predict(task.name, obs, a, real_next, terminated)
        worst = max(worst, float(np.max(np.abs(rewards - expected))))
        returns += rewards
        for i, info in enumerate(infos):
            assert isinstance(info["true_reward"], float)
            if dones[i]:
                ep = info["learned_episode"]
                assert ep["l"] == info["episode"]["l"] and abs(ep["r"] - returns[i]) < 1e-6 * max(1, abs(returns[i]))
                returns[i] = 0.0
            else:
                assert "learned_episode" not in info
        obs = next_obs
    venv.close()
    return worst, steps * n_envs, ended


def bench_task(task: Task, n_envs: int, rounds: int, steps: int, seed: int,
               k: int = 3, decompose: bool = False) -> dict[str, list[float]]:
    model = default_model(task)
    makers = variants(task, n_envs, model, default_ensemble(task, k) if k >= 2 else None, decompose)
    envs = {}
    for k, make in makers.items():
        venv = make()
        venv.seed(seed)
        venv.reset()
        envs[k] = venv
    actions = draw_actions(envs["raw"], steps, seed)
    for venv in envs.values():  # warm-up: buffers, caches, first-call costs
        time_steps(venv, actions[: max(10, steps // 10)])
    names = list(envs)
    rates: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            rates[k].append(steps * n_envs / time_steps(envs[k], actions))
    for venv in envs.values():
        venv.close()
    return rates


def host_probe() -> float:
    """Microseconds of one ``x.dot(w, out)`` of 8x65 by 65x65 float32 (best of 7 x 20,000): which class of host this
    is (RESULTS.md: ~1.1 us on the fast host class of Nov 26, ~3 us on the slow one, where the ratios read lower)."""
    x, w = np.ones((8, 65), np.float32), np.ones((65, 65), np.float32)
    out = np.empty((8, 65), np.float32)
    return min(timeit.repeat(lambda: x.dot(w, out), number=20_000, repeat=7)) / 20_000 * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: few short rounds")
    p.add_argument("--tasks", nargs="+", default=["CartPole-v1", "Pendulum-v1"])
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 105, quick 3)")
    p.add_argument("--steps", type=int, default=None, help="vector steps per variant per round (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads for the torch-predict reference")
    p.add_argument("--ensemble", type=int, default=3, help="members of the ensemble variant (0: leave it out)")
    p.add_argument("--decompose", action="store_true",
                   help="also time a pass-through wrapper, VecLearnedReward without a network and with a tiny one")
    args = p.parse_args()
    rounds = args.rounds or (3 if args.quick else 105)
    steps = args.steps or 200
    # model.predict on 8 rows gains nothing from intra-op threads, and on a loaded 2-core machine a second
    # thread makes each call wait on a busy core (milliseconds instead of ~70 us): one thread for the reference.
    torch.set_num_threads(args.torch_threads)
    print(f"{platform.processor() or platform.machine()}, python {platform.python_version()}, numpy {np.__version__}, "
          f"numba {numba.__version__}, torch {torch.__version__} ({torch.get_num_threads()} thread); {rounds} rounds x "
          f"{steps} vector steps x {args.n_envs} envs per variant; host probe (8x65 @ 65x65 float32 dot) "
          f"{host_probe():.2f} us")

    rows = []
    for name in args.tasks:
        task = Task(name, name)
        # the default model, and one that also reads the terminated flag (checks terminal obs vs truncation)
        checks = [("default model", default_model(task)),
                  ("model with done input", default_model(task, done_input=True))]
        if args.ensemble >= 2:
            checks.append((f"ensemble of {args.ensemble} (mean and std)", default_ensemble(task, args.ensemble)))
        for label, model in checks:
            worst, checked, ended = check_rewards(task, args.n_envs, model, 250 if args.quick else 600, args.seed)
            status = "OK" if worst <= 1e-5 else "FAIL"
            print(f"{name}, {label}: VecLearnedReward vs model.predict on {checked} transitions ({ended} episode "
                  f"ends): max |diff| = {worst:.2e} [{status}]")
            assert worst <= 1e-5, f"{name}: VecLearnedReward differs from model.predict by {worst}"
        rates = bench_task(task, args.n_envs, rounds, steps, args.seed, args.ensemble, args.decompose)
        raw, mon = rates["raw"], rates["raw+Monitor"]
        if "VecLearned ensemble" in rates:  # the same rounds, so the machine's load mostly cancels
            ratios = [x / b for x, b in zip(rates["VecLearned ensemble"], rates["VecLearnedReward"])]
            q1, med, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
            print(f"{name}: VecLearned ensemble of {args.ensemble} vs VecLearnedReward (one model): {med:.3f}x "
                  f"(p25-p75 {q1:.3f}-{q3:.3f})")
        for k, v in rates.items():
            ratios = sorted(x / b for x, b in zip(v, raw))
            q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
            vs_mon = statistics.median(x / b for x, b in zip(v, mon))
            per_step = statistics.median(args.n_envs / x - args.n_envs / b for x, b in zip(v, raw)) * 1e6
            rows.append((f"{name} x{args.n_envs}", k, statistics.median(v), statistics.median(ratios), q1, q3, vs_mon,
                         per_step))

    header = ("env", "variant", "steps/s (median)", "vs raw", "(p25-p75)", "vs raw+Monitor", "extra us/vec step")
    print()
    print(f"{header[0]:<18} {header[1]:<22} {header[2]:>16} {header[3]:>8} {header[4]:>13} {header[5]:>14} "
          f"{header[6]:>18}")
    for env, k, rate, vs_raw, q1, q3, vs_mon, extra in rows:
        print(f"{env:<18} {k:<22} {rate:>16,.0f} {vs_raw:>7.3f}x {q1:>6.3f}-{q3:.3f} {vs_mon:>13.3f}x {extra:>18.1f}")
    print()
    for variant, goal in (("VecLearnedReward", 0.85), ("VecLearned ensemble", 0.7)):
        target = [r for r in rows if r[0].startswith("CartPole") and r[1] == variant]
        if target:
            vs_raw, q1, q3 = target[0][3:6]
            verdict = "borderline" if q1 <= goal <= q3 else "met" if vs_raw >= goal else "NOT met"
            print(f"target: {variant} >= {goal}x raw on CartPole x{args.n_envs}: {vs_raw:.3f}x (p25-p75 "
                  f"{q1:.3f}-{q3:.3f}) [{verdict}]")


if __name__ == "__main__":
    main()
