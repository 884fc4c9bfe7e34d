"""One agent-training run: a (task, algo, seed, reward source) unit that an experiment schedules and resumes.

A :class:`RunFolder` owns a run's files (RL Zoo style, ``<output>/<algo>/<task>_<N>/``)::

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
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import configure
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

import rlrm
from rlrm import atomic
from rlrm import model as rm
from rlrm.errors import ConfigError
from rlrm.reward_fn import RewardFn
from rlrm.rl.callbacks import CallFn, LearnedReturnLogger, TrueRewardEval, WandbOutput, every
from rlrm.rl.envs import load_vecnormalize, make_vec_env, save_vecnormalize, sync_normalization
from rlrm.rl.evaluation import evaluate_agent
from rlrm.rl.files import load_agent, save_agent
from rlrm.rl.hyperparams import ALGOS, AgentSpec, build_kwargs
from rlrm.tasks import Task
from rlrm.tracking import Tracker, WandbOptions, WandbTracker, init_wandb
from rlrm.wrappers import RewardShaping

#: evaluation envs are seeded apart from the training envs (``seed + EVAL_SEED_OFFSET``)
EVAL_SEED_OFFSET = 10_000


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
    shaping: RewardShaping = field(default_factory=RewardShaping)

    def __post_init__(self) -> None:
        if self.reward not in ("true", "learned"):
            raise ConfigError(f"reward source {self.reward!r}: expected 'true' or 'learned'")
        if self.reward == "learned" and not self.reward_model:
            raise ConfigError(f"task {self.task.name!r}: a learned-reward run needs a reward model file")
        if self.reward_model:
            # absolute, so a run folder can be evaluated or resumed from any working directory
            self.reward_model = str(Path(self.reward_model).resolve())
            if not self.reward_model_sha256:
                self.reward_model_sha256 = atomic.file_sha256(self.reward_model)

    @property
    def name(self) -> str:
        return f"{self.task.name}/{self.agent.algo}/seed{self.seed}/{self.reward}"

    @property
    def eval_seed(self) -> int:
        """The seed of the evaluation envs (also what ``python -m rlrm.evaluate`` uses for a run folder)."""
        return self.seed + EVAL_SEED_OFFSET

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task.to_dict(), "agent": self.agent.to_dict(), "seed": self.seed, "reward": self.reward,
                "reward_model": self.reward_model, "reward_model_sha256": self.reward_model_sha256,
                "eval_freq": self.eval_freq, "eval_episodes": self.eval_episodes,
                "checkpoint_freq": self.checkpoint_freq, "shaping": self.shaping.to_dict()}

    def key(self) -> str:
        """Identity for resuming: same task, agent, seed and reward (model by content) ⇒ same run."""
        d = self.to_dict()
        d.pop("reward_model")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunFolder:
    """The one owner of a run folder's paths: it creates and finds folders, writes and reads the config, results,
    evaluations and checkpoints, and loads an agent with its normalization."""

    CONFIG = "config.json"
    RESULT = "result.json"
    EVALUATIONS = "evaluations.json"
    CHECKPOINT = "checkpoint"
    AGENT = "agent.zip"
    VECNORMALIZE = "vecnormalize.json"
    REPLAY_BUFFER = "replay_buffer.npz"
    STATE = "state.json"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ finding and creating
    @classmethod
    def create(cls, output_dir: Path, spec: RunSpec, command: str | None = None) -> RunFolder:
        """``<output>/<algo>/<task>_<N>`` with the next free N, with its ``config.json`` written."""
        base = output_dir / spec.agent.algo
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"output_dir {output_dir}: cannot create folders there ({err.strerror})") from None
        if not os.access(base, os.W_OK):
            raise ConfigError(f"output_dir {output_dir}: not writable")
        n = 1
        while True:
            path = base / f"{atomic.slug(spec.task.name)}_{n}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                n += 1
        folder = cls(path)
        atomic.write_json(folder.config_path, {"rlrm_version": rlrm.__version__, "key": spec.key(),
                                               "command": command or " ".join(sys.argv), **spec.to_dict()})
        return folder

    @classmethod
    def find(cls, output_dir: Path, spec: RunSpec) -> RunFolder | None:
        """The newest existing folder of the same run (by :meth:`RunSpec.key`), if any."""
        base = output_dir / spec.agent.algo
        if not base.is_dir():
            return None
        key = spec.key()
        found = []
        for d in base.glob(f"{atomic.slug(spec.task.name)}_*"):
            try:
                cfg = json.loads((d / cls.CONFIG).read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(cfg, dict) and cfg.get("key") == key:
                found.append(d)
        newest = max(found, key=lambda d: int(d.name.rsplit("_", 1)[1]) if d.name.rsplit("_", 1)[1].isdigit()
                     else -1, default=None)
        return cls(newest) if newest is not None else None

    @classmethod
    def of_agent(cls, agent_path: str | os.PathLike) -> RunFolder | None:
        """The run folder an agent file belongs to (its final ``agent.zip`` or its checkpoint's), if any."""
        parent = Path(agent_path).parent
        if parent.name == cls.CHECKPOINT and (parent.parent / cls.CONFIG).is_file():
            return cls(parent.parent)
        return cls(parent) if (parent / cls.CONFIG).is_file() else None

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def result_path(self) -> Path:
        return self.path / self.RESULT

    @property
    def evaluations_path(self) -> Path:
        return self.path / self.EVALUATIONS

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def monitor_dir(self) -> Path:
        return self.path / "monitor"

    @property
    def agent_path(self) -> Path:
        return self.path / self.AGENT

    def normalization_for(self, agent_path: Path) -> Path:
        """The VecNormalize statistics saved with an agent file of this run (final or checkpoint)."""
        return agent_path.parent / self.VECNORMALIZE

    # ------------------------------------------------------------------ reading
    def _read_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None

    def config(self) -> dict[str, Any]:
        """The run's ``config.json`` (a JSON object)."""
        cfg = self._read_json(self.config_path)
        if not isinstance(cfg, dict):
            raise ConfigError(f"{self.config_path}: expected a JSON object")
        return cfg

    def spec(self) -> RunSpec:
        """The :class:`RunSpec` stored in ``config.json``."""
        cfg = self.config()
        try:
            task = Task.from_dict(cfg["task"], f"{self.config_path}: field 'task'")
            return RunSpec(task, AgentSpec.from_dict(cfg["agent"]), int(cfg["seed"]), str(cfg["reward"]),
                           cfg.get("reward_model"), cfg.get("reward_model_sha256"), int(cfg.get("eval_freq", 0)),
                           int(cfg.get("eval_episodes", 10)), int(cfg.get("checkpoint_freq", 0)),
                           RewardShaping.from_dict(cfg.get("shaping")))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{self.config_path}: not an rlrm run config ({type(err).__name__}: {err})") from None

    def result(self) -> dict[str, Any] | None:
        """The result row if the run finished, else ``None``."""
        return self._read_json(self.result_path) if self.result_path.exists() else None

    def evaluations(self) -> list[dict[str, Any]]:
        """The periodic evaluations so far (``[]`` if none)."""
        if not self.evaluations_path.exists():
            return []
        rows = self._read_json(self.evaluations_path)
        if not isinstance(rows, list):
            raise ConfigError(f"{self.evaluations_path}: expected a JSON list of evaluations")
        return rows

    def has_checkpoint(self) -> bool:
        return (self.checkpoint_dir / self.AGENT).exists()

    # ------------------------------------------------------------------ writing
    def write_result(self, result: dict[str, Any]) -> None:
        atomic.write_json(self.result_path, result)

    def write_evaluations(self, rows: list[dict[str, Any]]) -> None:
        atomic.write_json(self.evaluations_path, rows)

    def save_checkpoint(self, agent: BaseAlgorithm, venv: VecEnv) -> None:
        """Agent, normalization statistics, replay buffer and step count, each written atomically."""
        ckpt = self.checkpoint_dir
        save_agent(agent, ckpt / self.AGENT)
        if isinstance(venv, VecNormalize):
            save_vecnormalize(venv, ckpt / self.VECNORMALIZE)
        if isinstance(agent, OffPolicyAlgorithm):
            _save_replay_buffer(agent, ckpt / self.REPLAY_BUFFER)
        atomic.write_json(ckpt / self.STATE, {"num_timesteps": int(agent.num_timesteps), "time": time.time()})

    def load_checkpoint(self, venv: VecEnv, algo: str) -> BaseAlgorithm:
        """The checkpointed agent bound to ``venv`` (statistics and replay buffer restored)."""
        ckpt = self.checkpoint_dir
        if isinstance(venv, VecNormalize) and (ckpt / self.VECNORMALIZE).exists():
            load_vecnormalize(venv, ckpt / self.VECNORMALIZE)
        agent = load_agent(ckpt / self.AGENT, env=venv, algo=algo)
        if isinstance(agent, OffPolicyAlgorithm) and (ckpt / self.REPLAY_BUFFER).exists():
            _load_replay_buffer(agent, ckpt / self.REPLAY_BUFFER)
        return agent

    def save_final(self, agent: BaseAlgorithm, venv: VecEnv) -> None:
        save_agent(agent, self.agent_path)
        if isinstance(venv, VecNormalize):
            save_vecnormalize(venv, self.path / self.VECNORMALIZE)


def _save_replay_buffer(agent: Any, path: Path) -> None:
    buf = agent.replay_buffer
    arrays = {k: getattr(buf, k) for k in ("observations", "next_observations", "actions", "rewards", "dones",
                                           "timeouts") if isinstance(getattr(buf, k, None), np.ndarray)}
    with atomic.temp_path(path) as tmp:
        np.savez(tmp, pos=np.array(buf.pos), full=np.array(buf.full), **arrays)


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


def train_run(spec: RunSpec, output_dir: str | os.PathLike, *, resume: bool = False,
              wandb: WandbOptions | None = None, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) one run and evaluate it on the true reward.

    :param resume: continue the newest folder of the same run from its checkpoint; a finished one is
        reused as it is (its ``result.json`` returned).
    :return: the run's result row (also written to ``result.json``).
    """
    output_dir = Path(output_dir)
    folder = RunFolder.find(output_dir, spec) if resume else None
    if folder is not None and (done := folder.result()) is not None:
        return done
    resumed = folder is not None and folder.has_checkpoint()
    if folder is None:
        folder = RunFolder.create(output_dir, spec, command)
    tracker = init_wandb(wandb, job_type="train_agent", directory=folder.path,
                         name=f"{spec.task.name}-{spec.agent.algo}-s{spec.seed}-{spec.reward}",
                         config={"run_dir": str(folder.path), **spec.to_dict()})
    try:
        return _train(spec, folder, resumed, tracker, progress)
    finally:
        tracker.finish()


def learned_reward(spec: RunSpec) -> RewardFn | None:
    """The learned reward of the spec's task (also used to report learned returns of true-reward runs)."""
    if spec.reward_model is None:
        return None
    return rm.load(spec.reward_model).reward_fn(spec.task.name)


def _normalize_options(agent: AgentSpec) -> dict[str, Any] | None:
    if agent.normalize is None:
        return None
    return {"gamma": agent.kwargs.get("gamma", 0.99), **agent.normalize}


def _new_agent(spec: RunSpec, venv: VecEnv) -> BaseAlgorithm:
    n_actions = int(np.prod(venv.action_space.shape)) if venv.action_space.shape else None
    try:
        return ALGOS[spec.agent.algo](spec.agent.policy, venv, seed=spec.seed, device="cpu", verbose=0,
                                      **build_kwargs(spec.agent, n_actions))
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"{spec.agent.algo} hyperparameters for {spec.task.name}: "
                          f"{str(err).splitlines()[0]}") from None


def _attach_logger(agent: BaseAlgorithm, folder: RunFolder, tracker: Tracker) -> None:
    logger = configure(str(folder.path), ["csv"])
    if isinstance(tracker, WandbTracker):
        tracker.run.define_metric("global_step")
        tracker.run.define_metric("*", step_metric="global_step")
        logger.output_formats.append(WandbOutput(tracker.run))
    agent.set_logger(logger)


def _train(spec: RunSpec, folder: RunFolder, resumed: bool, tracker: Tracker, progress: bool) -> dict[str, Any]:
    learned = learned_reward(spec)
    normalize = _normalize_options(spec.agent)
    shaping = spec.shaping if spec.reward == "learned" else None
    venv = make_vec_env(spec.task, spec.agent.n_envs, spec.seed, learned if spec.reward == "learned" else None,
                        normalize, folder.monitor_dir, shaping=shaping)

    def make_eval_env() -> VecEnv:
        # Evaluation always reads the TRUE return (Monitor); the learned return is reported beside it.
        return make_vec_env(spec.task, min(spec.eval_episodes, 5), spec.eval_seed, learned, normalize,
                            training=False, shaping=shaping)

    try:
        agent = folder.load_checkpoint(venv, spec.agent.algo) if resumed else _new_agent(spec, venv)
        _attach_logger(agent, folder, tracker)
        start_steps = agent.num_timesteps if resumed else 0
        evaluator = TrueRewardEval(make_eval_env, spec.eval_episodes, folder.write_evaluations,
                                   sync_normalization, folder.evaluations() if resumed else [])
        callbacks = [LearnedReturnLogger(),
                     every(spec.eval_freq, evaluator, start_steps) if spec.eval_freq > 0 else None,
                     every(spec.checkpoint_freq or max(spec.agent.n_timesteps // 10, 1000),
                           CallFn(lambda: folder.save_checkpoint(agent, venv)), start_steps)]
        remaining = spec.agent.n_timesteps - start_steps
        start = time.perf_counter()
        try:
            if remaining > 0:
                agent.learn(remaining, callback=[c for c in callbacks if c is not None],
                            reset_num_timesteps=not resumed, progress_bar=progress, tb_log_name=folder.path.name)
        except KeyboardInterrupt:
            folder.save_checkpoint(agent, venv)
            raise RunInterrupted(f"{spec.name}: interrupted at {agent.num_timesteps} steps; checkpoint saved in "
                                 f"{folder.checkpoint_dir} (continue with --resume)") from None
        finally:
            evaluator.close()
        seconds = time.perf_counter() - start
        folder.save_final(agent, venv)
        eval_env = make_eval_env()
        sync_normalization(venv, eval_env)
        final = evaluate_agent(agent, eval_env, spec.eval_episodes).summary()
        eval_env.close()
    finally:
        venv.close()
    result = {"task": spec.task.name, "algo": spec.agent.algo, "seed": spec.seed, "reward": spec.reward,
              "timesteps": int(agent.num_timesteps), "true_mean": final["true_mean"], "true_std": final["true_std"],
              "learned_mean": final["learned_mean"], "episodes": final["episodes"],
              "train_seconds": round(seconds, 2), "run_dir": str(folder.path), "key": spec.key()}
    folder.write_result(result)
    _log_final(spec, folder, tracker, final)
    return result


def _log_final(spec: RunSpec, folder: RunFolder, tracker: Tracker, final: dict[str, Any]) -> None:
    tracker.log({"final/true_return_mean": final["true_mean"], "final/true_return_std": final["true_std"],
                 **({"final/learned_return_mean": final["learned_mean"]} if not np.isnan(final["learned_mean"])
                    else {})})
    tracker.summary({f"final/{k}": v for k, v in final.items()})
    if spec.reward_model and spec.reward_model_sha256:
        tracker.artifact(spec.reward_model, name=f"reward-model-{spec.reward_model_sha256[:12]}",
                         type="reward_model", role="input")
    tracker.artifact(folder.agent_path, name=f"agent-{atomic.slug(spec.task.name)}-{spec.agent.algo}-s{spec.seed}",
                     type="agent")


@dataclass
class LoadedAgent:
    """An agent ready to evaluate: the agent, its evaluation env (true reward inside, learned beside), and the
    settings used."""

    agent: BaseAlgorithm
    venv: VecEnv
    task: Task
    episodes: int
    seed: int


def load_agent_for_eval(agent_path: Path, folder: RunFolder | None, *, task: Task | None = None,
                        n_episodes: int | None = None, seed: int | None = None,
                        reward_model: rm.RewardModel | None = None) -> LoadedAgent:
    """Load an agent file with what its run used: normalization statistics, reward shaping, evaluation seed.

    :param folder: the agent's run folder (``None``: a bare agent file; then ``task`` is required).
    :param reward_model: report the learned return of this model (default: the run's model, if any).
    """
    spec = folder.spec() if folder is not None else None
    task = task or (spec.task if spec else None)
    if task is None:
        raise ConfigError(f"agent {agent_path}: no run config; the task must be given")
    episodes = n_episodes if n_episodes is not None else (spec.eval_episodes if spec else 10)
    if episodes < 1:
        raise ConfigError(f"episodes must be at least 1, got {episodes}")
    seed = seed if seed is not None else (spec.eval_seed if spec else 12345)
    same_task = spec is not None and spec.task.name == task.name
    if reward_model is not None:
        learned: RewardFn | None = reward_model.reward_fn(task.name)
    else:
        learned = learned_reward(spec) if spec is not None and same_task else None
    normalize = _normalize_options(spec.agent) if spec is not None else None
    shaping = spec.shaping if spec is not None and same_task and spec.reward == "learned" else None
    venv = make_vec_env(task, min(episodes, 5), seed, learned, normalize, training=False, shaping=shaping)
    if isinstance(venv, VecNormalize) and folder is not None:
        stats = folder.normalization_for(agent_path)
        if not stats.exists():
            venv.close()
            raise ConfigError(f"agent {agent_path}: its run used VecNormalize but {stats} is missing; the agent "
                              "cannot be evaluated without its normalization statistics")
        load_vecnormalize(venv, stats)
    try:
        agent = load_agent(agent_path, env=venv, algo=spec.agent.algo if spec else None, env_name=task.name)
    except BaseException:
        venv.close()
        raise
    venv.seed(seed)  # loading with an env re-seeds it with the agent's training seed
    return LoadedAgent(agent, venv, task, episodes, seed)
