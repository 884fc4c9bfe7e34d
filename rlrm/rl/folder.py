"""A run's identity (:class:`RunSpec`) and its folder (:class:`RunFolder`), the one owner of a run's files.

Layout (RL Zoo style), ``<output>/<algo>/<task>_<N>/``::

    config.json        the exact run spec, rlrm version, command (written first, never changed)
    .lock              held (flock) by the one process training in the folder
    checkpoint/        agent.zip, vecnormalize.json, replay_buffer.npz, state.json (steps, the reward version that
                       paid the agent), replaced as a whole
    monitor/           Monitor CSVs (true rewards): env<i>.monitor.csv, and env<i>.part<k>.monitor.csv for
                       the segments before each resume
    progress.csv       SB3's logger output (a resumed run appends)
    evaluations.json   periodic true-reward evaluations
    wandb.json         the W&B run id (a resumed run logs into the same W&B run)
    feedback/          a run with an online feedback loop: its answers, query log, models (:mod:`rlrm.rl.online`)
    best_true/         agent.zip, vecnormalize.json, evaluation.json: the agent of the best true-reward evaluation
    reward_hacking.json  proxy_vs_true.png   a learned-reward run: proxy vs true return (:mod:`rlrm.rl.hacking`)
    agent.zip  vecnormalize.json  result.json   (at the end; result.json means "done")
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize

import rlrm
from rlrm import atomic
from rlrm import model as rm
from rlrm.errors import ConfigError
from rlrm.reward_fn import RewardFn
from rlrm.rl.envs import load_vecnormalize, save_vecnormalize
from rlrm.rl.files import load_agent, save_agent
from rlrm.rl.hyperparams import AgentSpec
from rlrm.rl.relabel import keep_true_rewards
from rlrm.tasks import Task
from rlrm.wrappers import RewardShaping, VecLearnedReward

#: evaluation envs are seeded apart from the training envs (``seed + EVAL_SEED_OFFSET``)
EVAL_SEED_OFFSET = 10_000
#: the strata of a labels round (:attr:`FeedbackSpec.ask_first`), in the order they are filled
ASK_FIRST = ("ends", "top")


@dataclass(frozen=True)
class FeedbackSpec:
    """An online feedback loop (:mod:`rlrm.rl.online`): while the agent trains, a teacher labels transitions of its
    recent rollouts and the reward model is retrained on them.

    :param kind: ``labels`` (scalar labels per transition) or ``preferences`` (segment pairs; the teacher judges
        them by the task's labeler).
    :param teacher: labels: a labeler spec (``env``, ``rlrm:...``, ``python:...``, ``file:...``), ``None``: the
        task's own; preferences: a teacher spec (:class:`rlrm.data.teachers.Teacher`), ``None``: ``oracle``.
    :param budget: the most labels (or pairs) the teacher is asked for, pretraining included (0 is refused: a loop
        that never asks is a run on a fixed reward model, without a feedback loop).
    :param feedback_every: env steps between feedback rounds.
    :param query: how the transitions (or pairs) to ask about are chosen: ``uniform``, or ``disagreement`` (those a
        small ensemble trained on the answers so far disagrees on most; the agent is still paid by the one model).
    :param pretrain_steps: random-policy transitions before training (``None``: without a starting reward model, a
        quarter of the budget (labels) or 1,000 (preferences: a quarter of the budget in pairs is asked on them);
        none with one). Labels: each is asked, so at most the budget.
    :param feedback_epochs: training epochs per retraining (warm start; early stopping may end it sooner).
    :param segment_length: preferences: steps per segment.
    :param ask_first: labels: strata asked about before the ``query`` rule fills the round, each at most a quarter
        of it: ``ends`` (transitions that end an episode by termination), ``top`` (those the current model pays
        most). ``None``: both for labels, none for preferences (which have no strata).
    :param label_transform: labels, for a model the loop trains itself: ``none`` or ``symlog``
        (:class:`rlrm.train.loop.TrainConfig`); a starting ``--reward-model`` keeps its own.
    """

    kind: str = "labels"
    teacher: str | None = None
    budget: int = 0
    feedback_every: int = 1000
    query: str = "uniform"
    pretrain_steps: int | None = None
    feedback_epochs: int = 20
    segment_length: int = 25
    ask_first: tuple[str, ...] | None = None
    label_transform: str = "none"

    def __post_init__(self) -> None:
        if self.label_transform not in ("none", "symlog"):
            raise ConfigError(f"label_transform {self.label_transform!r}: expected 'none' or 'symlog'")
        if self.label_transform != "none" and self.kind != "labels":
            raise ConfigError(f"label_transform {self.label_transform}: only for scalar labels (--feedback labels); "
                              "preferences fix a reward up to shift and scale")
        if self.kind not in ("labels", "preferences"):
            raise ConfigError(f"feedback {self.kind!r}: expected 'labels' or 'preferences'")
        strata = (ASK_FIRST if self.kind == "labels" else ()) if self.ask_first is None else tuple(self.ask_first)
        if any(s not in ASK_FIRST for s in strata) or len(set(strata)) != len(strata):
            raise ConfigError(f"ask_first {list(strata)}: expected some of {list(ASK_FIRST)}, each once")
        if strata and self.kind != "labels":
            raise ConfigError(f"ask_first {list(strata)}: only for scalar labels (--feedback labels); preference "
                              "rounds have no strata")
        object.__setattr__(self, "ask_first", strata)
        if self.query not in ("uniform", "disagreement"):
            raise ConfigError(f"query {self.query!r}: expected 'uniform' or 'disagreement'")
        if self.budget == 0 and not isinstance(self.budget, bool):
            raise ConfigError("budget: 0 means the teacher is never asked; expected a positive number of labels (or "
                              "pairs), or a run without the feedback loop on a fixed reward model")
        for name in ("budget", "feedback_every", "feedback_epochs", "segment_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
        most = self.budget if self.kind == "labels" else None
        if self.pretrain_steps is not None and not 0 <= self.pretrain_steps <= (most or self.pretrain_steps):
            raise ConfigError(f"pretrain_steps: expected 0 to budget ({self.budget}) labels, got {self.pretrain_steps}")

    def pretrain_for(self, has_model: bool) -> int:
        """How many random-policy transitions are collected first (given whether a starting model exists)."""
        if self.pretrain_steps is not None:
            return self.pretrain_steps
        if has_model:
            return 0
        return max(1, self.budget // 4) if self.kind == "labels" else 1000

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "teacher": self.teacher, "budget": self.budget,
                "feedback_every": self.feedback_every, "query": self.query, "pretrain_steps": self.pretrain_steps,
                "feedback_epochs": self.feedback_epochs, "segment_length": self.segment_length,
                "ask_first": list(self.ask_first or ()), "label_transform": self.label_transform}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeedbackSpec:
        d = dict(d)
        if "ask_first" in d:
            d["ask_first"] = tuple(d["ask_first"])
        else:  # a run recorded before strata existed asked without them
            d["ask_first"] = ()
        return cls(**d)


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
    feedback: FeedbackSpec | None = None

    def __post_init__(self) -> None:
        if self.reward not in ("true", "learned"):
            raise ConfigError(f"reward source {self.reward!r}: expected 'true' or 'learned'")
        if self.feedback is not None and self.reward != "learned":
            raise ConfigError(f"task {self.task.name!r}: online feedback needs a learned reward, not {self.reward!r}")
        if self.reward == "learned" and not self.reward_model and self.feedback is None:
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
                "checkpoint_freq": self.checkpoint_freq, "shaping": self.shaping.to_dict(),
                # only when set: the keys (and so the folders) of runs without feedback stay as they were
                **({"feedback": self.feedback.to_dict()} if self.feedback is not None else {})}

    def key(self) -> str:
        """Identity for resuming: same task, agent, seed and reward (model by content) ⇒ same run."""
        d = self.to_dict()
        d.pop("reward_model")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunFolder:
    """The one owner of a run folder's paths: it creates and finds folders, locks them while a process trains
    in them, writes and reads the config, results, evaluations and checkpoints, and loads an agent with its
    normalization."""

    CONFIG = "config.json"
    RESULT = "result.json"
    EVALUATIONS = "evaluations.json"
    PROGRESS = "progress.csv"
    WANDB = "wandb.json"
    LOCK = ".lock"
    CHECKPOINT = "checkpoint"
    BEST_TRUE = "best_true"
    AGENT = "agent.zip"
    VECNORMALIZE = "vecnormalize.json"
    REPLAY_BUFFER = "replay_buffer.npz"
    STATE = "state.json"
    FEEDBACK = "feedback"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ finding and creating
    @classmethod
    def create(cls, output_dir: Path, spec: RunSpec, command: str | None = None) -> RunFolder:
        """``<output>/<algo>/<task>_<N>`` with the next free N, locked (see :meth:`lock`), its ``config.json``
        written."""
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
        # locked before config.json exists: a concurrent `find` never sees this folder unowned
        folder = cls(path).lock()
        folder._write(folder.config_path, lambda p: atomic.write_json(p, {
            "rlrm_version": rlrm.__version__, "key": spec.key(), "command": command or " ".join(sys.argv),
            **spec.to_dict()}))
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
        """The run folder an agent file belongs to (its final ``agent.zip``, its checkpoint's or its true peak's),
        if any."""
        parent = Path(agent_path).parent
        if parent.name in (cls.CHECKPOINT, cls.BEST_TRUE) and (parent.parent / cls.CONFIG).is_file():
            return cls(parent.parent)
        return cls(parent) if (parent / cls.CONFIG).is_file() else None

    # ------------------------------------------------------------------ owning
    def lock(self) -> RunFolder:
        """Become the folder's one owner until :meth:`unlock` or the end of the process; a second owner (another
        process training in it) is refused. Leftovers of an earlier owner that was killed are cleaned up.

        An ``flock`` on ``.lock``: the kernel drops it with its process, also after ``kill -9``.
        """
        if self._lock_fd is not None:
            return self
        fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise ConfigError(f"run folder {self.path}: in use by another process"
                              f"{f' (pid {owner})' if owner.isdigit() else ''}; wait for it to end or stop it "
                              "first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        self._clean_up_after_a_kill()
        return self

    def unlock(self) -> None:
        """Give up ownership (see :meth:`lock`)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _clean_up_after_a_kill(self) -> None:
        """Remove temporary files of writes that never finished; put back a checkpoint cut off mid-swap."""
        for tmp in [*self.path.glob(".*.tmp*"), *self.checkpoint_dir.glob(".*.tmp*")]:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        old = sorted(self.path.glob(f".{self.CHECKPOINT}.*.old"), key=lambda p: p.stat().st_mtime)
        if old and not self.checkpoint_dir.exists():
            os.replace(old.pop(), self.checkpoint_dir)
        for stale in old:
            shutil.rmtree(stale, ignore_errors=True)

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
    def progress_path(self) -> Path:
        return self.path / self.PROGRESS

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def monitor_dir(self) -> Path:
        return self.path / "monitor"

    @property
    def feedback_dir(self) -> Path:
        """The files of an online feedback loop (laid out by :mod:`rlrm.rl.online`)."""
        return self.path / self.FEEDBACK

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
                           RewardShaping.from_dict(cfg.get("shaping")),
                           FeedbackSpec.from_dict(cfg["feedback"]) if cfg.get("feedback") else None)
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
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ConfigError(f"{self.evaluations_path}: expected a JSON list of evaluations (objects)")
        return rows

    def has_checkpoint(self) -> bool:
        return (self.checkpoint_dir / self.AGENT).exists()

    def wandb_run_id(self) -> str | None:
        """The W&B run this run logs to (kept so that a resumed run goes on logging into the same one)."""
        path = self.path / self.WANDB
        if not path.exists():
            return None
        stored = self._read_json(path)
        run_id = stored.get("run_id") if isinstance(stored, dict) else None
        return run_id if isinstance(run_id, str) and run_id else None

    def history(self) -> list[Path]:
        """The files that show training took place in this folder (logs, evaluations, a checkpoint)."""
        found = [p for p in (self.progress_path, self.evaluations_path) if p.exists() and p.stat().st_size]
        if self.checkpoint_dir.is_dir():
            found += sorted(p for p in self.checkpoint_dir.iterdir() if not p.name.startswith("."))
        return found + [p for p in self._monitor_files() if _has_rows(p)]

    def resume_point(self) -> int | None:
        """Check, reading only, that the run can go on from its checkpoint before anything is written.

        :return: the checkpoint's step count, or ``None`` for a folder in which no training took place yet.
        :raise ConfigError: the folder has history but no checkpoint, or a damaged one (naming the file, and
            how to start over).
        """
        ckpt = self.checkpoint_dir
        agent, state = ckpt / self.AGENT, ckpt / self.STATE
        if not agent.exists():
            history = self.history()
            if not history:
                return None
            raise self._cannot_resume(f"{agent}: missing, though {history[0]} shows training took place")
        try:
            self.evaluations()
            self.wandb_run_id()
            state_row = self._read_json(state) if state.exists() else {}
            for path in (agent, ckpt / self.REPLAY_BUFFER):
                if path.exists():
                    _check_zip(path)
        except ConfigError as err:
            raise self._cannot_resume(str(err)) from None
        steps = state_row.get("num_timesteps") if isinstance(state_row, dict) else None
        return int(steps) if isinstance(steps, (int, float)) else 0

    def _cannot_resume(self, why: str) -> ConfigError:
        return ConfigError(f"{why}; the run cannot be resumed: delete the run folder {self.path} or start a new "
                           "run without resuming")

    # ------------------------------------------------------------------ writing
    def _write(self, path: Path, write: Callable[[Path], None]) -> None:
        """``write(path)``, with a failure (disk full, read-only) named by the file meant, not a temp file."""
        try:
            write(path)
        except OSError as err:
            raise ConfigError(f"{path}: cannot write ({err.strerror or type(err).__name__})") from None

    def write_result(self, result: dict[str, Any]) -> None:
        self._write(self.result_path, lambda p: atomic.write_json(p, result))

    def write_evaluations(self, rows: list[dict[str, Any]]) -> None:
        self._write(self.evaluations_path, lambda p: atomic.write_json(p, rows))

    def write_wandb_run_id(self, run_id: str) -> None:
        self._write(self.path / self.WANDB, lambda p: atomic.write_json(p, {"run_id": run_id}))

    def keep_monitor_logs(self) -> list[tuple[Path, Path]]:
        """Before a resumed segment: move each Monitor CSV with episodes to ``env<i>.part<k>.monitor.csv``.

        Monitor starts its files anew; one file per segment keeps each file's ``t_start`` true, and SB3's
        ``load_results(monitor_dir)`` reads them all as one run.

        :return: the moves made, ``(from, to)``, for :meth:`restore_monitor_logs`.
        """
        moved = []
        for path in self._monitor_files():
            if ".part" in path.name or not _has_rows(path):
                continue
            stem = path.name[: -len(".monitor.csv")]
            k = 1
            while (target := path.with_name(f"{stem}.part{k}.monitor.csv")).exists():
                k += 1
            os.replace(path, target)
            moved.append((path, target))
        return moved

    def restore_monitor_logs(self, moved: list[tuple[Path, Path]]) -> None:
        """Undo :meth:`keep_monitor_logs` (a segment that failed to start): its new, empty files go."""
        for original, target in moved:
            os.replace(target, original)

    def _monitor_files(self) -> list[Path]:
        return sorted(self.monitor_dir.glob("*.monitor.csv")) if self.monitor_dir.is_dir() else []

    def save_checkpoint(self, agent: BaseAlgorithm, venv: VecEnv) -> None:
        """Agent, normalization statistics, replay buffer, step count and the version of the learned reward that paid
        the agent (a feedback loop's model version; ``None`` otherwise), as one folder that replaces the previous
        checkpoint whole: a save that fails or is cut off leaves the previous checkpoint as it was."""
        def write(ckpt: Path) -> None:
            with atomic.directory(ckpt) as tmp:
                save_agent(agent, tmp / self.AGENT)
                if isinstance(venv, VecNormalize):
                    save_vecnormalize(venv, tmp / self.VECNORMALIZE)
                if isinstance(agent, OffPolicyAlgorithm):
                    _save_replay_buffer(agent.replay_buffer, tmp / self.REPLAY_BUFFER)
                atomic.write_json(tmp / self.STATE, {"num_timesteps": int(agent.num_timesteps), "time": time.time(),
                                                     "reward_version": _reward_version(venv)})

        self._write(self.checkpoint_dir, write)

    def checkpoint_state(self) -> dict[str, Any]:
        """The checkpoint's ``state.json``: ``num_timesteps``, ``reward_version`` (``{}`` without one)."""
        path = self.checkpoint_dir / self.STATE
        found = self._read_json(path) if path.exists() else {}
        return found if isinstance(found, dict) else {}

    def load_checkpoint(self, venv: VecEnv, algo: str) -> BaseAlgorithm:
        """The checkpointed agent bound to ``venv`` (statistics and replay buffer restored; a buffer saved with the
        env's true rewards beside, :func:`~rlrm.rl.relabel.keep_true_rewards`, keeps them again)."""
        ckpt = self.checkpoint_dir
        if isinstance(venv, VecNormalize) and (ckpt / self.VECNORMALIZE).exists():
            load_vecnormalize(venv, ckpt / self.VECNORMALIZE)
        try:
            agent = load_agent(ckpt / self.AGENT, env=venv, algo=algo)
        except ConfigError as err:
            raise self._cannot_resume(str(err)) from None
        except Exception as err:  # SB3 meets a damaged zip with AssertionError, ValueError, RuntimeError, ...
            raise self._cannot_resume(f"{ckpt / self.AGENT}: not a readable agent file ({_reason(err)})") from None
        if isinstance(agent, OffPolicyAlgorithm) and (ckpt / self.REPLAY_BUFFER).exists():
            try:
                if "true_rewards" in _buffer_fields(ckpt / self.REPLAY_BUFFER):
                    keep_true_rewards(agent)
                _load_replay_buffer(agent.replay_buffer, ckpt / self.REPLAY_BUFFER)
            except ConfigError as err:
                raise self._cannot_resume(str(err)) from None
        return agent

    def save_final(self, agent: BaseAlgorithm, venv: VecEnv) -> None:
        self._write(self.agent_path, lambda p: save_agent(agent, p))
        if isinstance(venv, VecNormalize):
            self._write(self.path / self.VECNORMALIZE, lambda p: save_vecnormalize(venv, p))


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an ``flock`` on ``lock_path`` (created if missing) while the block runs, waiting for other holders:
    for a read-modify-write of a file that several processes share (``results.json``)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__


def _has_rows(monitor_csv: Path) -> bool:
    """Whether a Monitor CSV holds an episode (beyond its two header lines)."""
    with open(monitor_csv, "rb") as f:
        return sum(1 for line in f if line.strip()) > 2


def _check_zip(path: Path) -> None:
    """A clear error for a truncated or damaged zip (agent files and ``.npz`` are zips)."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ConfigError(f"{path}: truncated or not a zip file ({_reason(err)})") from None
    if bad is not None:
        raise ConfigError(f"{path}: damaged (entry {bad!r} fails its checksum)")


#: the arrays of an SB3 replay buffer (a dict of arrays for Dict observations), and the env's rewards that a
#: :class:`~rlrm.rl.relabel.TrueRewardReplayBuffer` keeps
BUFFER_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts", "true_rewards")


def _buffer_leaves(buf: Any) -> dict[str, np.ndarray]:
    """Every array of a replay buffer by name; a Dict observation's arrays as ``observations.<key>``."""
    leaves: dict[str, np.ndarray] = {}
    for name in BUFFER_FIELDS:
        value = getattr(buf, name, None)
        if isinstance(value, dict):
            leaves.update({f"{name}.{k}": v for k, v in value.items() if isinstance(v, np.ndarray)})
        elif isinstance(value, np.ndarray):
            leaves[name] = value
    return leaves


def _save_replay_buffer(buf: Any, path: Path) -> None:
    with atomic.temp_path(path) as tmp:
        np.savez(tmp, pos=np.array(buf.pos), full=np.array(buf.full), **_buffer_leaves(buf))


def _buffer_fields(path: Path) -> list[str]:
    """The arrays a saved replay buffer holds."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return list(data.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{path}: not a readable replay buffer ({_reason(err)})") from None


def _load_replay_buffer(buf: Any, path: Path) -> None:
    """Fill ``buf`` from :func:`_save_replay_buffer`'s file; every field must be there with the buffer's shape."""
    try:
        with np.load(path, allow_pickle=False) as data:
            for name, target in _buffer_leaves(buf).items():
                if name not in data.files:
                    raise ConfigError(f"{path}: field {name!r} missing (the file has {sorted(data.files)})")
                stored = data[name]
                if stored.shape != target.shape:
                    raise ConfigError(f"{path}: field {name!r} has shape {stored.shape}, expected {target.shape} "
                                      "(a buffer of another size or env)")
                target[...] = stored
            pos, full = int(data["pos"]), bool(data["full"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{path}: not a readable replay buffer ({_reason(err)})") from None
    if not 0 <= pos <= buf.buffer_size:
        raise ConfigError(f"{path}: field 'pos' is {pos}, expected 0 to {buf.buffer_size}")
    buf.pos, buf.full = pos, full


def _reward_version(venv: VecEnv) -> int | None:
    """The version of the learned reward paying ``venv`` (:attr:`VecLearnedReward.reward_version`), if any."""
    while not isinstance(venv, VecLearnedReward):
        if not isinstance(venv, VecEnvWrapper):
            return None
        venv = venv.venv
    return venv.reward_version


def learned_reward(spec: RunSpec) -> RewardFn | None:
    """The learned reward of the spec's task (also used to report learned returns of true-reward runs)."""
    if spec.reward_model is None:
        return None
    return rm.load(spec.reward_model).reward_fn(spec.task.name)


def normalize_options(agent: AgentSpec) -> dict[str, Any] | None:
    if agent.normalize is None:
        return None
    return {"gamma": agent.kwargs.get("gamma", 0.99), **agent.normalize}
