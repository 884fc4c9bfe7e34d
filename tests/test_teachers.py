"""Synthetic preference teachers: the noise they claim, the grammar they accept, and the pairs they are asked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import EQUAL, LEFT, RIGHT
from rlrm.data.teachers import SKIPPED, Teacher, make_preferences, sample_pairs
from rlrm.errors import ConfigError


def _within_binomial(k: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(k / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def _random_queries(n: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, length)), rng.normal(size=(n, length))


def test_oracle_prefers_the_larger_return_and_ties_are_equal() -> None:
    left = np.array([[1.0, 2.0], [0.0, 0.0], [5.0, -5.0]])
    right = np.array([[0.0, 0.0], [1.0, 0.5], [-1.0, 1.0]])
    labels = Teacher.parse("oracle").answer(left, right, np.random.default_rng(0))
    assert labels.tolist() == [LEFT, RIGHT, EQUAL]


def test_mistake_flips_the_claimed_fraction_of_decided_answers() -> None:
    left, right = _random_queries(20_000, 5)
    oracle = Teacher.parse("oracle").answer(left, right, np.random.default_rng(0))
    noisy = Teacher.parse("mistake:eps=0.2").answer(left, right, np.random.default_rng(1))
    assert set(np.unique(noisy)) <= {LEFT, RIGHT}
    flipped = int((noisy != oracle).sum())
    assert _within_binomial(flipped, len(oracle), 0.2), flipped / len(oracle)
    assert (Teacher.parse("mistake:eps=0").answer(left, right, np.random.default_rng(1)) == oracle).all()
    assert (Teacher.parse("mistake:eps=1").answer(left, right, np.random.default_rng(1)) != oracle).all()


def test_mistake_keeps_equal_answers() -> None:
    same = np.ones((500, 3))
    labels = Teacher.parse("mistake:eps=0.5").answer(same, same, np.random.default_rng(0))
    assert (labels == EQUAL).all()


@pytest.mark.parametrize("beta", [0.0, 0.7, 2.0])
def test_stochastic_matches_the_sigmoid_of_the_return_gap(beta: float) -> None:
    teacher = Teacher.parse(f"stochastic:beta={beta}")
    rng = np.random.default_rng(3)
    n = 4000
    for gap in (-2.0, -0.5, 0.0, 1.0, 3.0):
        left = np.full((n, 4), gap / 4)  # returns differ by exactly `gap`
        right = np.zeros((n, 4))
        labels = teacher.answer(left, right, rng)
        assert set(np.unique(labels)) <= {LEFT, RIGHT}
        p = 1 / (1 + math.exp(-beta * gap))
        assert _within_binomial(int((labels == LEFT).sum()), n, p), (beta, gap, (labels == LEFT).mean(), p)


def test_stochastic_with_a_large_gap_does_not_overflow() -> None:
    labels = Teacher.parse("stochastic:beta=100").answer(np.array([[1e6], [-1e6]]), np.zeros((2, 1)),
                                                         np.random.default_rng(0))
    assert labels.tolist() == [LEFT, RIGHT]


def test_skip_drops_exactly_the_queries_with_both_returns_below_t() -> None:
    left, right = _random_queries(3000, 4, seed=5)
    threshold = 0.5
    labels = Teacher.parse(f"skip:{threshold}").answer(left, right, np.random.default_rng(0))
    both_low = (left.sum(1) < threshold) & (right.sum(1) < threshold)
    assert 0 < both_low.sum() < len(labels)
    assert ((labels == SKIPPED) == both_low).all()
    oracle = Teacher.parse("oracle").answer(left, right, np.random.default_rng(0))
    assert (labels[~both_low] == oracle[~both_low]).all()
    # negative thresholds work for negative rewards (Pendulum-like)
    labels = Teacher.parse("skip:-3").answer(left - 1, right - 1, np.random.default_rng(0))
    assert ((labels == SKIPPED) == ((left.sum(1) - 4 < -3) & (right.sum(1) - 4 < -3))).all()


def test_equal_answers_equal_within_t_and_the_oracle_otherwise() -> None:
    left, right = _random_queries(3000, 4, seed=6)
    labels = Teacher.parse("equal:0.8").answer(left, right, np.random.default_rng(0))
    close = np.abs(left.sum(1) - right.sum(1)) < 0.8
    assert 0 < close.sum() < len(labels)
    assert ((labels == EQUAL) == close).all()
    oracle = Teacher.parse("oracle").answer(left, right, np.random.default_rng(0))
    assert (labels[~close] == oracle[~close]).all()


def test_myopic_discounts_early_steps() -> None:
    left = np.array([[10.0, 0.0, 0.0, 0.0, 0.0]])  # the reward comes first
    right = np.array([[0.0, 0.0, 0.0, 0.0, 3.0]])  # a smaller reward, last
    rng = np.random.default_rng(0)
    assert Teacher.parse("oracle").answer(left, right, rng).tolist() == [LEFT]
    assert Teacher.parse("myopic:gamma=0.5").answer(left, right, rng).tolist() == [RIGHT]  # 10 * 0.5**4 < 3
    assert Teacher.parse("myopic:gamma=1").answer(left, right, rng).tolist() == [LEFT]


def test_myopic_does_not_move_the_skip_and_equal_thresholds() -> None:
    left = np.array([[10.0, 0.0, 0.0]])
    right = np.array([[0.0, 0.0, 9.5]])
    teacher = Teacher.parse("myopic:gamma=0.1+equal:1")
    assert teacher.answer(left, right, np.random.default_rng(0)).tolist() == [EQUAL]  # plain returns 10 vs 9.5


@pytest.mark.parametrize("spec", ["stochastic:beta=1+mistake:eps=0.1", "stochastic:beta=1,mistake:eps=0.1",
                                  " mistake:eps=0.1 + stochastic:beta=1 "])
def test_combined_specs(spec: str) -> None:
    teacher = Teacher.parse(spec)
    assert (teacher.beta, teacher.eps, teacher.gamma, teacher.skip, teacher.equal) == (1.0, 0.1, 1.0, None, None)
    assert teacher.source == f"teacher:{spec.strip()}"


def test_all_terms_together() -> None:
    t = Teacher.parse("stochastic:beta=2,myopic:gamma=0.9,mistake:eps=0.05,skip:-1e2,equal:.5")
    assert (t.beta, t.gamma, t.eps, t.skip, t.equal) == (2.0, 0.9, 0.05, -100.0, 0.5)


@pytest.mark.parametrize("spec", ["", "oracel", "stochastic", "stochastic:", "stochastic:beta", "stochastic:b=1",
                                  "stochastic:beta=-1", "stochastic:beta=x", "stochastic:beta=1=2", "stochastic:1",
                                  "mistake:eps=1.5", "mistake:eps=-0.1", "myopic:gamma=0", "myopic:gamma=1.1",
                                  "skip:", "skip:t=1", "skip:nan", "skip:inf", "equal:-1", "oracle:1",
                                  "stochastic:beta=1+stochastic:beta=2", "oracle+", "mistake:eps=0.1 0.2"])
def test_bad_specs_are_one_line_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        Teacher.parse(spec)
    message = str(err.value)
    assert "\n" not in message
    assert repr(spec) in message or (not spec and "empty" in message)
    assert "stochastic:beta=B" in message  # the grammar is named


def test_sample_pairs_stay_inside_episodes(cartpole_ds: TransitionDataset) -> None:
    pairs = sample_pairs(cartpole_ds, 500, 12, np.random.default_rng(0))
    assert len(pairs) == 500 and (pairs.length == 12).all()
    for side in ("left", "right"):
        ep, start = getattr(pairs, f"{side}_episode"), getattr(pairs, f"{side}_start")
        counts = {int(e): int((cartpole_ds.episode == e).sum()) for e in np.unique(ep)}
        assert all(s >= 0 and s + 12 <= counts[int(e)] for e, s in zip(ep, start))
    # deterministic for a seed, different across seeds
    again = sample_pairs(cartpole_ds, 500, 12, np.random.default_rng(0))
    assert (again.left_start == pairs.left_start).all() and (again.right_episode == pairs.right_episode).all()
    other = sample_pairs(cartpole_ds, 500, 12, np.random.default_rng(1))
    assert not (other.left_episode == pairs.left_episode).all()


def test_sample_pairs_skips_short_episodes_and_names_the_longest(cartpole_ds: TransitionDataset) -> None:
    episodes, counts = np.unique(cartpole_ds.episode, return_counts=True)
    longest = int(counts.max())
    pairs = sample_pairs(cartpole_ds, 300, longest, np.random.default_rng(0))
    assert set(pairs.left_episode.tolist()) <= set(episodes[counts == longest].tolist())
    assert (pairs.left_start == 0).all()
    with pytest.raises(ConfigError, match=rf"longest: episode {episodes[np.argmax(counts)]} with {longest} steps"):
        sample_pairs(cartpole_ds, 10, longest + 1, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="length >= 1"):
        sample_pairs(cartpole_ds, 10, 0, np.random.default_rng(0))


def test_make_preferences_oracle_agrees_with_segment_returns(pendulum_ds: TransitionDataset) -> None:
    prefs = make_preferences(pendulum_ds, pendulum_ds.label, 200, 25, "oracle", seed=4)
    assert len(prefs) == 200 and prefs.sources == ["teacher:oracle"]
    left, right = prefs.segment_returns(pendulum_ds.label)
    expected = np.where(left > right, LEFT, np.where(left < right, RIGHT, EQUAL))
    assert (prefs.label == expected).all()
    assert prefs.info["teacher"] == "oracle" and prefs.info["segment_length"] == 25
    again = make_preferences(pendulum_ds, pendulum_ds.label, 200, 25, "oracle", seed=4)
    assert (again.pairs.left_start == prefs.pairs.left_start).all()


def test_make_preferences_drops_skipped_queries(pendulum_ds: TransitionDataset) -> None:
    rewards = pendulum_ds.label
    all_queries = make_preferences(pendulum_ds, rewards, 300, 20, "oracle", seed=2)
    left, right = all_queries.segment_returns(rewards)
    threshold = float(np.median(np.maximum(left, right)))
    kept = make_preferences(pendulum_ds, rewards, 300, 20, f"skip:{threshold}", seed=2)
    drop = (left < threshold) & (right < threshold)
    assert len(kept) == int((~drop).sum()) and kept.info["skipped"] == int(drop.sum())
    assert (kept.pairs.left_start == all_queries.pairs.left_start[~drop]).all()
    with pytest.raises(ConfigError, match="skipped all 300 queries"):
        make_preferences(pendulum_ds, rewards, 300, 20, "skip:1", seed=2)  # Pendulum rewards are <= 0


def test_make_preferences_refuses_rewards_of_the_wrong_shape(pendulum_ds: TransitionDataset) -> None:
    with pytest.raises(ConfigError, match=rf"expected {len(pendulum_ds)} finite values"):
        make_preferences(pendulum_ds, pendulum_ds.label[:-1], 10, 5, "oracle")
