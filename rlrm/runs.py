"""One agent-training run: a (task, algo, seed, reward source) unit that a grid can schedule and resume.

Folder layout (RL Zoo style), ``<output>/<algo>/<task>_<N>/``::

    config.json        the exact run spec, rlrm version, command (written first, never changed)
    checkpoint/        agent.zip, vecnormalize.json, replay_buffer.npz, state.json (written atomically)
    monitor/           Monitor CSVs (true rewards)
    progress.csv       SB3's logger output
    evaluations.json   periodic true-reward evaluations
    agent.zip  vecnormalize.json  result.json   (at the end; result.json means "done")
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.logger import configure
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

import rlrm
from rlrm import atomic
from rlrm import model as rm
from rlrm.agents import (
    ALGOS,
    AgentSpec,
    build_kwargs,
    load_agent,
    load_vecnormalize,
    make_vec_env,
    save_vecnormalize,
    sync_normalization,
)
from rlrm.callbacks import Checkpoint, LearnedReturnLogger, TrueRewardEval, WandbOutput, save_agent_atomically
from rlrm.console import slug
from rlrm.errors import ConfigError
from rlrm.evaluation import evaluate
from rlrm.tasks import Task
from rlrm.tracking import WandbOptions, WandbTracker, init_wandb


@dataclass
class RunSpec:
    """Everything that defines a run. ``reward`` is ``"true"`` or ``"learned"`` (then ``reward_model`` is a path)."""

    task: Task
    agent: AgentSpec
    seed: int = 0
    reward: str = "learned"
    reward_model: str | None = None
    reward_model_sha256: str | None = None
    eval_freq: int = 0
    eval_episodes: int = 10
    checkpoint_freq: int = 0
    reward_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reward not in ("true", "learned"):
            raise ConfigError(f"reward source {self.reward!r}: expected 'true' or 'learned'")
        if self.reward == "learned" and not self.reward_model:
            raise ConfigError(f"task {self.task.name!r}: a learned-reward run needs a reward model file")
        if self.reward_model:
            # absolute, so a run folder can be evaluated or resumed from any working directory
            self.reward_model = str(Path(self.reward_model).resolve())
            if not self.reward_model_sha256:
                self.reward_model_sha256 = file_sha256(self.reward_model)

    @property
    def name(self) -> str:
        return f"{self.task.name}/{self.agent.algo}/seed{self.seed}/{self.reward}"

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task.to_dict(), "agent": self.agent.to_dict(), "seed": self.seed, "reward": self.reward,
                "reward_model": self.reward_model, "reward_model_sha256": self.reward_model_sha256,
                "eval_freq": self.eval_freq, "eval_episodes": self.eval_episodes,
                "checkpoint_freq": self.checkpoint_freq, "reward_kwargs": self.reward_kwargs}

    def key(self) -> str:
        """Identity for resuming: same task, agent, seed and reward (model by content) ⇒ same run."""
        d = self.to_dict()
        d.pop("reward_model")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def find_run(output_dir: Path, spec: RunSpec) -> Path | None:
    """The newest existing folder of the same run (by :meth:`RunSpec.key`), if any."""
    base = output_dir / spec.agent.algo
    if not base.is_dir():
        return None
    key = spec.key()
    found = []
    for d in base.glob(f"{slug(spec.task.name)}_*"):
        try:
            cfg = json.loads((d / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if cfg.get("key") == key:
            found.append(d)
    return max(found, key=lambda d: int(d.name.rsplit("_", 1)[1]) if d.name.rsplit("_", 1)[1].isdigit() else -1,
               default=None)


def new_run_dir(output_dir: Path, spec: RunSpec) -> Path:
    """``<output>/<algo>/<task>_<N>`` with the next free N (created)."""
    base = output_dir / spec.agent.algo
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--output-dir {output_dir}: cannot create folders there ({err.strerror})") from None
    if not os.access(base, os.W_OK):
        raise ConfigError(f"--output-dir {output_dir}: not writable")
    n = 1
    while True:
        d = base / f"{slug(spec.task.name)}_{n}"
        try:
            d.mkdir()
            return d
        except FileExistsError:
            n += 1


def _save_replay_buffer(agent: Any, path: Path) -> None:
    buf = agent.replay_buffer
    arrays = {k: getattr(buf, k) for k in ("observations", "next_observations", "actions", "rewards", "dones",
                                           "timeouts") if isinstance(getattr(buf, k, None), np.ndarray)}
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, pos=np.array(buf.pos), full=np.array(buf.full), **arrays)
    os.replace(tmp, path)


def _load_replay_buffer(agent: Any, path: Path) -> None:
    with np.load(path, allow_pickle=False) as data:
        buf = agent.replay_buffer
        for k in data.files:
            if k in ("pos", "full"):
                continue
            target = getattr(buf, k)
            if target.shape == data[k].shape:
                target[...] = data[k]
        buf.pos, buf.full = int(data["pos"]), bool(data["full"])


class RunInterrupted(Exception):
    """Raised when a run is stopped by Ctrl-C/SIGTERM (after its checkpoint is saved)."""


def run(spec: RunSpec, output_dir: str | os.PathLike, resume: bool = False, wandb: WandbOptions | None = None,
        progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) one run and evaluate it on the true reward.

    :param resume: continue the newest folder of the same run from its checkpoint; a finished one is
        reused as it is (its ``result.json`` returned).
    :return: the run's result row (also written to ``result.json``).
    """
    output_dir = Path(output_dir)
    run_dir = find_run(output_dir, spec) if resume else None
    if run_dir is not None and (run_dir / "result.json").exists():
        return json.loads((run_dir / "result.json").read_text())
    resumed = run_dir is not None and (run_dir / "checkpoint" / "agent.zip").exists()
    if run_dir is None:
        run_dir = new_run_dir(output_dir, spec)
        atomic.write_json(run_dir / "config.json", {"rlrm_version": rlrm.__version__, "key": spec.key(),
                                                    "command": command or " ".join(sys.argv), **spec.to_dict()})
    wandb = wandb or WandbOptions()
    tracker = init_wandb(wandb, job_type="train_agent", directory=run_dir,
                         name=f"{spec.task.name}-{spec.agent.algo}-s{spec.seed}-{spec.reward}",
                         config={"run_dir": str(run_dir), **spec.to_dict()})
    try:
        return _train(spec, run_dir, resumed, tracker, progress)
    finally:
        tracker.finish()


def _reward_fn(spec: RunSpec) -> Any:
    """The learned reward of the spec's task (also used to report learned returns of true-reward runs)."""
    if spec.reward_model is None:
        return None
    return rm.load(spec.reward_model).reward_fn(spec.task.name)


def _train(spec: RunSpec, run_dir: Path, resumed: bool, tracker: Any, progress: bool) -> dict[str, Any]:
    learned = _reward_fn(spec)
    train_reward = learned if spec.reward == "learned" else None
    agent_spec = spec.agent
    normalize = None
    if agent_spec.normalize is not None:
        normalize = {"gamma": agent_spec.kwargs.get("gamma", 0.99), **agent_spec.normalize}
    venv = make_vec_env(spec.task, agent_spec.n_envs, spec.seed, train_reward, normalize, run_dir / "monitor",
                        reward_kwargs=spec.reward_kwargs)

    def make_eval_env() -> VecEnv:
        # Evaluation always reads the TRUE return (Monitor); the learned return is reported beside it.
        return make_vec_env(spec.task, min(spec.eval_episodes, 5), spec.seed + 10_000, learned, normalize,
                            training=False, reward_kwargs=spec.reward_kwargs)

    ckpt = run_dir / "checkpoint"
    cls = ALGOS[agent_spec.algo]
    try:
        if resumed:
            if isinstance(venv, VecNormalize) and (ckpt / "vecnormalize.json").exists():
                load_vecnormalize(venv, ckpt / "vecnormalize.json")
            agent = load_agent(ckpt / "agent.zip", env=venv, algo=agent_spec.algo)
            if isinstance(agent, OffPolicyAlgorithm) and (ckpt / "replay_buffer.npz").exists():
                _load_replay_buffer(agent, ckpt / "replay_buffer.npz")
        else:
            n_actions = int(np.prod(venv.action_space.shape)) if venv.action_space.shape else None
            try:
                agent = cls(agent_spec.policy, venv, seed=spec.seed, device="cpu", verbose=0,
                            **build_kwargs(agent_spec, n_actions))
            except (TypeError, ValueError, AssertionError) as err:
                raise ConfigError(f"{agent_spec.algo} hyperparameters for {spec.task.name}: "
                                  f"{str(err).splitlines()[0]}") from None
        logger = configure(str(run_dir), ["csv"])
        if isinstance(tracker, WandbTracker):
            tracker.run.define_metric("global_step")
            tracker.run.define_metric("*", step_metric="global_step")
            logger.output_formats.append(WandbOutput(tracker.run))
        agent.set_logger(logger)

        def save_checkpoint() -> None:
            save_agent_atomically(agent, ckpt / "agent.zip")
            if isinstance(venv, VecNormalize):
                save_vecnormalize(venv, ckpt / "vecnormalize.json")
            if isinstance(agent, OffPolicyAlgorithm):
                _save_replay_buffer(agent, ckpt / "replay_buffer.npz")
            atomic.write_json(ckpt / "state.json", {"num_timesteps": int(agent.num_timesteps), "time": time.time()})

        history = []
        if resumed and (run_dir / "evaluations.json").exists():
            history = json.loads((run_dir / "evaluations.json").read_text())
        eval_cb = TrueRewardEval(make_eval_env, spec.eval_freq, min(spec.eval_episodes, 5),
                                 run_dir / "evaluations.json", sync_normalization, history)
        ckpt_freq = spec.checkpoint_freq or max(agent_spec.n_timesteps // 10, 1000)
        callbacks = [LearnedReturnLogger(), eval_cb, Checkpoint(ckpt_freq, save_checkpoint)]
        remaining = agent_spec.n_timesteps - (agent.num_timesteps if resumed else 0)
        start = time.perf_counter()
        try:
            if remaining > 0:
                agent.learn(remaining, callback=callbacks, reset_num_timesteps=not resumed,
                            progress_bar=progress, tb_log_name=run_dir.name)
        except KeyboardInterrupt:
            save_checkpoint()
            raise RunInterrupted(f"{spec.name}: interrupted at {agent.num_timesteps} steps; checkpoint saved in "
                                 f"{ckpt} (continue with --resume)") from None
        seconds = time.perf_counter() - start
        save_agent_atomically(agent, run_dir / "agent.zip")
        if isinstance(venv, VecNormalize):
            save_vecnormalize(venv, run_dir / "vecnormalize.json")
        eval_env = make_eval_env()
        sync_normalization(venv, eval_env)
        final = evaluate(agent, eval_env, spec.eval_episodes).summary()
        eval_env.close()
    finally:
        venv.close()
    result = {"task": spec.task.name, "algo": agent_spec.algo, "seed": spec.seed, "reward": spec.reward,
              "timesteps": int(agent.num_timesteps), "true_mean": final["true_mean"], "true_std": final["true_std"],
              "learned_mean": final["learned_mean"], "episodes": final["episodes"],
              "train_seconds": round(seconds, 2), "run_dir": str(run_dir), "key": spec.key()}
    atomic.write_json(run_dir / "result.json", result)
    tracker.log({"final/true_return_mean": final["true_mean"], "final/true_return_std": final["true_std"],
                 **({"final/learned_return_mean": final["learned_mean"]} if not np.isnan(final["learned_mean"])
                    else {})})
    tracker.summary({f"final/{k}": v for k, v in final.items()})
    if spec.reward_model:
        tracker.artifact(spec.reward_model, name=f"reward-model-{spec.reward_model_sha256[:12]}",
                         type="reward_model", role="input")
    tracker.artifact(run_dir / "agent.zip", name=f"agent-{slug(spec.task.name)}-{agent_spec.algo}-s{spec.seed}",
                     type="agent")
    return result
