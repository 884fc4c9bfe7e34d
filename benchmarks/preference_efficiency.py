"""How many preference queries does a good reward need (issue #10)? Offline curves, then agents.

1. Data per task (train set for queries, a separate test set for the metrics, other seeds):

   - ``Pendulum-v1`` (the env's reward): half uniformly random actions, half a briefly trained SAC policy
     (``--data-sac-steps`` steps on the true reward, sampled stochastically);
   - ``CartPole-v1/x0.75`` (cart held at x = 0.75): the ``rlrm:cartpole_wander`` policy;
   - ``HalfCheetah-v5/vel1`` (run forward at 1 m/s; HalfCheetah-v5's own reward is not a function of the
     observation, the family task's is): half random actions, half open-loop sinusoidal gaits with a new random
     amplitude, frequency and phases every 200 steps (they reach speeds random actions never do).

2. For each task, teacher (``oracle``, ``mistake:eps=0.1``, optionally ``stochastic:beta=1``), selection rule
   (``uniform``, ``disagreement``) and seed: one run of :func:`rlrm.train.active.active_preferences` with rounds
   ending at each N of ``--queries`` (an ensemble of K = 3 trained at each N). Each round's model is measured on
   the test set: preference accuracy on 2,000 uniformly drawn test pairs answered by the ORACLE (pairs of equal
   return excluded), and EPIC distance to the true reward (1,000 transitions, 64 samples).

3. Agents on Pendulum-v1: SAC (``agents/sac.yaml``, ``--agent-steps`` steps) on the reward of the disagreement
   run's N = 500 model, per seed and teacher, and on the true reward; evaluated on the true reward. Normalized
   score = (learned - random) / (true - random), random = uniformly random actions.

    python benchmarks/preference_efficiency.py             # full (see --help for the sizes)
    python benchmarks/preference_efficiency.py --quick     # 1 seed, Pendulum + HalfCheetah, N up to 200, tiny agents

Raw results go to ``benchmarks/preference_efficiency/`` (curves.csv, agents.csv, results.json, the figure).
"""

from __future__ import annotations

import argparse
import csv
import io
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlrm import atomic
from rlrm import model as rm
from rlrm.data.behaviour import builtin_policy
from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import EQUAL, PreferenceDataset
from rlrm.data.rollout import collect
from rlrm.data.teachers import make_preferences
from rlrm.metrics import epic_distance
from rlrm.rewards import true_reward_fn
from rlrm.rl.evaluation import random_returns
from rlrm.rl.folder import RunSpec
from rlrm.rl.hyperparams import load_spec
from rlrm.rl.runs import train_run
from rlrm.tasks import Task, load_catalog
from rlrm.train import TrainConfig
from rlrm.train.active import active_preferences

HERE = Path(__file__).resolve().parent
TASKS = ("Pendulum-v1", "CartPole-v1/x0.75", "HalfCheetah-v5/vel1")


@dataclass
class Settings:
    """What one benchmark run does (see ``--help``)."""

    tasks: tuple[str, ...] = TASKS
    teachers: tuple[str, ...] = ("oracle", "mistake:eps=0.1")
    selects: tuple[str, ...] = ("uniform", "disagreement")
    queries: tuple[int, ...] = (25, 50, 100, 200, 500, 1000, 2000)
    seeds: tuple[int, ...] = (0, 1, 2)
    other_seeds: int = 2  # seeds of the tasks other than Pendulum (the first ones of ``seeds``)
    train_steps: int = 20_000
    test_steps: int = 4_000
    length: int = 25
    k: int = 3
    epochs: int = 15
    min_epoch_steps: int = 10
    patience: int = 3
    data_sac_steps: int = 3_000
    agent_steps: int = 4_000
    agent_n: int = 500
    agent_seeds: tuple[int, ...] = (0, 1, 2)
    eval_episodes: int = 10
    random_episodes: int = 100


# --------------------------------------------------------------------------- data
def gait_policy(n_envs: int, seed: int, act_dim: int = 6, period: int = 200) -> Any:
    """Open-loop sinusoidal gaits: per env a random amplitude, frequency and phase per joint, redrawn every
    ``period`` steps."""
    rng = np.random.default_rng(seed)
    clock = np.zeros(n_envs, np.int64)

    def draw() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (rng.uniform(0.3, 1.0, (n_envs, 1)), rng.uniform(0.05, 0.4, (n_envs, 1)),
                rng.uniform(0, 2 * np.pi, (n_envs, act_dim)))

    amp, freq, phase = draw()

    def act(obs: np.ndarray) -> np.ndarray:
        nonlocal amp, freq, phase
        clock[:] += 1
        if clock[0] % period == 0:
            amp, freq, phase = draw()
        return np.clip(amp * np.sin(2 * np.pi * freq * clock[:, None] + phase), -1, 1).astype(np.float32)

    return act


def sac_policy(task: Task, steps: int, seed: int) -> Any:
    """A SAC policy trained ``steps`` steps on the true reward (stochastic actions)."""
    from stable_baselines3 import SAC
    agent = SAC("MlpPolicy", task.make_env(), learning_rate=1e-3, seed=seed, verbose=0)
    agent.learn(steps)
    return lambda obs: agent.predict(obs, deterministic=False)[0]


def merge(a: TransitionDataset, b: TransitionDataset) -> TransitionDataset:
    """``b``'s episodes appended after ``a``'s (renumbered)."""
    shift = int(a.episode.max()) + 1
    fields = {f: np.concatenate([getattr(a, f), getattr(b, f) + (shift if f == "episode" else 0)])
              for f in ("obs", "action", "next_obs", "label", "env_reward", "terminated", "truncated", "episode",
                        "step")}
    return TransitionDataset.from_arrays(a.task, a.obs_space, a.action_space, label_source=a.label_source,
                                         info={"behaviour": [a.info, b.info]}, **fields)


def task_data(task: Task, steps: int, seed: int, s: Settings, behaviour: dict[str, Any]) -> TransitionDataset:
    """The stated mix of behaviour for ``task`` (module doc)."""
    if task.name == "CartPole-v1/x0.75":
        pol = builtin_policy("rlrm:cartpole_wander", task, 8, seed)
        return collect(task, steps, pol, n_envs=8, seed=seed, progress=False, policy_name="rlrm:cartpole_wander")
    half = steps // 2
    rand = collect(task, half, None, n_envs=8, seed=seed, progress=False)
    if task.env_id == "Pendulum-v1":
        if "sac" not in behaviour:
            behaviour["sac"] = sac_policy(task, s.data_sac_steps, seed=100)
        other = collect(task, half, behaviour["sac"], n_envs=8, seed=seed + 1, progress=False, policy_name="sac")
    else:
        other = collect(task, half, gait_policy(8, seed), n_envs=8, seed=seed + 1, progress=False,
                        policy_name="gait")
    return merge(rand, other)


# --------------------------------------------------------------------------- offline curves
def evaluator(task: Task, test: TransitionDataset, test_pairs: PreferenceDataset, save_at: dict[int, Path]) -> Any:
    """Test-set preference accuracy and EPIC of a round's model (and its file at the N of ``save_at``)."""
    true_fn = true_reward_fn(task.labeler, task.env_id)
    lt, rt = test_pairs.segment_returns(test.label)
    decided = test_pairs.label != EQUAL

    def evaluate(model: Any, prefs: PreferenceDataset) -> dict[str, Any]:
        pred = model.predict(task.name, test.obs, test.action, test.next_obs, test.terminated)
        lp, rp = test_pairs.segment_returns(pred)
        acc = float(((lp > rp) == (lt > rt))[decided].mean())
        epic = epic_distance(model.reward_fn(task.name), true_fn, test.obs, test.action, test.next_obs,
                             test.terminated)
        if len(prefs) in save_at:
            rm.save(model, save_at[len(prefs)])
        return {"test_acc": acc, "epic": epic}

    return evaluate


def task_curves(name: str, s: Settings, work: Path, behaviour: dict[str, Any], models: dict[str, Path],
                rows: list[dict[str, Any]], out: Path) -> None:
    """Every teacher x selection x seed run of one task; rows appended (and written) as they finish."""
    task = load_catalog().task(name)
    t0 = time.perf_counter()
    train = task_data(task, s.train_steps, 0, s, behaviour)
    test = task_data(task, s.test_steps, 500, s, behaviour)
    test_pairs = make_preferences(test, test.label, 2000, s.length, "oracle", seed=1)
    print(f"{name}: {len(train)} train / {len(test)} test transitions ({len(np.unique(train.episode))} / "
          f"{len(np.unique(test.episode))} episodes) in {time.perf_counter() - t0:.0f} s", flush=True)
    cfg = TrainConfig(epochs=s.epochs, min_epoch_steps=s.min_epoch_steps, patience=s.patience)
    seeds = s.seeds if task.env_id == "Pendulum-v1" else s.seeds[:s.other_seeds]
    for teacher in s.teachers:
        for select in s.selects:
            for seed in seeds:
                save_at = {}
                if task.env_id == "Pendulum-v1" and select == "disagreement" and seed in s.agent_seeds:
                    file = f"pendulum_{teacher.replace(':', '_')}_{seed}.safetensors"
                    save_at[s.agent_n] = models[f"{teacher}/seed{seed}"] = work / file
                t0 = time.perf_counter()
                _, _, history = active_preferences(
                    train, train.label, teacher, s.queries[-1], select=select, schedule=s.queries, k=s.k,
                    length=s.length, config=cfg, seed=seed, evaluate=evaluator(task, test, test_pairs, save_at))
                rows.extend({"task": name, "teacher": teacher, "select": select, "seed": seed, **h} for h in history)
                write_csv(out / "curves.csv", rows)
                epics = " ".join(f"{h['epic']:.3f}" for h in history)
                print(f"  {teacher:16s} {select:12s} seed {seed}: EPIC {epics}; acc {history[-1]['test_acc']:.3f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)


def summary(rows: list[dict[str, Any]], thresholds: tuple[float, ...] = (0.2, 0.1)) -> list[dict[str, Any]]:
    """Per task/teacher/select and N: mean (and min/max) over seeds; plus the first N whose mean EPIC is below
    each threshold."""
    out = []
    keys = sorted({(r["task"], r["teacher"], r["select"]) for r in rows})
    for key in keys:
        sub = [r for r in rows if (r["task"], r["teacher"], r["select"]) == key]
        ns = sorted({r["n_pairs"] for r in sub})
        line: dict[str, Any] = {"task": key[0], "teacher": key[1], "select": key[2],
                                "seeds": len({r["seed"] for r in sub})}
        for n in ns:
            e = [r["epic"] for r in sub if r["n_pairs"] == n]
            a = [r["test_acc"] for r in sub if r["n_pairs"] == n]
            line[f"epic@{n}"] = float(np.mean(e))
            line[f"epic_range@{n}"] = (float(np.min(e)), float(np.max(e)))
            line[f"acc@{n}"] = float(np.mean(a))
        for t in thresholds:
            line[f"n_epic<{t}"] = next((n for n in ns if line[f"epic@{n}"] < t), None)
        out.append(line)
    return out


# --------------------------------------------------------------------------- agents
def random_return(task: Task, episodes: int, seed: int) -> float:
    return float(random_returns(task, episodes, seed).mean())


def agents(s: Settings, models: dict[str, Path], work: Path) -> dict[str, Any]:
    task = load_catalog().task("Pendulum-v1")
    spec = load_spec("sac", task, {"n_timesteps": s.agent_steps})
    random = random_return(task, s.random_episodes, seed=12345)
    rows = []
    for seed in s.agent_seeds:
        for reward, teacher in [("true", None), *(("learned", t) for t in s.teachers)]:
            path = models.get(f"{teacher}/seed{seed}") if teacher else None
            if reward == "learned" and path is None:
                continue
            run = RunSpec(task, spec, seed, reward, str(path) if path else None, eval_freq=0,
                          eval_episodes=s.eval_episodes)
            t0 = time.perf_counter()
            row = train_run(run, work / "runs" / (teacher or "true").replace(":", "_"), progress=False)
            rows.append({"seed": seed, "reward": reward, "teacher": teacher or "", "true_mean": row["true_mean"],
                         "true_std": row["true_std"], "wall_s": round(time.perf_counter() - t0, 1)})
            print(f"  agent seed {seed} {reward:7s} {teacher or '':16s}: true return {row['true_mean']:.1f} "
                  f"({rows[-1]['wall_s']} s)", flush=True)
    true = {r["seed"]: r["true_mean"] for r in rows if r["reward"] == "true"}
    scores: dict[str, Any] = {}
    for teacher in s.teachers:
        mine = {r["seed"]: r["true_mean"] for r in rows if r["teacher"] == teacher}
        if not mine:
            continue
        seeds = sorted(mine)
        mean_l, mean_t = np.mean([mine[x] for x in seeds]), np.mean([true[x] for x in seeds])
        scores[teacher] = {"learned_mean": float(mean_l), "true_mean": float(mean_t),
                           "normalized": float((mean_l - random) / (mean_t - random)),
                           "per_seed": {x: (mine[x] - random) / (true[x] - random) for x in seeds}}
    return {"random_mean": random, "algo": "sac", "timesteps": s.agent_steps, "runs": rows, "scores": scores}


# --------------------------------------------------------------------------- output
def figure(rows: list[dict[str, Any]], s: Settings, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(s.tasks), figsize=(5 * len(s.tasks), 4), squeeze=False)
    for ax, name in zip(axes[0], s.tasks):
        for teacher in s.teachers:
            for select in s.selects:
                sub = [r for r in rows if (r["task"], r["teacher"], r["select"]) == (name, teacher, select)]
                ns = sorted({r["n_pairs"] for r in sub})
                e = np.array([[r["epic"] for r in sub if r["n_pairs"] == n] for n in ns])
                style = "-" if select == "disagreement" else "--"
                color = {"oracle": "C0", "mistake:eps=0.1": "C3"}.get(teacher, "C2")
                ax.plot(ns, e.mean(1), style, color=color, marker="o", ms=3, label=f"{teacher}, {select}")
                ax.fill_between(ns, e.min(1), e.max(1), color=color, alpha=0.08)
        ax.set_xscale("log")
        ax.set_xlabel("preference queries")
        ax.set_ylabel("EPIC to the true reward")
        ax.set_title(name)
        ax.axhline(0.1, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic.write_bytes(path, buf.getvalue())


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic.write_bytes(path, buf.getvalue().encode())


def machine() -> dict[str, str]:
    model_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout
    return {"cpu": model_name, "commit": commit.strip(), "python": platform.python_version(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--teachers", nargs="+", default=list(Settings.teachers))
    p.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds))
    p.add_argument("--queries", type=int, nargs="+", default=list(Settings.queries))
    p.add_argument("--agent-steps", type=int, default=Settings.agent_steps)
    p.add_argument("--agent-seeds", type=int, nargs="*", default=list(Settings.agent_seeds))
    p.add_argument("--agent-n", type=int, default=Settings.agent_n, help="answers of the agents' reward models")
    p.add_argument("--other-seeds", type=int, default=Settings.other_seeds, help="seeds of the other tasks")
    p.add_argument("--quick", action="store_true", help="Pendulum and HalfCheetah, 1 seed, N up to 200, 1 agent "
                                                        "seed of 1,500 steps")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/rlrm_preference_efficiency"))
    p.add_argument("--out", type=Path, default=HERE / "preference_efficiency")
    args = p.parse_args()
    torch.set_num_threads(1)
    s = Settings(tasks=tuple(args.tasks), teachers=tuple(args.teachers), seeds=tuple(args.seeds),
                 queries=tuple(args.queries), agent_steps=args.agent_steps, agent_seeds=tuple(args.agent_seeds),
                 other_seeds=args.other_seeds, agent_n=args.agent_n)
    if args.quick:
        s = Settings(tasks=("Pendulum-v1", "HalfCheetah-v5/vel1"), seeds=(0,), queries=(25, 50, 100, 200), agent_n=200,
                     train_steps=8_000, test_steps=2_000, data_sac_steps=500, agent_steps=1_500, agent_seeds=(0,),
                     eval_episodes=3, random_episodes=10)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    models: dict[str, Path] = {}
    behaviour: dict[str, Any] = {}
    times: dict[str, float] = {}
    agent: dict[str, Any] = {}
    for name in s.tasks:  # agents right after Pendulum's curves: its N = agent_n models are then ready
        t0 = time.perf_counter()
        task_curves(name, s, args.work_dir, behaviour, models, rows, args.out)
        times[f"curves_s/{name}"] = round(time.perf_counter() - t0, 1)
        if name == "Pendulum-v1" and s.agent_seeds and models:
            t0 = time.perf_counter()
            agent = agents(s, models, args.work_dir)
            times["agents_s"] = round(time.perf_counter() - t0, 1)
            write_csv(args.out / "agents.csv", agent["runs"])
            for teacher, sc in agent["scores"].items():
                print(f"agents ({teacher}): normalized {sc['normalized']:.3f} per seed {sc['per_seed']}", flush=True)
    times["total_s"] = round(time.perf_counter() - start, 1)
    table = summary(rows)
    figure(rows, s, args.out / "preference_efficiency.png")
    for line in table:
        print(f"{line['task']:22s} {line['teacher']:16s} {line['select']:12s} EPIC<0.2 at N={line['n_epic<0.2']} "
              f"EPIC<0.1 at N={line['n_epic<0.1']}", flush=True)
    report = {"settings": asdict(s), "machine": machine(), "times": times, "summary": table, "agents": agent}
    atomic.write_json(args.out / "results.json", report)
    print(f"total {times['total_s']} s", flush=True)


if __name__ == "__main__":
    main()
