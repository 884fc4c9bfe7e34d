"""The online feedback loop (issue #11): while an agent trains, a teacher labels transitions (or compares segment
pairs) from the agent's own recent rollouts, the reward model is retrained on every answer so far (warm start) and
swapped into the running :class:`~rlrm.wrappers.VecLearnedReward` without rebuilding the envs.

1. :func:`open_feedback`: the starting model (the run's ``reward_model``, or one trained on ``pretrain_steps``
   random-policy transitions labeled by the teacher), saved as version 0 (:func:`start_feedback`); or, for a run
   that goes on (``--resume``), where its feedback folder stands.
2. :class:`FeedbackLoop` (a callback) records every training transition through a :class:`RecordingReward` (the
   raw observations the reward model sees, terminal ``next_obs`` included) into a ring of the steps since the last
   round. At the first rollout end on or after each ``feedback_every`` grid point it runs a round: choose
   transitions (or segment pairs) uniformly or by disagreement, save them as the pending round, log them, ask the
   teacher about those only (a preference teacher judges by the task's labeler on the asked segments' transitions
   alone), append the answers, retrain, save the next version, swap it in (between rollouts: a PPO rollout is
   never paid by two models), relabel an off-policy replay buffer, write ``feedback.json``.
3. At the budget it stops asking; the agent trains on the last model.

Files, in the run folder's ``feedback/`` (:mod:`rlrm.rl.feedback_files`)::

    labels/            labels: TransitionDataset of every answered transition (labels = the teacher's answers)
    transitions/ preferences/   preferences: the asked segments' transitions (labels: the labeler's rewards the
                       teacher judged by; not trained on) and the answered pairs pointing into them
    queries.jsonl      one line per query ({"kind": "query", ...}) and per answer ({"kind": "answer", "id": ...};
                       a preference answer "skip" is a query the teacher declined)
    models/reward_model_v<k>.safetensors   the model after round k (v0: the starting model)
    pending/           the round being asked: its questions, saved before they are logged (and unanswered.csv, the
                       transitions a ``file:`` teacher has no answers for); gone once the round is in feedback.json
    feedback.json      budget, queries asked, current version and model, one row per round, the resumes (written
                       last in a round)

Resuming (``--resume``): ``feedback.json`` says where the loop stands; the query log is checked against it (ids 0
to ``queries - 1`` asked once each) and the answers on disk are cut back to the transitions and pairs the log
answers. A round that did not reach ``feedback.json`` (the process killed mid-round, or stopped by its teacher) is
asked again from ``pending/`` before the agent trains: its queries keep their ids and count once; answers it got
before are dropped from the log and asked again (they were never trained on; a stochastic teacher may answer
otherwise). The newest version pays the agent from the checkpoint on (the checkpoint records the version that paid
it, kept in feedback.json's ``resumes``), an off-policy replay buffer is relabelled with it, and the next round is
at the first grid point after both the checkpoint and the last round.

A teacher that raises, answers with a non-finite label, or (``file:``) has no answers for some asked transitions
stops the run with a :class:`~rlrm.rl.feedback_rounds.TeacherFailed` naming the teacher: the round waits in
``pending/``, the agent is checkpointed (an on-policy agent without the rollout it did not learn from), and
``--resume`` asks again. A ``file:`` teacher answers a round whole or not at all: the asked transitions it lacks are
listed in ``pending/unanswered.csv`` (``episode,step,label`` rows with the label empty, then the transitions'
numbers), to be labeled and added to its file; the file may keep the rows of earlier rounds, and a row for a
transition never asked is an error.

Off-policy agents with ``reward_alpha < 1``: the replay buffer keeps each transition's true reward beside the paid
one (:func:`~rlrm.rl.relabel.keep_true_rewards`; saved in checkpoints too), and relabelling pays
``alpha * learned + (1 - alpha) * true`` as the wrapper does.

Label scale (scalar labels): the head learns standardized labels. Before each retraining the scale is re-estimated
from every label so far and the head re-expressed in the new units
(:func:`~rlrm.rl.feedback_rounds.refit_label_scale`), so the swap alone
does not change the reward: the agent is paid in the teacher's units throughout, while labels far outside the first
data's range (a goal bonus never seen by a random policy, or any signal after constant labels) stay learnable.
Inputs: before each retraining the input standardization is widened to every answered transition
(:func:`~rlrm.rl.feedback_rounds.widen_inputs`; the reward unchanged inside the old bounds), and retrainings train
the existing weights at the full learning rate.
Preferences fix a reward only up to shift and scale: it is standardized (mean 0, std 1 on the answered segments'
transitions) after each retraining, by :func:`rlrm.train.bradley_terry.standardize`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from rlrm import model as rm
from rlrm import rewards
from rlrm import spaces as sp
from rlrm.data import labels
from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import LABELS
from rlrm.data.rollout import collect
from rlrm.data.teachers import Teacher
from rlrm.errors import ConfigError, DatasetError, LabelError, ModelFileError
from rlrm.model.network import RewardModel
from rlrm.reward_fn import RewardFn, std_method
from rlrm.rl.feedback_files import (
    FeedbackFiles,
    Query,
    answered_keys,
    answered_pairs,
    clear_pending,
    keep_rows,
    last_episode,
    read_log,
    read_state,
    rewrite_log,
    segment_keys,
    settled,
)
from rlrm.rl.feedback_rounds import FeedbackState, TeacherFailed, choose, complete, has_segment, pose, save_answers
from rlrm.rl.folder import FeedbackSpec, RunFolder, RunSpec
from rlrm.rl.hyperparams import OFF_POLICY
from rlrm.rl.relabel import relabel_buffer
from rlrm.tasks import Task
from rlrm.wrappers import VecLearnedReward

#: the loop's random streams: choosing and (stochastic teachers) answering in rounds, and pretraining
ROUND_SEED, PRETRAIN_SEED = 7919, 1000


def check_feedback(fb: FeedbackSpec, task: Task) -> None:
    """A clear error now, before any training, if the loop's teacher (and labeler) cannot be used for ``task``."""
    if fb.kind == "labels":
        check_teacher(fb.teacher or task.labeler)
        return
    Teacher.parse(fb.teacher or "oracle")
    if task.labeler.startswith("file:"):
        raise LabelError(f"task {task.name!r}: a preference teacher judges segments by the task's labeler, and "
                         f"{task.labeler!r} labels only the transitions its file names; expected env, rlrm: or python:")
    check_teacher(task.labeler)


def check_teacher(spec: str) -> None:
    """A clear :class:`LabelError` now, before any training, if a scalar teacher spec cannot be used."""
    if spec == "env":
        return
    if spec.startswith(rewards.PREFIX):
        rewards.reward_function(spec)
    elif spec.startswith("python:"):
        labels.load_callable(spec[len("python:"):])
    elif spec.startswith("file:"):
        if not Path(spec[len("file:"):]).is_file():
            raise LabelError(f"teacher {spec!r}: no such file")
    else:
        raise LabelError(f"teacher {spec!r}: expected 'env', 'rlrm:NAME(key=value, ...)', 'python:module:function' "
                         "or 'file:PATH'")


def needs_true_rewards(spec: RunSpec) -> bool:
    """Whether the run's replay buffer must keep the env's reward beside the paid one: an off-policy agent with a
    feedback loop and ``reward_alpha < 1``, whose relabelled reward is ``alpha * learned + (1 - alpha) * true``
    (:class:`~rlrm.rl.relabel.TrueRewardReplayBuffer`)."""
    return spec.feedback is not None and spec.agent.algo in OFF_POLICY and spec.shaping.alpha < 1.0


# --------------------------------------------------------------------------- starting and resuming
def open_feedback(spec: RunSpec, folder: RunFolder, checkpoint: dict[str, Any] | None = None,
                  progress: bool = False) -> FeedbackState:
    """The loop's state before the agent trains: a new start (:func:`start_feedback`), or where the run's feedback
    folder stands (see the module docstring: answers, model version, query count; a round cut off is asked again
    first).

    :param checkpoint: the checkpoint the agent resumes from (``RunFolder.checkpoint_state``: ``num_timesteps``,
        ``reward_version``), ``None`` for an agent trained from scratch.
    :raise TeacherFailed: the round cut off still finds no answers (``--resume`` asks again).
    """
    fb = _feedback_of(spec)
    files = FeedbackFiles(folder.feedback_dir)
    if not files.state.exists():
        return start_feedback(spec, folder, progress)
    try:
        state = _load(spec, fb, files)
        pending = Query.load(files)
    except (ConfigError, DatasetError, ModelFileError) as err:
        raise ConfigError(f"{err}; the feedback loop cannot be resumed: delete the run folder {folder.path} or start "
                          "a new run without resuming") from None
    if pending is not None and pending.first < state.asked:  # its round reached feedback.json
        clear_pending(files)
        pending = None
    if pending is not None:
        if pending.first != state.asked:
            raise ConfigError(f"{files.pending}: a round from query {pending.first} on, but feedback.json counts "
                              f"{state.asked} queries; the feedback loop cannot be resumed: delete the run folder "
                              f"{folder.path} or start a new run without resuming")
        pose(state, pending, saved=True)
        rng = np.random.default_rng([spec.seed + ROUND_SEED, pending.first])
        try:
            complete(state, spec, pending, rng, lambda version: {})
        except TeacherFailed as err:
            raise TeacherFailed(f"{err}; continue with --resume once it answers") from None
    steps = int((checkpoint or {}).get("num_timesteps", 0))
    paid = (checkpoint or {}).get("reward_version")
    if isinstance(paid, int) and paid > state.version:
        raise ConfigError(f"{folder.checkpoint_dir}: the agent was paid by reward model version {paid}, but "
                          f"{files.state} reaches only version {state.version}; the run cannot be resumed")
    state.resumed = {"timesteps": steps, "checkpoint_version": paid, "version": state.version,
                     "queries": state.asked, "asked_again": None if pending is None else pending.round}
    return state


def start_feedback(spec: RunSpec, folder: RunFolder, progress: bool = False) -> FeedbackState:
    """The loop's starting point (version 0): the run's reward model, or one trained on ``pretrain_steps``
    random-policy transitions labeled by the teacher (those labels count against the budget). A pretraining round
    cut off (``pending/``) is asked again rather than collected anew.

    :raise TeacherFailed: the teacher gives no answers (``--resume`` asks again).
    """
    fb = _feedback_of(spec)
    files = FeedbackFiles(folder.feedback_dir)
    files.models.mkdir(parents=True, exist_ok=True)
    model = rm.load(spec.reward_model) if spec.reward_model else None
    if model is not None and not isinstance(model, RewardModel):
        raise ConfigError(f"{spec.reward_model}: an ensemble reward model cannot be retrained online yet; give a "
                          "single model")
    state = FeedbackState(fb, _teacher(spec), files, model if model is not None else fresh_model(spec.seed),
                          labeler=spec.task.labeler if fb.kind == "preferences" else None)
    rewrite_log(files.queries, [])  # without feedback.json nothing logged counts (a pending round is asked again)
    n = fb.pretrain_for(model is not None)
    if not n and model is None:
        raise ConfigError(f"pretrain_steps: 0 without a reward model for {spec.task.name!r}; give --reward-model or "
                          "label some random-policy transitions first")
    if not n:
        rm.save(state.model, files.model(0))
        state.rounds.append({"round": 0, "timesteps": 0, "new": 0, "queries": 0, "version": 0})
        state.write()
        return state
    rng = np.random.default_rng(spec.seed + PRETRAIN_SEED)
    query = Query.load(files)
    saved = query is not None and query.first == 0
    if query is None or not saved:  # (a pretraining round cut off is read back)
        raw = collect(spec.task, n, n_envs=min(8, n), seed=spec.seed + PRETRAIN_SEED, labeler="env",
                      progress=progress)
        raw = raw.with_labels(np.zeros(len(raw), np.float32), "unlabeled")
        want = len(raw) if fb.kind == "labels" else max(1, fb.budget // 4)
        query = choose(state, raw, want, rng, round_=0, timesteps=0)
    pose(state, query, saved=saved)
    try:
        complete(state, spec, query, rng, lambda version: {})
    except TeacherFailed as err:
        raise TeacherFailed(f"{err}; continue with --resume once it answers") from None
    return state


def fresh_model(seed: int) -> RewardModel:
    """A new reward model whose initial weights depend on ``seed`` alone.

    torch seeds its default generator differently in every process, and the loop's first model is built before any
    training seeds it: two runs of one command started from different weights, so the loop was not reproducible
    (Pendulum, 25 queries, seed 1: true return −246.8 in one run, −375.3 in the next). The caller's random stream is
    left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RewardModel()


def _feedback_of(spec: RunSpec) -> FeedbackSpec:
    if spec.feedback is None:
        raise ConfigError(f"{spec.name}: the run has no feedback loop")
    return spec.feedback


def _teacher(spec: RunSpec) -> str:
    fb = _feedback_of(spec)
    return fb.teacher or (spec.task.labeler if fb.kind == "labels" else "oracle")


def _load(spec: RunSpec, fb: FeedbackSpec, files: FeedbackFiles) -> FeedbackState:
    """The state ``feedback.json`` records, its answers cut back to what the query log answers below its count."""
    doc = read_state(files.state)
    try:
        asked, version, history = int(doc["queries"]), int(doc["version"]), list(doc["history"])
        stored_spec = doc["spec"]
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{files.state}: not a feedback record ({type(err).__name__}: {err})") from None
    if stored_spec != fb.to_dict():
        raise ConfigError(f"{files.state}: field 'spec' is {stored_spec}, the run's is {fb.to_dict()}")
    model = rm.load(files.model(version))
    if not isinstance(model, RewardModel):
        raise ConfigError(f"{files.model(version)}: expected a single reward model, found an ensemble")
    records = read_log(files.queries)
    kept = settled(files.queries, records, asked)
    state = FeedbackState(fb, _teacher(spec), files, model, labeler=spec.task.labeler if fb.kind == "preferences"
                          else None, version=version, asked=asked, rounds=history,
                          resumes=list(doc.get("resumes") or []), free_episode=last_episode(kept) + 1)
    where = files.labels if fb.kind == "labels" else files.transitions
    keys = answered_keys(kept) if fb.kind == "labels" else segment_keys(kept)
    if keys:
        stored = TransitionDataset.load(where)
        state.data = keep_rows(stored, keys, where)
        state.pairs = answered_pairs(kept, LABELS) if fb.kind == "preferences" else None
        if len(state.data) != len(stored):  # rows of a round cut off after its answers were saved
            save_answers(state)
    if len(kept) != len(records):
        rewrite_log(files.queries, kept)
    return state


class RecordingReward:
    """A :class:`~rlrm.reward_fn.RewardFn` that passes every call to ``inner`` and keeps the batch it was last asked
    about. On the training VecEnv that is each vector step's transitions as the reward model sees them: raw
    observations (below any VecNormalize) and the true terminal ``next_obs``."""

    def __init__(self, inner: RewardFn) -> None:
        self.inner = inner
        self.observation_space = inner.observation_space
        self.action_space = inner.action_space
        self.last: tuple[Any, Any, Any, np.ndarray] | None = None
        if std_method(inner) is not None:  # an ensemble's std stays available to the wrapper
            self.with_std = self._with_std

    def __call__(self, obs: Any, action: Any, next_obs: Any, done: np.ndarray) -> np.ndarray:
        self.last = (obs, action, next_obs, done)
        return self.inner(obs, action, next_obs, done)

    def _with_std(self, obs: Any, action: Any, next_obs: Any, done: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.last = (obs, action, next_obs, done)
        return std_method(self.inner)(obs, action, next_obs, done)


class TransitionRing:
    """The training transitions of the last ``capacity`` vector steps, with episode ids and steps of their own."""

    def __init__(self, task: Task, obs_space: Any, action_space: Any, n_envs: int, capacity: int,
                 first_episode: int) -> None:
        self.task, self.obs_space, self.action_space = task, obs_space, action_space
        self.steps: deque[dict[str, np.ndarray]] = deque(maxlen=capacity)
        self.episode = np.arange(first_episode, first_episode + n_envs, dtype=np.int64)
        self.step = np.zeros(n_envs, np.int32)
        self.next_episode = first_episode + n_envs

    def add(self, batch: tuple[Any, Any, Any, np.ndarray], dones: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """Store one vector step (``batch`` from :class:`RecordingReward`) and advance the episode counters."""
        obs, action, next_obs, terminated = batch
        row = {**{k: np.array(v) for k, v in sp.split(self.obs_space, obs, "obs").items()},
               **{k: np.array(v) for k, v in sp.split(self.action_space, action, "action").items()},
               **{k: np.array(v) for k, v in sp.split(self.obs_space, next_obs, "next_obs").items()},
               "terminated": np.array(terminated, bool),
               "truncated": np.array([bool(d) and bool(i.get("TimeLimit.truncated", False))
                                      for d, i in zip(dones, infos)]),
               "env_reward": np.array([float(i.get("true_reward", 0.0)) for i in infos], np.float32),
               "episode": self.episode.copy(), "step": self.step.copy()}
        self.steps.append(row)
        self.step += 1
        for i in np.flatnonzero(dones):
            self.episode[i] = self.next_episode
            self.next_episode += 1
            self.step[i] = 0

    def dataset(self) -> TransitionDataset | None:
        """The stored transitions (labels: the env reward, never shown to a teacher), or ``None`` if empty."""
        if not self.steps:
            return None
        a = {k: np.concatenate([r[k] for r in self.steps]) for k in self.steps[0]}
        return TransitionDataset.from_arrays(
            self.task, self.obs_space, self.action_space, obs=sp.join(self.obs_space, a, "obs"),
            action=sp.join(self.action_space, a, "action"), next_obs=sp.join(self.obs_space, a, "next_obs"),
            terminated=a["terminated"], truncated=a["truncated"], episode=a["episode"], step=a["step"],
            env_reward=a["env_reward"], label_source="unlabeled", info={"policy": "agent"})


def learned_reward_wrapper(venv: VecEnv) -> VecLearnedReward:
    """The :class:`VecLearnedReward` in a VecEnv stack."""
    while not isinstance(venv, VecLearnedReward):
        if not isinstance(venv, VecEnvWrapper):
            raise ConfigError("online feedback: the training env has no learned-reward wrapper")
        venv = venv.venv
    return venv


class FeedbackLoop(BaseCallback):
    """The rounds of the loop, as an SB3 callback (see the module docstring).

    :param recorder: the reward function the training env was built with (wrapping version ``state.version``).
    :param evaluations: the run's true-reward evaluations so far (the newest is reported with each round).
    :param on_swap: told each new reward function (e.g. to pay evaluation envs the same model).
    :param checkpoint: saves the agent (when a teacher fails, before the run stops).
    """

    def __init__(self, spec: RunSpec, state: FeedbackState, recorder: RecordingReward, *,
                 evaluations: Callable[[], list[dict[str, Any]]],
                 on_swap: Callable[[RewardFn], None] = lambda fn: None,
                 checkpoint: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.spec, self.state, self.recorder = spec, state, recorder
        self.evaluations, self.on_swap, self.checkpoint = evaluations, on_swap, checkpoint
        self.rng = np.random.default_rng(spec.seed + ROUND_SEED)
        self._ring: TransitionRing | None = None
        self._next = 0
        self._last_end = 0
        self._rollout = 0

    def _on_training_start(self) -> None:
        venv, steps = self.training_env, self.num_timesteps
        every = self.state.spec.feedback_every
        self._ring = TransitionRing(self.spec.task, venv.observation_space, venv.action_space, venv.num_envs,
                                    max(1, math.ceil(every / venv.num_envs)), self.state.next_episode)
        # a resumed run's checkpoint may predate the newest round (a process killed after it): no round twice
        self._next = (max(steps, self.state.last_timesteps) // every + 1) * every
        self._last_end = steps
        learned_reward_wrapper(venv).set_reward(self.recorder, self.state.version)
        if steps:
            self.rng = np.random.default_rng([self.spec.seed + ROUND_SEED, steps])
        if self.state.resumed is not None:
            self.state.resumes.append({**self.state.resumed, "relabel": self._relabel()})
            self.state.resumed = None
            self.state.write()

    def _on_step(self) -> bool:
        batch, self.recorder.last = self.recorder.last, None
        if batch is not None and self._ring is not None and self.state.asked < self.state.spec.budget:
            self._ring.add(batch, np.asarray(self.locals["dones"]), self.locals["infos"])
        return True

    def _on_rollout_end(self) -> None:
        now = self.num_timesteps
        self._rollout, self._last_end = now - self._last_end, now
        if now < self._next or self.state.asked >= self.state.spec.budget:
            return
        self._next = (now // self.state.spec.feedback_every + 1) * self.state.spec.feedback_every
        if now < self.spec.agent.n_timesteps:  # a round after the last rollout would train nothing on it
            self._round(now)

    def _rounds_left(self, now: int) -> int:
        """This round and the later ones: rollout ends before the last that pass a grid point."""
        every, target, size = self.state.spec.feedback_every, self.spec.agent.n_timesteps, max(self._rollout, 1)
        count, end = 1, now + size
        while end < target:
            count += (end // every) > ((end - size) // every)
            end += size
        return count

    def _round(self, now: int) -> None:
        state, ring = self.state, self._ring
        assert ring is not None
        candidates = ring.dataset()
        ring.steps.clear()
        left = state.spec.budget - state.asked
        want = min(math.ceil(left / self._rounds_left(now)), left)
        if state.spec.kind == "labels":
            want = min(want, len(candidates) if candidates else 0)
        elif candidates is not None and not has_segment(candidates, state.spec.segment_length):
            candidates = None
        if candidates is None or want <= 0:
            return
        query = choose(state, candidates, want, self.rng, round_=len(state.rounds), timesteps=now)
        pose(state, query)
        try:
            row = complete(state, self.spec, query, self.rng, self._swap)
        except TeacherFailed as err:
            raise self._stopped(err) from None
        self._log(row)

    def _stopped(self, err: TeacherFailed) -> TeacherFailed:
        """Checkpoint the agent as it was before this rollout's end (an on-policy agent did not learn from the
        rollout: it collects it again when resumed); the error to stop the run with."""
        if isinstance(self.model, OnPolicyAlgorithm):
            self.model.num_timesteps -= self._rollout
        self.checkpoint()
        return TeacherFailed(f"{err}; the run is checkpointed at {self.model.num_timesteps:,} steps: continue with "
                             "--resume once the teacher answers")

    def _swap(self, version: int) -> dict[str, Any]:
        """Pay the agent with the model just saved as ``version`` from the next step on; relabel the replay buffer;
        what the round's row reports of it."""
        fn = self.state.model.reward_fn(self.spec.task.name)
        self.recorder = RecordingReward(fn)
        wrapper = learned_reward_wrapper(self.training_env)
        wrapper.set_reward(self.recorder, version)
        self.on_swap(fn)
        latest = (self.evaluations() or [None])[-1]
        return {"reward_version": wrapper.reward_version, "relabel": self._relabel(),
                "eval": ({k: latest.get(k) for k in ("timesteps", "true_mean", "learned_mean")}
                         if latest is not None else None)}

    def _relabel(self) -> dict[str, Any] | None:
        """Recompute an off-policy agent's whole replay buffer with the current model (SB3 stores Box actions
        rescaled to [-1, 1]; ``reward_alpha < 1`` mixes in the true rewards the buffer keeps); the rows relabelled
        and the seconds it took."""
        if not isinstance(self.model, OffPolicyAlgorithm) or self.model.replay_buffer is None:
            return None
        report = relabel_buffer(self.model.replay_buffer, self.recorder.inner, shaping=self.spec.shaping,
                                version=self.state.version, steps=self.num_timesteps, scaled_actions=True)
        return {"rows": report.rows, "seconds": round(report.seconds, 4), "version": report.version}

    def _log(self, row: dict[str, Any]) -> None:
        self.logger.record("feedback/queries", row["queries"])
        self.logger.record("feedback/version", row["version"])
        self.logger.record("feedback/round_seconds", row["seconds"])
        for part in ("heldout", "fit"):
            for k, v in (row.get(part) or {}).items():
                if v is not None and math.isfinite(v):
                    self.logger.record(f"feedback/{part}_{k}", v)
        self.logger.dump(self.num_timesteps)
