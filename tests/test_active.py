"""Active preference queries in rounds (rlrm.train.active): counts per round, no repeated query, history, and that
disagreement picks the pairs the previous round's ensemble disagrees on most."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import PreferenceDataset
from rlrm.data.selection import selection_scores
from rlrm.data.teachers import Teacher, sample_pairs
from rlrm.errors import ConfigError
from rlrm.model.ensemble import RewardEnsemble
from rlrm.train import TrainConfig
from rlrm.train.active import active_preferences, default_schedule

TINY = TrainConfig(epochs=2, min_epoch_steps=5, patience=0)


def _keys(prefs: PreferenceDataset) -> list[tuple[int, ...]]:
    p = prefs.pairs
    out = []
    for le, ls, re_, rs in zip(p.left_episode, p.left_start, p.right_episode, p.right_start):
        a, b = (int(le), int(ls)), (int(re_), int(rs))
        out.append((*min(a, b), *max(a, b)))
    return out


def _scores(model: RewardEnsemble, ds: TransitionDataset, prefs: PreferenceDataset) -> np.ndarray:
    per_row = model.predict_members(ds.task.name, ds.obs, ds.action, ds.next_obs, ds.terminated)
    returns = np.stack([np.stack(prefs.segment_returns(r), axis=1) for r in per_row])
    return selection_scores("disagreement", returns)


def test_disagreement_rounds(pendulum_ds: TransitionDataset) -> None:
    seen: list[tuple[Any, int]] = []

    def evaluate(model: Any, prefs: PreferenceDataset) -> dict[str, Any]:
        seen.append((model, len(prefs)))
        return {"probe": len(prefs) * 2}

    prefs, model, history = active_preferences(pendulum_ds, pendulum_ds.label, "oracle", 60, select="disagreement",
                                               schedule=[20, 30, 60], k=2, length=10, candidates_factor=10,
                                               config=TINY, seed=3, evaluate=evaluate)
    # counts per round, and what each round's row says
    assert len(prefs) == 60 and isinstance(model, RewardEnsemble) and model.k == 2
    assert [h["n_pairs"] for h in history] == [20, 30, 60]
    assert [h["selected_by"] for h in history] == ["uniform", "ensemble", "ensemble"]
    assert [h["n_candidates"] for h in history] == [20, 100, 300]
    assert [h["probe"] for h in history] == [40, 60, 120]
    assert all(0.0 <= h["heldout_pref_acc"] <= 1.0 for h in history if h["heldout_pairs"])
    assert [n for _, n in seen] == [20, 30, 60] and seen[-1][0] is model
    # no query asked twice, either way round; the oracle's answers
    keys = _keys(prefs)
    assert len(set(keys)) == len(keys)
    left, right = prefs.segment_returns(pendulum_ds.label)
    assert np.array_equal(prefs.label, np.where(left > right, 0, np.where(left < right, 1, 2)))
    # rounds 2 and 3 took the top tenth of their candidates by the previous round's ensemble's disagreement:
    # every chosen pair scores above most random pairs under that ensemble
    reference = sample_pairs(pendulum_ds, 2000, 10, np.random.default_rng(0))
    reference = PreferenceDataset.from_pairs(pendulum_ds, reference, np.zeros(2000, np.int8), "reference")
    for (round_model, lo), hi in zip(seen[:2], (30, 60)):
        chosen = PreferenceDataset.from_pairs(pendulum_ds, prefs.pairs.subset(slice(lo, hi)), prefs.label[lo:hi],
                                              "chosen")
        floor = np.quantile(_scores(round_model, pendulum_ds, reference), 0.7)
        assert _scores(round_model, pendulum_ds, chosen).min() >= floor


def test_uniform_rounds_single_model_and_skips(pendulum_ds: TransitionDataset) -> None:
    teacher = Teacher.parse("skip:-40")  # skips pairs of two low returns; the rounds ask again until answered
    prefs, model, history = active_preferences(pendulum_ds, pendulum_ds.label, teacher, 40, select="uniform",
                                               rounds=2, k=1, length=10, config=TINY, seed=0)
    assert default_schedule(40, 2) == [20, 40]
    assert len(prefs) == 40 and [h["n_pairs"] for h in history] == [20, 40]
    assert [h["selected_by"] for h in history] == ["uniform", "uniform"]
    assert not isinstance(model, RewardEnsemble)
    left, right = prefs.segment_returns(pendulum_ds.label)
    assert (np.maximum(left, right) >= -40).all()  # nothing skipped was kept
    assert len(set(_keys(prefs))) == 40


@pytest.mark.parametrize("kwargs, match", [
    ({"select": "disagreement", "k": 1}, "k >= 2"),
    ({"schedule": [10, 5, 40]}, "schedule"),
    ({"schedule": [10, 20]}, "ending at n_total=40"),
    ({"select": "bald"}, "unknown selection"),
    ({"candidates_factor": 0}, "candidates_factor"),
])
def test_bad_arguments(pendulum_ds: TransitionDataset, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        active_preferences(pendulum_ds, pendulum_ds.label, "oracle", 40, config=TINY, **kwargs)
