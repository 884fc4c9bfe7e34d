"""One round of the online feedback loop (:mod:`rlrm.rl.online`), from the candidates to the next model version:
:func:`choose` the questions, :func:`pose` them (saved as pending, then logged), :func:`complete` the round (ask the
teacher about exactly those, add the answers, retrain, save the model, write ``feedback.json``). The state all of
it works on is a :class:`FeedbackState`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlrm import atomic
from rlrm import model as rm
from rlrm import spaces as sp
from rlrm.data import labels
from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import LABELS, PreferenceDataset, SegmentPairs
from rlrm.data.selection import select_pairs
from rlrm.data.teachers import SKIPPED, Teacher, sample_pairs
from rlrm.errors import LabelError
from rlrm.model.ensemble import RewardEnsemble, predict_members
from rlrm.model.network import RewardModel, head_key
from rlrm.rl.feedback_files import FeedbackFiles, Query, append_log, clear_pending, write_unanswered
from rlrm.rl.folder import FeedbackSpec, RunSpec
from rlrm.train.ensemble import train_ensemble
from rlrm.train.heldout import predict_dataset, task_metrics
from rlrm.train.loop import TrainConfig, train_reward_model

#: metrics of the per-round rows (and W&B keys ``feedback/<set>_<metric>``)
METRICS = ("r2", "mse", "spearman", "epic")
#: ``--query disagreement``: the scoring ensemble's members, and candidate pairs scored per pair asked
SCORER_MEMBERS = 3
PAIR_CANDIDATES = 5
#: labels: the most of a round's questions each stratum of ``--ask-first`` takes
STRATUM_SHARE = 0.25


class TeacherFailed(LabelError):
    """A teacher that raised, answered with non-finite labels, or (``file:``) has no answers for asked queries. The
    round waits in ``pending/``; resuming asks again."""


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
    resumes: list[dict[str, Any]] = field(default_factory=list)
    resumed: dict[str, Any] | None = None  # this process goes on from a checkpoint (or a restart): recorded at start
    free_episode: int = 0  # episode ids below this are taken (by the answers, or by queries logged)

    @property
    def next_episode(self) -> int:
        """The first episode id free for the agent's transitions (after the pretraining episodes)."""
        return max(self.free_episode, 0 if self.data is None else int(self.data.episode.max()) + 1)

    @property
    def last_timesteps(self) -> int:
        """The env steps of the newest round (0 before any)."""
        return int(self.rounds[-1]["timesteps"]) if self.rounds else 0

    def summary(self) -> dict[str, Any]:
        """The numbers of the run's result row."""
        return {"kind": self.spec.kind, "teacher": self.teacher, "budget": self.spec.budget, "queries": self.asked,
                "rounds": len(self.rounds) - 1, "version": self.version,
                "seconds": round(sum(r.get("seconds", 0.0) for r in self.rounds), 3)}

    def write(self) -> None:
        """``feedback.json`` (written after the datasets and the model it points to)."""
        model = self.files.model(self.version).relative_to(self.files.root)
        atomic.write_json(self.files.state, {
            **self.summary(), "model": str(model), "spec": self.spec.to_dict(),
            "rows": 0 if self.data is None else len(self.data),
            "pairs": None if self.pairs is None else len(self.pairs["label"]),
            "history": self.rounds, "resumes": self.resumes})


# --------------------------------------------------------------------------- one round
def choose(state: FeedbackState, candidates: TransitionDataset, n: int, rng: np.random.Generator, *, round_: int,
           timesteps: int) -> Query:
    """The round's questions: ``n`` of ``candidates`` (transitions, or segment pairs for preferences)."""
    scorer = _scorer(state, rng) if state.spec.query == "disagreement" and state.data is not None else None
    if state.spec.kind == "labels":
        pick, selection = _choose_transitions(state, candidates, n, rng, scorer)
        asked = candidates.subset(pick).with_labels(np.zeros(len(pick), np.float32), "unlabeled")
        return Query(round_, state.asked, timesteps, asked, selection=selection)
    chosen, selection = _choose_pairs(state, candidates, n, rng, scorer)
    length = state.spec.segment_length
    left, right = PreferenceDataset.from_pairs(candidates, chosen, np.zeros(len(chosen), np.int8),
                                               "query").segment_rows()
    rows = np.unique(np.concatenate([left.ravel(), right.ravel()]))
    ep, st = candidates.episode, candidates.step.astype(np.int64)
    pairs = {"left_episode": ep[left[:, 0]], "left_step": st[left[:, 0]], "right_episode": ep[right[:, 0]],
             "right_step": st[right[:, 0]]}
    return Query(round_, state.asked, timesteps, candidates.subset(rows), pairs, length, selection)


def pose(state: FeedbackState, query: Query, *, saved: bool = False) -> None:
    """Save the round's questions as pending (unless ``saved``: read from there), then log them: from here on they
    count against the budget."""
    if not saved:
        query.save(state.files)
    append_log(state.files.queries, query.log_lines())
    state.asked = query.first + query.n
    state.free_episode = max(state.free_episode, int(query.transitions.episode.max()) + 1)


def complete(state: FeedbackState, spec: RunSpec, query: Query, rng: np.random.Generator,
             on_new_model: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    """Ask the teacher the (posed) questions, add the answers, retrain, save the next version and tell
    ``on_new_model`` (which returns what it adds to the row); write ``feedback.json`` and the round's row.

    :raise TeacherFailed: no answers (the round stays pending).
    """
    start = time.perf_counter()
    newest = _answer(state, query, rng)
    if not newest.answered and query.round == 0:
        raise TeacherFailed(f"teacher {state.teacher!r} declined all {query.n} queries of round 0 (pretraining): "
                            f"nothing to train the starting model on; they wait in {state.files.pending}")
    row: dict[str, Any] = {"round": query.round, "timesteps": query.timesteps, "new": newest.answered,
                           "queries": state.asked, "selection": query.selection}
    if newest.answered:
        if query.round > 0:
            row["heldout"] = _newest_metrics(state, newest)  # the current model has never seen these
        row.update(_retrain(state, newest, spec))
        state.version = state.version + 1 if query.round > 0 else 0
        rm.save(state.model, state.files.model(state.version))
        row["version"] = state.version
        row.update(on_new_model(state.version))
    else:
        row["version"] = state.version
    row["seconds"] = round(time.perf_counter() - start, 3)  # asking, retraining, swapping, relabelling
    state.rounds.append(row)
    state.write()
    clear_pending(state.files)
    return row


@dataclass
class Newest:
    """What one round added: the transitions asked about (labeled by the teacher, or for preferences by the labeler
    the teacher judged with) and, for preferences, the answered pairs (by (episode, first step))."""

    transitions: TransitionDataset
    answered: int
    pairs: dict[str, np.ndarray] | None = None


def _answer(state: FeedbackState, query: Query, rng: np.random.Generator) -> Newest:
    """Ask the teacher about exactly the query's transitions (or pairs), log its answers, append them to the loop's
    answers and save those (datasets first; ``feedback.json`` is written by the caller)."""
    if query.pairs is None:
        answered = _ask_labels(state, query)
        append_log(state.files.queries, [{"kind": "answer", "id": query.first + i, "label": float(x)}
                                         for i, x in enumerate(answered.label)])
        state.data = answered if state.data is None else _concat(state.data, answered)
        save_answers(state)
        return Newest(answered, len(answered))
    seen, pairs = _ask_pairs(state, query, rng)
    state.data = seen if state.data is None else _concat(state.data, seen)
    state.pairs = pairs if state.pairs is None else {k: np.concatenate([state.pairs[k], v]) for k, v in pairs.items()}
    save_answers(state)
    return Newest(seen, len(pairs["label"]), pairs)


def save_answers(state: FeedbackState) -> None:
    """Write the loop's answers: ``labels/``, or ``transitions/`` and the ``preferences/`` pointing into them."""
    assert state.data is not None
    if state.pairs is None:
        state.data.save(state.files.labels)
        return
    state.data.save(state.files.transitions)
    _preferences(state, state.pairs).save(state.files.preferences, state.files.transitions)


def _failed(state: FeedbackState, query: Query, err: Exception) -> TeacherFailed:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if not isinstance(err, LabelError):
        reason = f"{type(err).__name__}: {reason}" if reason else type(err).__name__
    return TeacherFailed(f"teacher {state.teacher!r} failed on the {query.n} queries of round {query.round} "
                         f"({reason}); they wait in {state.files.pending}")


def _ask_labels(state: FeedbackState, query: Query) -> TransitionDataset:
    """The teacher's labels of the asked transitions, every one of them finite.

    A ``file:`` teacher's file may hold rows for transitions answered in earlier rounds too; one that lacks some of
    the asked ones has them listed in ``pending/unanswered.csv``.
    """
    asked, teacher = query.transitions, state.teacher
    try:
        if not teacher.startswith("file:"):
            answered = labels.apply(asked, teacher)
            if len(answered) != len(asked):
                raise LabelError(f"labeled {len(answered)} of {len(asked)} transitions")
            return answered
        found = _file_answers(state, asked)
    except Exception as err:  # a teacher is user code: whatever it raises stops the round, resumably
        raise _failed(state, query, err) from None
    missing = np.isnan(found)
    if missing.any():
        write_unanswered(state.files.unanswered, asked.subset(np.flatnonzero(missing)))
        raise TeacherFailed(f"teacher {teacher!r} has no answers for {int(missing.sum())} of the {query.n} "
                            f"transitions asked in round {query.round}: they are listed in {state.files.unanswered}; "
                            f"add their labels to {teacher[len('file:'):]}")
    return asked.with_labels(found, teacher)


def _file_answers(state: FeedbackState, asked: TransitionDataset) -> np.ndarray:
    """A ``file:`` teacher's labels of ``asked`` (NaN: none). Rows for transitions answered before are allowed; a
    row for any other transition is an error (:func:`rlrm.data.labels.read_label_file`)."""
    known = asked if state.data is None else _concat(state.data, asked)
    found = labels.read_label_file(Path(state.teacher[len("file:"):]), known)
    index = {k: i for i, k in enumerate(zip(known.episode.tolist(), known.step.tolist()))}
    return found[[index[k] for k in zip(asked.episode.tolist(), asked.step.tolist())]]


def _ask_pairs(state: FeedbackState, query: Query, rng: np.random.Generator,
               ) -> tuple[TransitionDataset, dict[str, np.ndarray]]:
    """Have the teacher judge the query's pairs by the labeler's rewards of their segments' transitions only, log
    its answers; return the segments' transitions (labeled by the labeler) and the answered pairs."""
    pairs = query.pairs
    assert state.labeler is not None and pairs is not None
    try:
        seen = labels.apply(query.transitions, state.labeler)
    except Exception as err:  # the labeler may be user code
        raise _failed(state, query, err) from None
    key = seen.episode * 2**32 + seen.step  # rows are sorted by (episode, step)
    offsets = np.arange(query.length)

    def rows(side: str) -> np.ndarray:
        first = np.searchsorted(key, pairs[f"{side}_episode"] * 2**32 + pairs[f"{side}_step"])
        return first[:, None] + offsets

    left, right = rows("left"), rows("right")
    answers = Teacher.parse(state.teacher).answer(seen.label[left], seen.label[right], rng)
    append_log(state.files.queries, [{"kind": "answer", "id": query.first + i, "label": LABELS[a] if a != SKIPPED
                                      else "skip"} for i, a in enumerate(answers.tolist())])
    keep = answers != SKIPPED
    return seen, {**{k: v[keep] for k, v in pairs.items()}, "label": answers[keep].astype(np.int8)}


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
    """``n`` candidate rows: first the strata ``state.spec.ask_first`` names (:data:`STRATUM_SHARE` of ``n`` each),
    then uniformly, or the ones the scorer's members disagree on most (std of their rewards).

    ``ends``: the transitions that end an episode by termination (a goal reached, a crash), the rarest and often the
    only rewarded ones; ``top``: those the current model pays most for, where an agent exploiting the model's
    errors goes (answers there correct an overpaid state before the agent settles in it)."""
    free = np.ones(len(cand), bool)
    taken: dict[str, int] = {}
    picks: list[np.ndarray] = []
    share = max(1, math.floor(n * STRATUM_SHARE)) if n > 1 else 0
    strata = state.spec.ask_first if n < len(cand) and state.spec.ask_first else ()
    for stratum in strata:
        room = min(share, n - sum(taken.values()))
        if room <= 0 or (stratum == "top" and cand.task.name not in state.model.tasks):
            continue
        if stratum == "ends":
            rows = np.flatnonzero(cand.terminated & free)
            rows = rng.permutation(rows)[:room]
        else:  # top: the highest current rewards, ties broken at random
            paid = predict_dataset(state.model, cand)
            order = rng.permutation(np.flatnonzero(free))
            rows = order[np.argsort(-paid[order], kind="stable")][:room]
        free[rows] = False
        taken[stratum] = len(rows)
        picks.append(rows)
    rest, left = np.flatnonzero(free), n - sum(taken.values())
    if scorer is None:
        picks.append(rng.choice(rest, left, replace=False))
        selection: dict[str, Any] = {"method": "uniform", "candidates": len(cand)}
    else:
        std = predict_members(scorer, cand.task.name, cand.obs, cand.action, cand.next_obs, cand.terminated).std(0)
        order = rng.permutation(rest)  # random tie-breaking
        picks.append(order[np.argsort(-std[order], kind="stable")][:left])
        selection = {"method": "disagreement", "candidates": len(cand), "candidate_std": float(std.mean()),
                     "chosen_std": float(std[np.concatenate(picks)].mean())}
    return np.sort(np.concatenate(picks)), {**selection, **taken}


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
    """Retrain on every answer so far (warm start; scalar labels: on a label scale re-estimated from all of them);
    the metrics of the new model on the newest answers, and its label scale."""
    assert state.data is not None
    # Full learning rate for the existing weights (finetune_lr_scale 1): the loop fits the same task further on the
    # agent's states; the 0.1x default protects other tasks when a new one is added, which is not the case here,
    # and at 0.1x a goal label the random data never held was still half-learned after 20 epochs.
    cfg = TrainConfig(epochs=state.spec.feedback_epochs, seed=spec.seed + len(state.rounds), finetune_lr_scale=1.0,
                      label_transform=state.spec.label_transform)
    start = time.perf_counter()
    task = state.data.task.name
    widened = widen_inputs(state)
    if state.pairs is None:
        if task in state.model.tasks:
            refit_label_scale(state.model, task, state.data.label)
        result = train_reward_model([state.data], cfg, model=state.model, progress=False,
                                    validation={task: validation_rows(state, cfg.val_frac, spec.seed)})
    else:
        result = train_reward_model([], cfg, model=state.model, progress=False,
                                    preferences=[(_preferences(state, state.pairs), state.data)])
    state.model = result.model
    info = state.model.head_info(task)
    return {"train_seconds": round(time.perf_counter() - start, 3), "fit": _newest_metrics(state, newest),
            "label_scale": {"mean": info.label_mean, "std": info.label_std}, "widened_inputs": widened}


def widen_inputs(state: FeedbackState) -> list[int]:
    """Widen the input standardization of the loop's task to every transition answered so far
    (:meth:`~rlrm.model.network.RewardModel.widen_normalization`): the agent goes where the random pretraining never
    went (a goal; a ``done`` flag never set), and inputs clipped to the first data's bounds could not tell those states
    apart. The reward is unchanged inside the old bounds. Returns the widened feature indices."""
    ds, model = state.data, state.model
    assert ds is not None
    task = ds.task.name
    if task not in model.tasks:
        return []
    feats = model.features(task, ds.obs, ds.action, ds.next_obs, ds.terminated)
    return model.widen_normalization(model.tasks[task].group, feats)


def validation_rows(state: FeedbackState, share: float, seed: int) -> np.ndarray:
    """Which of the loop's labeled transitions a retraining validates on: the validation episodes stored with the
    model (the pretraining's), and ``share`` of the others, drawn per transition by a hash of (seed, episode, step),
    so a row stays on its side in every round and after a resume. A round spans only an episode or two of the
    agent's, so splitting by episode would validate on the random pretraining states alone; terminal transitions
    (often the only rewarded ones) always train."""
    ds = state.data
    assert ds is not None
    stored = (state.model.meta.get("training", {}).get("validation_episodes") or {}).get(ds.task.name) or []
    salt = np.uint64(((seed + 1) * 0xBF58476D1CE4E5B9) % 2**64)  # (uint64 arrays wrap around; scalars warn)
    mixed = ds.episode.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ (ds.step.astype(np.uint64) + salt)
    mixed ^= mixed >> np.uint64(31)
    mixed *= np.uint64(0x94D049BB133111EB)
    mixed ^= mixed >> np.uint64(29)
    drawn = (mixed >> np.uint64(11)).astype(np.float64) / 2.0**53 < share
    return np.isin(ds.episode, np.asarray(stored, np.int64)) | (drawn & ~ds.terminated)


def refit_label_scale(model: RewardModel, task: str, labels_: np.ndarray) -> None:
    """Re-estimate ``task``'s label scale from ``labels_`` (their mean and std) and re-express its head in the new
    units, so that the model's rewards stay as they were (up to float rounding): only the standardized targets the
    next training fits change. A head whose labels were constant (``label_std`` 0) becomes the constant, in the new
    units, ready to learn."""
    info = model.head_info(task)
    fit = info.transform(labels_)  # in the units of the head's label transform
    mean, std = float(np.mean(fit)), float(np.std(fit))
    if std <= 1e-8:  # still constant: the head stays unused
        model.set_label_scale(task, mean, 0.0)
        return
    head = model.heads[head_key(task)]
    old_mean, old_std = info.label_mean, info.label_std
    with torch.no_grad():  # r = head(z) * old_std + old_mean = head'(z) * std + mean
        head.weight.mul_(old_std / std)
        head.bias.mul_(old_std / std).add_((old_mean - mean) / std)
    model.set_label_scale(task, mean, std)


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


def has_segment(ds: TransitionDataset, length: int) -> bool:
    """Whether some episode of ``ds`` has ``length`` consecutive steps (a segment fits)."""
    if len(ds) < length:
        return False
    last = np.arange(length - 1, len(ds))
    return bool(np.any((ds.episode[last] == ds.episode[last - length + 1])
                       & (ds.step[last].astype(np.int64) - ds.step[last - length + 1] == length - 1)))

