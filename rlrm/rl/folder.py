"""A run's identity (:class:`RunSpec`) and its folder (:class:`RunFolder`), the one owner of a run's files.

Layout (RL Zoo style), ``<output>/<algo>/<task>_<N>/``::

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
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

import rlrm
from rlrm import atomic
from rlrm import model as rm
from rlrm.errors import ConfigError
from rlrm.reward_fn import RewardFn
from rlrm.rl.envs import load_vecnormalize, save_vecnormalize
from rlrm.rl.files import load_agent, save_agent
from rlrm.rl.hyperparams import AgentSpec
from rlrm.tasks import Task
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


def learned_reward(spec: RunSpec) -> RewardFn | None:
    """The learned reward of the spec's task (also used to report learned returns of true-reward runs)."""
    if spec.reward_model is None:
        return None
    return rm.load(spec.reward_model).reward_fn(spec.task.name)


def normalize_options(agent: AgentSpec) -> dict[str, Any] | None:
    if agent.normalize is None:
        return None
    return {"gamma": agent.kwargs.get("gamma", 0.99), **agent.normalize}
