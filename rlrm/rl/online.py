"""The online feedback loop (issue #11): while an agent trains, a teacher labels transitions (or compares segment
pairs) from the agent's own recent rollouts, the reward model is retrained on every answer so far (warm start) and
swapped into the running :class:`~rlrm.wrappers.VecLearnedReward` without rebuilding the envs.

1. :func:`start_feedback`: the starting model (the run's ``reward_model``, or one trained on ``pretrain_steps``
   random-policy transitions labeled by the teacher), saved as version 0.
2. :class:`FeedbackLoop` (a callback) records every training transition through a :class:`RecordingReward` (the
   raw observations the reward model sees, terminal ``next_obs`` included) into a ring of the steps since the last
   round. At the first rollout end on or after each ``feedback_every`` grid point it runs a round: choose
   transitions (or segment pairs) uniformly, ask the teacher about those only (a preference teacher judges by the
   task's labeler on the asked segments' transitions alone), append the answers, retrain, save the next version,
   swap it in (between rollouts: a PPO rollout is never paid by two models), relabel an off-policy replay buffer.
3. At the budget it stops asking; the agent trains on the last model.

Files, in the run folder's ``feedback/``::

    labels/            labels: TransitionDataset of every answered transition (labels = the teacher's answers)
    transitions/ preferences/   preferences: the asked segments' transitions (labels: the labeler's rewards the
                       teacher judged by; not trained on) and the answered pairs pointing into them
    queries.jsonl      one line per query ({"kind": "query", ...}) and per answer ({"kind": "answer", "id": ...};
                       a preference answer "skip" is a query the teacher declined)
    models/reward_model_v<k>.safetensors   the model after round k (v0: the starting model)
    feedback.json      budget, queries asked, current version and model, one row per round (written last)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from rlrm import atomic, rewards
from rlrm import model as rm
from rlrm import spaces as sp
from rlrm.data import labels
from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import LABELS, PreferenceDataset, SegmentPairs
from rlrm.data.rollout import collect
from rlrm.data.selection import select_pairs
from rlrm.data.teachers import SKIPPED, Teacher, sample_pairs
from rlrm.errors import ConfigError, LabelError
from rlrm.model.ensemble import RewardEnsemble, predict_members
from rlrm.model.network import RewardModel
from rlrm.reward_fn import RewardFn, std_method
from rlrm.rl.folder import FeedbackSpec, RunFolder, RunSpec
from rlrm.rl.hyperparams import OFF_POLICY
from rlrm.rl.relabel import relabel_buffer
from rlrm.tasks import Task
from rlrm.train.ensemble import train_ensemble
from rlrm.train.heldout import predict_dataset, task_metrics
from rlrm.train.loop import TrainConfig, train_reward_model
from rlrm.wrappers import VecLearnedReward

#: metrics of the per-round rows (and W&B keys ``feedback/<set>_<metric>``)
METRICS = ("r2", "mse", "spearman", "epic")
#: ``--query disagreement``: the scoring ensemble's members, and candidate pairs scored per pair asked
SCORER_MEMBERS = 3
PAIR_CANDIDATES = 5


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


class FeedbackFiles:
    """The paths of the loop's files inside a run folder (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.labels = root / "labels"
        self.transitions = root / "transitions"
        self.preferences = root / "preferences"
        self.queries = root / "queries.jsonl"
        self.state = root / "feedback.json"
        self.models = root / "models"

    def model(self, version: int) -> Path:
        return self.models / f"reward_model_v{version}.safetensors"


@dataclass
class FeedbackState:
    """Where a loop stands: its current model and version, every answer so far, the queries asked."""

    spec: FeedbackSpec
    teacher: str
    files: FeedbackFiles
    model: RewardModel
    data: TransitionDataset | None = None
    labeler: str | None = None  # preferences: what the teacher judges segments by
    pairs: dict[str, np.ndarray] | None = None  # preferences: answered pairs by (episode, first step)
    version: int = 0
    asked: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def next_episode(self) -> int:
        """The first episode id free for the agent's transitions (after the pretraining episodes)."""
        return 0 if self.data is None else int(self.data.episode.max()) + 1

    def summary(self) -> dict[str, Any]:
        """The numbers of the run's result row."""
        return {"kind": self.spec.kind, "teacher": self.teacher, "budget": self.spec.budget, "queries": self.asked,
                "rounds": len(self.rounds) - 1, "version": self.version,
                "seconds": round(sum(r.get("seconds", 0.0) for r in self.rounds), 3)}

    def write(self) -> None:
        """``feedback.json`` (written after the dataset and the model it points to)."""
        model = self.files.model(self.version).relative_to(self.files.root)
        atomic.write_json(self.files.state, {**self.summary(), "model": str(model),
                                             "spec": self.spec.to_dict(), "history": self.rounds})


def start_feedback(spec: RunSpec, folder: RunFolder, progress: bool = False) -> FeedbackState:
    """The loop's starting point (version 0): the run's reward model, or one trained on ``pretrain_steps``
    random-policy transitions labeled by the teacher (those labels count against the budget)."""
    fb = spec.feedback
    if fb is None:
        raise ConfigError(f"{spec.name}: the run has no feedback loop")
    if spec.agent.algo in OFF_POLICY and spec.shaping.alpha < 1.0:
        raise ConfigError(f"{spec.name}: online feedback relabels the replay buffer, which does not keep the true "
                          f"reward that reward_alpha {spec.shaping.alpha} mixes in; expected reward_alpha 1")
    teacher = fb.teacher or (spec.task.labeler if fb.kind == "labels" else "oracle")
    files = FeedbackFiles(folder.feedback_dir)
    files.models.mkdir(parents=True, exist_ok=True)
    model = rm.load(spec.reward_model) if spec.reward_model else None
    if model is not None and not isinstance(model, RewardModel):
        raise ConfigError(f"{spec.reward_model}: an ensemble reward model cannot be retrained online yet; give a "
                          "single model")
    state = FeedbackState(fb, teacher, files, model if model is not None else RewardModel(),
                          labeler=spec.task.labeler if fb.kind == "preferences" else None)
    n = fb.pretrain_for(model is not None)
    row: dict[str, Any] = {"round": 0, "timesteps": 0, "new": 0, "queries": 0}
    if n:
        raw = collect(spec.task, n, n_envs=min(8, n), seed=spec.seed + 1000, labeler="env", progress=progress)
        raw = raw.with_labels(np.zeros(len(raw), np.float32), "unlabeled")
        want = len(raw) if fb.kind == "labels" else max(1, fb.budget // 4)
        newest = _gather(state, raw, want, np.random.default_rng(spec.seed + 1000), round_=0, timesteps=0)
        row.update(new=newest.answered, **_retrain(state, newest, spec))
    elif model is None:
        raise ConfigError(f"pretrain_steps: 0 without a reward model for {spec.task.name!r}; give --reward-model or "
                          "label some random-policy transitions first")
    rm.save(state.model, files.model(0))
    state.rounds.append({**row, "queries": state.asked, "version": 0})
    state.write()
    return state


def _ask(state: FeedbackState, query: TransitionDataset, *, round_: int, timesteps: int) -> TransitionDataset:
    """Log the queries, ask the teacher about exactly these transitions, log its answers; return the answered rows
    (a ``file:`` teacher may answer only some; every query counts against the budget)."""
    first = state.asked
    lines = [{"kind": "query", "id": first + i, "round": round_, "timesteps": timesteps, "episode": int(e),
              "step": int(s)} for i, (e, s) in enumerate(zip(query.episode, query.step))]
    _append_lines(state.files.queries, lines)
    answered = labels.apply(query, state.teacher)
    ids = {(int(e), int(s)): first + i for i, (e, s) in enumerate(zip(query.episode, query.step))}
    _append_lines(state.files.queries, [
        {"kind": "answer", "id": ids[int(e), int(s)], "label": float(x)}
        for e, s, x in zip(answered.episode, answered.step, answered.label)])
    state.asked += len(query)
    return answered


def _append_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


@dataclass
class Newest:
    """What one round added: the transitions asked about (labeled by the teacher, or for preferences by the labeler
    the teacher judged with) and, for preferences, the answered pairs (by (episode, first step))."""

    transitions: TransitionDataset
    answered: int
    pairs: dict[str, np.ndarray] | None = None
    selection: dict[str, Any] = field(default_factory=dict)


def _gather(state: FeedbackState, candidates: TransitionDataset, n: int, rng: np.random.Generator, *, round_: int,
           timesteps: int) -> Newest:
    """Ask the teacher about ``n`` of ``candidates`` (transitions, or segment pairs for preferences), append what it
    answered to the loop's data and save it (datasets first; ``feedback.json`` is written by the caller)."""
    scorer = _scorer(state, rng) if state.spec.query == "disagreement" and state.data is not None else None
    if state.spec.kind == "labels":
        pick, selection = _choose_transitions(state, candidates, n, rng, scorer)
        answered = _ask(state, candidates.subset(pick), round_=round_, timesteps=timesteps)
        state.data = answered if state.data is None else _concat(state.data, answered)
        state.data.save(state.files.labels)
        return Newest(answered, len(answered), selection=selection)
    chosen, selection = _choose_pairs(state, candidates, n, rng, scorer)
    seen, pairs = _ask_pairs(state, candidates, chosen, rng, round_=round_, timesteps=timesteps)
    state.data = seen if state.data is None else _concat(state.data, seen)
    state.pairs = pairs if state.pairs is None else {k: np.concatenate([state.pairs[k], v]) for k, v in pairs.items()}
    state.data.save(state.files.transitions)
    _preferences(state, state.pairs).save(state.files.preferences, state.files.transitions)
    return Newest(seen, len(pairs["label"]), pairs, selection)


def _scorer(state: FeedbackState, rng: np.random.Generator) -> RewardEnsemble:
    """A small ensemble trained afresh on every answer so far: its disagreement chooses the next queries."""
    assert state.data is not None
    cfg = TrainConfig(epochs=state.spec.feedback_epochs, seed=int(rng.integers(2**31)))
    prefs = [(_preferences(state, state.pairs), state.data)] if state.pairs is not None else []
    result = train_ensemble([] if prefs else [state.data], SCORER_MEMBERS, cfg, progress=False, preferences=prefs)
    assert isinstance(result.model, RewardEnsemble)
    return result.model


def _choose_transitions(state: FeedbackState, cand: TransitionDataset, n: int, rng: np.random.Generator,
                        scorer: RewardEnsemble | None) -> tuple[np.ndarray, dict[str, Any]]:
    """``n`` candidate rows: uniformly, or the ``n`` the scorer's members disagree on most (std of their rewards)."""
    if scorer is None:
        return np.sort(rng.choice(len(cand), n, replace=False)), {"method": "uniform", "candidates": len(cand)}
    std = predict_members(scorer, cand.task.name, cand.obs, cand.action, cand.next_obs, cand.terminated).std(0)
    order = rng.permutation(len(cand))  # random tie-breaking
    pick = np.sort(order[np.argsort(-std[order], kind="stable")][:n])
    return pick, {"method": "disagreement", "candidates": len(cand), "candidate_std": float(std.mean()),
                  "chosen_std": float(std[pick].mean())}


def _choose_pairs(state: FeedbackState, cand: TransitionDataset, n: int, rng: np.random.Generator,
                  scorer: RewardEnsemble | None) -> tuple[SegmentPairs, dict[str, Any]]:
    """``n`` segment pairs of ``cand``: uniformly, or the ``n`` of ``PAIR_CANDIDATES * n`` random ones the scorer's
    members disagree on most (:func:`rlrm.data.selection.select_pairs`)."""
    length = state.spec.segment_length
    if scorer is None:
        return sample_pairs(cand, n, length, rng), {"method": "uniform"}
    pool = sample_pairs(cand, PAIR_CANDIDATES * n, length, rng)
    per_row = predict_members(scorer, cand.task.name, cand.obs, cand.action, cand.next_obs, cand.terminated)
    bound = PreferenceDataset.from_pairs(cand, pool, np.zeros(len(pool), np.int8), "candidates")
    returns = np.stack([np.stack(bound.segment_returns(r), axis=1) for r in per_row])
    pick = select_pairs(n, "disagreement", returns, rng)
    return pool.subset(np.sort(pick)), {"method": "disagreement", "candidates": len(pool)}


def _ask_pairs(state: FeedbackState, cand: TransitionDataset, pairs: SegmentPairs, rng: np.random.Generator, *,
               round_: int, timesteps: int) -> tuple[TransitionDataset, dict[str, np.ndarray]]:
    """Log the segment pairs of ``cand``, have the teacher judge them by the labeler's rewards of those segments'
    transitions only, log its answers; return the segments' transitions and the answered pairs."""
    assert state.labeler is not None
    length, n = state.spec.segment_length, len(pairs)
    left, right = PreferenceDataset.from_pairs(cand, pairs, np.zeros(n, np.int8), "query").segment_rows()
    rows = np.unique(np.concatenate([left.ravel(), right.ravel()]))
    seen = labels.apply(cand.subset(rows), state.labeler)
    rewards_ = np.zeros(len(cand))
    rewards_[rows] = seen.label
    ep, st, first = cand.episode, cand.step, state.asked

    def side(row: int) -> dict[str, int]:
        return {"episode": int(ep[row]), "step": int(st[row])}

    _append_lines(state.files.queries, [
        {"kind": "query", "id": first + i, "round": round_, "timesteps": timesteps, "left": side(a), "right": side(b),
         "length": length} for i, (a, b) in enumerate(zip(left[:, 0], right[:, 0]))])
    answers = Teacher.parse(state.teacher).answer(rewards_[left], rewards_[right], rng)
    _append_lines(state.files.queries, [{"kind": "answer", "id": first + i, "label": LABELS[a] if a != SKIPPED
                                         else "skip"} for i, a in enumerate(answers.tolist())])
    state.asked += n
    keep = answers != SKIPPED
    a, b = left[keep, 0], right[keep, 0]
    return seen, {"left_episode": ep[a], "left_step": st[a].astype(np.int64), "right_episode": ep[b],
                  "right_step": st[b].astype(np.int64), "label": answers[keep].astype(np.int8)}


def _preferences(state: FeedbackState, pairs: dict[str, np.ndarray]) -> PreferenceDataset:
    """``pairs`` (by episode and first step) as a preference set pointing into the loop's transitions."""
    ds = state.data
    assert ds is not None
    key = ds.episode * 2**32 + ds.step  # rows are sorted by (episode, step)
    episodes, first = np.unique(ds.episode, return_index=True)

    def start(episode: np.ndarray, step: np.ndarray) -> np.ndarray:
        return np.searchsorted(key, episode * 2**32 + step) - first[np.searchsorted(episodes, episode)]

    segments = SegmentPairs.from_arrays(pairs["left_episode"], start(pairs["left_episode"], pairs["left_step"]),
                                        pairs["right_episode"], start(pairs["right_episode"], pairs["right_step"]),
                                        state.spec.segment_length)
    return PreferenceDataset.from_pairs(ds, segments, pairs["label"], Teacher.parse(state.teacher).source,
                                        dataset_dir=state.files.transitions)


def _newest_metrics(state: FeedbackState, newest: Newest) -> dict[str, float]:
    """The current model on the newest feedback: fit to the labels (labels), or agreement with the answered pairs
    (preferences, ``equal`` ones left out); EPIC against the labeler where rlrm knows it."""
    found = task_metrics(state.model, newest.transitions)
    if newest.pairs is None:
        return {k: found[k] for k in METRICS}
    prefs = _preferences(state, newest.pairs)
    left, right = prefs.segment_returns(predict_dataset(state.model, state.data))
    decided = prefs.label != 2
    agree = np.where(prefs.label == 0, left > right, right > left)[decided]
    return {"accuracy": float(agree.mean()) if len(agree) else float("nan"), "spearman": found["spearman"],
            "epic": found["epic"]}


def _retrain(state: FeedbackState, newest: Newest, spec: RunSpec) -> dict[str, Any]:
    """Retrain on every answer so far (warm start); the metrics of the new model on the newest answers."""
    assert state.data is not None
    cfg = TrainConfig(epochs=state.spec.feedback_epochs, seed=spec.seed + len(state.rounds))
    start = time.perf_counter()
    if state.pairs is None:
        result = train_reward_model([state.data], cfg, model=state.model, progress=False)
    else:
        result = train_reward_model([], cfg, model=state.model, progress=False,
                                    preferences=[(_preferences(state, state.pairs), state.data)])
    state.model = result.model
    return {"train_seconds": round(time.perf_counter() - start, 3), "fit": _newest_metrics(state, newest)}


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


def _concat(a: TransitionDataset, b: TransitionDataset) -> TransitionDataset:
    """The rows of both (disjoint episode/step ids), sorted; ``b``'s label source."""
    def leaves(space: Any, name: str) -> dict[str, np.ndarray]:
        x, y = sp.split(space, getattr(a, name), name), sp.split(space, getattr(b, name), name)
        return {k: np.concatenate([x[k], y[k]]) for k in x}

    obs, act, nxt = leaves(a.obs_space, "obs"), leaves(a.action_space, "action"), leaves(a.obs_space, "next_obs")
    cat = {k: np.concatenate([getattr(a, k), getattr(b, k)])
           for k in ("terminated", "truncated", "episode", "step", "env_reward", "label")}
    return TransitionDataset.from_arrays(
        a.task, a.obs_space, a.action_space, obs=sp.join(a.obs_space, obs, "obs"),
        action=sp.join(a.action_space, act, "action"), next_obs=sp.join(a.obs_space, nxt, "next_obs"),
        label_source=b.label_source, info=a.info, **cat)


def _has_segment(ds: TransitionDataset, length: int) -> bool:
    """Whether some episode of ``ds`` has ``length`` consecutive steps (a segment fits)."""
    if len(ds) < length:
        return False
    last = np.arange(length - 1, len(ds))
    return bool(np.any((ds.episode[last] == ds.episode[last - length + 1])
                       & (ds.step[last].astype(np.int64) - ds.step[last - length + 1] == length - 1)))


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
    """

    def __init__(self, spec: RunSpec, state: FeedbackState, recorder: RecordingReward, *,
                 evaluations: Callable[[], list[dict[str, Any]]],
                 on_swap: Callable[[RewardFn], None] = lambda fn: None) -> None:
        super().__init__()
        self.spec, self.state, self.recorder = spec, state, recorder
        self.evaluations, self.on_swap = evaluations, on_swap
        self.rng = np.random.default_rng(spec.seed + 7919)
        self._ring: TransitionRing | None = None
        self._next = 0
        self._last_end = 0
        self._rollout = 0

    def _on_training_start(self) -> None:
        venv = self.training_env
        every = self.state.spec.feedback_every
        self._ring = TransitionRing(self.spec.task, venv.observation_space, venv.action_space, venv.num_envs,
                                    max(1, math.ceil(every / venv.num_envs)), self.state.next_episode)
        self._next = (self.num_timesteps // every + 1) * every
        self._last_end = self.num_timesteps

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
        elif candidates is not None and not _has_segment(candidates, state.spec.segment_length):
            candidates = None
        if candidates is None or want <= 0:
            return
        start = time.perf_counter()
        newest = _gather(state, candidates, want, self.rng, round_=len(state.rounds), timesteps=now)
        if newest.answered == 0:
            return
        heldout = _newest_metrics(state, newest)  # the current model has never seen these
        row = {"round": len(state.rounds), "timesteps": now, "new": newest.answered, "queries": state.asked,
               "selection": newest.selection, "heldout": heldout, **_retrain(state, newest, self.spec)}
        self._swap(state.version + 1)
        row["version"] = state.version
        row["reward_version"] = learned_reward_wrapper(self.training_env).reward_version  # what pays the agent now
        row["relabel"] = self._relabel()
        latest = (self.evaluations() or [None])[-1]
        row["eval"] = ({k: latest.get(k) for k in ("timesteps", "true_mean", "learned_mean")}
                       if latest is not None else None)
        row["seconds"] = round(time.perf_counter() - start, 3)  # asking, retraining, swapping, relabelling
        state.rounds.append(row)
        state.write()
        self._log(row)

    def _swap(self, version: int) -> None:
        """Save the retrained model as ``version`` and pay the agent with it from the next step on."""
        rm.save(self.state.model, self.state.files.model(version))
        self.state.version = version
        fn = self.state.model.reward_fn(self.spec.task.name)
        self.recorder = RecordingReward(fn)
        learned_reward_wrapper(self.training_env).set_reward(self.recorder, version)
        self.on_swap(fn)

    def _relabel(self) -> dict[str, Any] | None:
        """Recompute an off-policy agent's whole replay buffer with the current model (SB3 stores Box actions
        rescaled to [-1, 1]); the rows relabelled and the seconds it took."""
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
            for k, v in row[part].items():
                if v is not None and math.isfinite(v):
                    self.logger.record(f"feedback/{part}_{k}", v)
        self.logger.dump(self.num_timesteps)
