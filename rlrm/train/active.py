"""Active preference queries: ask a teacher in rounds, each round choosing the pairs a reward ensemble trained on
the answers so far is least sure of (PEBBLE / B-Pref style).

Schedule (:func:`active_preferences`), with cumulative answer counts ``n_1 < n_2 < ... < n_R = n_total``:

1. Round 1: ``n_1`` pairs drawn uniformly at random (there is no model yet), answered by the teacher.
2. Round ``r >= 2``: train a ``k``-member ensemble on every answer so far; sample ``candidates_factor * need``
   fresh candidate pairs (never a pair already asked, either way round); score them with
   :func:`rlrm.data.selection.select_pairs` on the members' predicted segment returns; ask the ``need`` best;
   append the answers (skipped ones are dropped and asked for again).
3. After the last round, train the ensemble once more on all ``n_total`` answers: that is the returned model.

Each ensemble trained (one per round) leaves a row in the history: how many answers it saw, its held-out
preference accuracy (pairs touching its held-out episodes), and whatever ``evaluate`` returns for it; rows of rounds
``>= 2`` also say how their new pairs were chosen. ``select="uniform"`` runs the same rounds with uniform choice,
so both rules are measured on models trained the same way.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import PreferenceDataset, SegmentPairs
from rlrm.data.selection import METHODS, select_pairs
from rlrm.data.teachers import SKIPPED, Teacher, sample_pairs
from rlrm.errors import ConfigError
from rlrm.model.ensemble import RewardEnsemble
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.train.ensemble import train_ensemble
from rlrm.train.loop import TrainConfig

#: an extra measurement of each round's model: ``(model, answers so far) -> metrics``
RoundEvaluator = Callable[[RewardModel | RewardEnsemble, PreferenceDataset], dict[str, Any]]


def default_schedule(n_total: int, rounds: int) -> list[int]:
    """``rounds`` cumulative answer counts ending at ``n_total``, in equal steps (the first one included)."""
    if rounds < 1 or n_total < rounds:
        raise ConfigError(f"active queries: expected rounds >= 1 and n_total >= rounds, got rounds={rounds}, "
                          f"n_total={n_total}")
    return [round(n_total * (i + 1) / rounds) for i in range(rounds)]


def active_preferences(ds: TransitionDataset, rewards: np.ndarray, teacher: str | Teacher, n_total: int, *,
                       select: str = "disagreement", rounds: int = 5, schedule: Sequence[int] | None = None,
                       k: int = 3, length: int = 25, candidates_factor: int = 10,
                       config: TrainConfig | None = None, model_config: ModelConfig | None = None, seed: int = 0,
                       evaluate: RoundEvaluator | None = None,
                       ) -> tuple[PreferenceDataset, RewardModel | RewardEnsemble, list[dict[str, Any]]]:
    """Ask ``teacher`` about ``n_total`` segment pairs of ``ds`` in rounds (see the module doc).

    :param rewards: the labeler's per-transition rewards the teacher answers from, shape ``(len(ds),)``.
    :param select: ``uniform``, ``disagreement`` (needs ``k >= 2``) or ``entropy``; rounds ``>= 2`` choose by it.
    :param rounds: equal rounds (ignored when ``schedule`` is given).
    :param schedule: cumulative answer counts per round, increasing, the last equal to ``n_total``.
    :param k: ensemble members trained each round.
    :param length: segment length of every pair.
    :param candidates_factor: candidates sampled per pair asked (``>= 1``; 1 makes every rule uniform).
    :param config: reward training settings (its ``seed`` is replaced by ``seed + 1000 * round``).
    :param seed: seeds the sampling, the choice, the teacher's noise and the training.
    :param evaluate: called on each round's model; its metrics join that round's history row.
    :return: ``(answers, the model trained on all of them, history)``.
    :raises ConfigError: a bad method, schedule, ``k`` or factor, or a teacher that skips too much.
    """
    teacher = Teacher.parse(teacher) if isinstance(teacher, str) else teacher
    steps = _check(n_total, select, rounds, schedule, k, candidates_factor)
    rewards = np.asarray(rewards, np.float64)
    if rewards.shape != (len(ds),):
        raise ConfigError(f"active queries: rewards of shape {rewards.shape}; expected ({len(ds)},), one per "
                          "transition")
    rng = np.random.default_rng(seed)
    cfg = config or TrainConfig()
    asked: set[tuple[int, int, int, int]] = set()
    answered: list[tuple[SegmentPairs, np.ndarray]] = []
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    _ask(ds, rewards, teacher, steps[0], length, 1, rng, asked, answered, None, "uniform")
    row: dict[str, Any] = {"round": 1, "selected_by": "uniform", "n_candidates": steps[0]}
    for r, target in enumerate([*steps[1:], None], start=2):
        prefs = _combine(ds, answered, teacher, length, seed)
        model, metrics = _train(prefs, ds, k, cfg, model_config, seed + 1000 * (r - 1))
        row.update(n_pairs=len(prefs), **metrics, **(evaluate(model, prefs) if evaluate else {}),
                   seconds=round(time.perf_counter() - start, 2))
        history.append(row)
        if target is None:
            return prefs, model, history
        need = target - len(prefs)
        by = "ensemble" if select != "uniform" else "uniform"
        n_cand = _ask(ds, rewards, teacher, need, length, candidates_factor, rng, asked, answered,
                      model if select != "uniform" else None, select)
        row = {"round": r, "selected_by": by, "n_candidates": n_cand}
    raise AssertionError("unreachable")  # pragma: no cover


def _check(n_total: int, select: str, rounds: int, schedule: Sequence[int] | None, k: int,
           factor: int) -> list[int]:
    if select not in METHODS:
        raise ConfigError(f"select: unknown selection method {select!r}; expected one of {', '.join(METHODS)}")
    if select == "disagreement" and k < 2:
        raise ConfigError(f"select: disagreement needs an ensemble of k >= 2 members, got k={k}")
    if factor < 1:
        raise ConfigError(f"candidates_factor: expected >= 1 candidates per pair asked, got {factor}")
    steps = default_schedule(n_total, rounds) if schedule is None else [int(s) for s in schedule]
    if not steps or steps[0] < 1 or any(b <= a for a, b in itertools.pairwise(steps)) or steps[-1] != n_total:
        raise ConfigError(f"schedule {list(steps)}: expected increasing answer counts >= 1 ending at n_total="
                          f"{n_total}")
    return steps


def _keys(pairs: SegmentPairs) -> list[tuple[int, int, int, int]]:
    """One key per query, the same whichever side is left."""
    a = list(zip(pairs.left_episode.tolist(), pairs.left_start.tolist()))
    b = list(zip(pairs.right_episode.tolist(), pairs.right_start.tolist()))
    return [(*min(x, y), *max(x, y)) for x, y in zip(a, b)]


def _fresh_candidates(ds: TransitionDataset, n: int, length: int, rng: np.random.Generator,
                      asked: set[tuple[int, int, int, int]]) -> SegmentPairs:
    """Up to ``n`` random pairs, none asked before and no two alike (a few draws if duplicates were removed)."""
    keep_pairs: list[SegmentPairs] = []
    seen: set[tuple[int, int, int, int]] = set()
    total = 0
    for _ in range(5):
        cand = sample_pairs(ds, n - total, length, rng)
        fresh = []
        for i, key in enumerate(_keys(cand)):
            if key not in asked and key not in seen:
                seen.add(key)
                fresh.append(i)
        keep_pairs.append(cand.subset(np.asarray(fresh, np.int64)))
        total += len(fresh)
        if total == n:
            break
    return SegmentPairs(*(np.concatenate([getattr(p, f) for p in keep_pairs]) for f in
                          ("left_episode", "left_start", "right_episode", "right_start", "length")))


def _ask(ds: TransitionDataset, rewards: np.ndarray, teacher: Teacher, need: int, length: int, factor: int,
         rng: np.random.Generator, asked: set[tuple[int, int, int, int]],
         answered: list[tuple[SegmentPairs, np.ndarray]], model: RewardModel | RewardEnsemble | None,
         method: str) -> int:
    """Choose and ask until ``need`` more answers are in ``answered``; returns the candidates scored."""
    scored = 0
    for _ in range(10):
        cand = _fresh_candidates(ds, need * factor, length, rng, asked)
        if len(cand) < need:
            raise ConfigError(f"active queries: only {len(cand)} new candidate pairs of length {length} left; "
                              f"expected at least {need} (more data, or fewer queries)")
        returns = None if model is None else _member_returns(model, ds, cand)
        pick = select_pairs(need, method, returns, rng, n_candidates=len(cand))
        chosen = cand.subset(np.sort(pick))
        asked.update(_keys(chosen))
        bound = PreferenceDataset.from_pairs(ds, chosen, np.zeros(len(chosen), np.int8), teacher.source)
        left, right = bound.segment_rows()
        labels = teacher.answer(rewards[left], rewards[right], rng)
        keep = labels != SKIPPED
        answered.append((chosen.subset(keep), labels[keep]))
        scored += len(cand)
        need -= int(keep.sum())
        if need <= 0:
            return scored
    raise ConfigError(f"teacher {teacher.spec!r} skipped too many queries; expected it to answer most of them")


def _member_returns(model: RewardModel | RewardEnsemble, ds: TransitionDataset, cand: SegmentPairs) -> np.ndarray:
    """Every member's predicted segment returns of the candidates, shape ``(K, n, 2)``."""
    name = ds.task.name
    if isinstance(model, RewardEnsemble):
        per_row = model.predict_members(name, ds.obs, ds.action, ds.next_obs, ds.terminated)
    else:
        per_row = np.asarray(model.predict(name, ds.obs, ds.action, ds.next_obs, ds.terminated))[None]
    bound = PreferenceDataset.from_pairs(ds, cand, np.zeros(len(cand), np.int8), "candidates")
    return np.stack([np.stack(bound.segment_returns(r), axis=1) for r in per_row])


def _combine(ds: TransitionDataset, answered: list[tuple[SegmentPairs, np.ndarray]], teacher: Teacher,
             length: int, seed: int) -> PreferenceDataset:
    pairs = SegmentPairs(*(np.concatenate([getattr(p, f) for p, _ in answered]) for f in
                           ("left_episode", "left_start", "right_episode", "right_start", "length")))
    labels = np.concatenate([lab for _, lab in answered]).astype(np.int8)
    return PreferenceDataset.from_pairs(ds, pairs, labels, teacher.source,
                                        info={"teacher": teacher.spec, "seed": seed, "segment_length": length,
                                              "active": True})


def _train(prefs: PreferenceDataset, ds: TransitionDataset, k: int, cfg: TrainConfig,
           model_config: ModelConfig | None, seed: int) -> tuple[RewardModel | RewardEnsemble, dict[str, Any]]:
    result = train_ensemble([], k, replace(cfg, seed=seed), model_config, progress=False,
                            preferences=[(prefs, ds)])
    m = result.metrics.get(ds.task.name, {})
    return result.model, {"heldout_pref_acc": m.get("pref_acc", float("nan")),
                          "heldout_pairs": m.get("n_pairs_val", 0)}
