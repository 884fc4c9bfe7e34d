"""Synthetic preference teachers (B-Pref, Lee et al. 2021) over any labeler's per-step rewards, and the sampling
of segment pairs to ask them about.

Spec grammar (terms joined by ``+`` or ``,``; each name at most once; order does not matter)::

    SPEC := TERM (("+" | ",") TERM)*
    TERM := "oracle" | "stochastic:beta=B" | "myopic:gamma=G" | "mistake:eps=E" | "skip:T" | "equal:T"

e.g. ``oracle``, ``stochastic:beta=1+mistake:eps=0.1``, ``myopic:gamma=0.9,skip:-500``. No parameter holds a
``+`` or ``,`` (numbers are plain decimals such as ``-1.5e3``), so the split is unambiguous.

How one query (segments of length L, per-step rewards r_0..r_{L-1}) is answered, in this order:

1. ``skip:T`` — dropped (answer ``-1``) when BOTH segment returns (plain sums) are below ``T``.
2. ``equal:T`` — answered ``equal`` when the plain returns differ by less than ``T`` (``|R_left - R_right| < T``).
3. The preference uses the returns ``sum_t w_t r_t`` with ``w_t = gamma^(L-1-t)`` under ``myopic:gamma=G``
   (recent steps weigh most) and ``w_t = 1`` otherwise: ``stochastic:beta=B`` samples left with probability
   ``sigmoid(B * (R_left - R_right))`` (``B = 0``: a coin flip); without it the larger return wins (ties: equal).
4. ``mistake:eps=E`` — a left/right answer is flipped with probability ``E`` (``equal`` answers are kept).

Thresholds are ABSOLUTE, in the units of a segment's return (the sum of the labeler's rewards over the segment),
unlike B-Pref's thresholds relative to the batch's returns: a query's answer then never depends on which other
queries were asked with it, and a person reading the spec can check an answer by hand. As in B-Pref, skip and
equal look at the plain (undiscounted) returns; myopia only changes which side is preferred.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import EQUAL, LEFT, RIGHT, PreferenceDataset, SegmentPairs
from rlrm.errors import ConfigError

SKIPPED = -1
GRAMMAR = ("terms joined by '+' or ',': oracle | stochastic:beta=B (B >= 0) | myopic:gamma=G (0 < G <= 1) | "
           "mistake:eps=E (0 <= E <= 1) | skip:T | equal:T (T >= 0)")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_PARAM = {"stochastic": "beta", "myopic": "gamma", "mistake": "eps", "skip": None, "equal": None}


@dataclass(frozen=True)
class Teacher:
    """A synthetic teacher; build it from a spec with :meth:`parse`. ``None`` fields are off."""

    spec: str = "oracle"
    beta: float | None = None
    gamma: float = 1.0
    eps: float = 0.0
    skip: float | None = None
    equal: float | None = None

    @property
    def source(self) -> str:
        """How a preference set records this teacher (``teacher:<spec>``)."""
        return f"teacher:{self.spec}"

    @classmethod
    def parse(cls, spec: str) -> Teacher:
        """Parse a spec (see the module doc); raise a one-line :class:`ConfigError` naming it and the grammar."""
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"teacher spec {spec!r}: empty; expected {GRAMMAR}")
        values: dict[str, float] = {}
        for term in re.split(r"[+,]", spec):
            name, value = _parse_term(spec, term.strip())
            if name in values:
                raise ConfigError(f"teacher spec {spec!r}: {name!r} given twice; expected each term at most once "
                                  f"({GRAMMAR})")
            values[name] = value
        kwargs = {key: values[name] for name, key in (("stochastic", "beta"), ("myopic", "gamma"),
                                                        ("mistake", "eps"), ("skip", "skip"), ("equal", "equal"))
                  if name in values}
        return cls(spec=spec.strip(), **kwargs)

    def answer(self, left_rewards: np.ndarray, right_rewards: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Answer ``n`` queries from the per-step rewards of both sides.

        :param left_rewards: shape ``(n, L)``, the rewards of each left segment in time order (same for right).
        :param rng: draws the stochastic and mistake answers.
        :return: int8 codes of shape ``(n,)``: 0 left, 1 right, 2 equal, ``-1`` skipped.
        """
        left, right = np.asarray(left_rewards, np.float64), np.asarray(right_rewards, np.float64)
        if left.ndim != 2 or left.shape != right.shape:
            raise ConfigError(f"teacher {self.spec!r}: expected left and right rewards of one shape (n, L), got "
                              f"{left.shape} and {right.shape}")
        n, length = left.shape
        plain_l, plain_r = left.sum(1), right.sum(1)
        weights = self.gamma ** np.arange(length - 1, -1, -1, dtype=np.float64)
        pref_l, pref_r = (left @ weights, right @ weights) if self.gamma != 1.0 else (plain_l, plain_r)
        diff = pref_l - pref_r
        if self.beta is None:
            out = np.where(diff > 0, LEFT, np.where(diff < 0, RIGHT, EQUAL)).astype(np.int8)
        else:
            p_left = 0.5 * (1.0 + np.tanh(0.5 * self.beta * diff))  # sigmoid, without overflow
            out = np.where(rng.random(n) < p_left, LEFT, RIGHT).astype(np.int8)
        if self.eps > 0:
            flip = (rng.random(n) < self.eps) & (out != EQUAL)
            out[flip] = (LEFT + RIGHT) - out[flip]
        if self.equal is not None:
            out[np.abs(plain_l - plain_r) < self.equal] = EQUAL
        if self.skip is not None:
            out[(plain_l < self.skip) & (plain_r < self.skip)] = SKIPPED
        return out


def _parse_term(spec: str, term: str) -> tuple[str, float]:
    name, colon, arg = term.partition(":")
    name = name.strip()
    if name == "oracle" and not colon:
        return name, 0.0
    if name not in _PARAM:
        raise ConfigError(f"teacher spec {spec!r}: unknown teacher {name!r}; expected {GRAMMAR}")
    key = _PARAM[name]
    if not colon or not arg.strip():
        raise ConfigError(f"teacher spec {spec!r}: {name!r} needs a parameter "
                          f"({name}:{key + '=' if key else ''}{'T' if key is None else key[0].upper()}); "
                          f"expected {GRAMMAR}")
    arg = arg.strip()
    if key is not None:
        given, eq, arg = arg.partition("=")
        if not eq or given.strip() != key:
            raise ConfigError(f"teacher spec {spec!r}: {term!r}: expected {name}:{key}=NUMBER; grammar: {GRAMMAR}")
        arg = arg.strip()
    if not _NUMBER.fullmatch(arg):
        raise ConfigError(f"teacher spec {spec!r}: {term!r}: {arg!r} is not a plain number; expected {GRAMMAR}")
    value = float(arg)
    ok = {"stochastic": value >= 0, "myopic": 0 < value <= 1, "mistake": 0 <= value <= 1,
          "skip": True, "equal": value >= 0}[name]
    if not ok or not math.isfinite(value):
        raise ConfigError(f"teacher spec {spec!r}: {term!r} is out of range; expected {GRAMMAR}")
    return name, value


# --------------------------------------------------------------------------- sampling and answering
def sample_pairs(ds: TransitionDataset, n: int, length: int, rng: np.random.Generator) -> SegmentPairs:
    """``n`` random pairs of segments of ``length`` steps, each inside one episode.

    Each side is drawn independently and uniformly over all segment positions that fit in an episode (a long
    episode offers more positions; a segment never spans steps missing from a dataset labeled in part); episodes
    shorter than ``length`` are never drawn. The two sides may come from the same episode.

    :raises ConfigError: ``n`` or ``length`` < 1, or no episode has ``length`` steps (names the longest).
    """
    if n < 1 or length < 1:
        raise ConfigError(f"sample_pairs: expected n >= 1 pairs and a segment length >= 1, got n={n}, "
                          f"length={length}")
    episode, step = ds.episode, ds.step.astype(np.int64)
    last = np.arange(length - 1, len(ds))  # the last row of a segment starting at row ``last - length + 1``
    valid = np.flatnonzero((episode[last] == episode[last - length + 1]) & (step[last] - step[last - length + 1]
                                                                             == length - 1))
    if not len(valid):
        episodes, count = np.unique(episode, return_counts=True)
        longest = f"episode {episodes[np.argmax(count)]} with {count.max()} steps" if len(count) else "no episodes"
        raise ConfigError(f"segment length {length}: no episode of task {ds.task.name!r} is that long in the dataset "
                          f"(longest: {longest}); expected a length <= the longest episode")
    _, first = np.unique(episode, return_index=True)
    first_row = first[np.searchsorted(np.unique(episode), episode)]  # each row's episode's first row
    sides = []
    for _ in range(2):
        rows = valid[rng.integers(0, len(valid), size=n)]
        sides.append((episode[rows], rows - first_row[rows]))
    (le, ls), (re_, rs) = sides
    return SegmentPairs.from_arrays(le, ls, re_, rs, length)


def make_preferences(ds: TransitionDataset, rewards: np.ndarray, n: int, length: int, teacher: str | Teacher,
                     seed: int = 0) -> PreferenceDataset:
    """Ask ``teacher`` about ``n`` random segment pairs of ``ds`` and keep its answers (skipped ones dropped).

    :param rewards: the labeler's per-transition rewards, shape ``(len(ds),)`` (e.g. ``ds.label``).
    :param teacher: a spec (see the module doc) or a :class:`Teacher`.
    :param seed: seeds both the sampling of pairs and the teacher's noise.
    :return: preferences bound to ``ds``, source ``teacher:<spec>``; set ``dataset_dir`` (or pass it to
        ``save``) once ``ds`` is saved.
    :raises ConfigError: a bad spec, bad ``n``/``length``, or a teacher that skipped every query.
    """
    teacher = Teacher.parse(teacher) if isinstance(teacher, str) else teacher
    rewards = np.asarray(rewards, np.float64)
    if rewards.shape != (len(ds),) or not np.isfinite(rewards).all():
        raise ConfigError(f"make_preferences: rewards of shape {rewards.shape}; expected {len(ds)} finite values, "
                          "one per transition")
    rng = np.random.default_rng(seed)
    pairs = sample_pairs(ds, n, length, rng)
    prefs = PreferenceDataset.from_pairs(ds, pairs, np.zeros(n, np.int8), teacher.source,
                                         info={"teacher": teacher.spec, "seed": seed, "segment_length": length})
    left_rows, right_rows = prefs.segment_rows()
    labels = teacher.answer(rewards[left_rows], rewards[right_rows], rng)
    keep = labels != SKIPPED
    if not keep.any():
        largest = max(float(r.max()) for r in prefs.segment_returns(rewards))
        raise ConfigError(f"teacher {teacher.spec!r} skipped all {n} queries (largest segment return {largest:.4g}); "
                          "expected a skip threshold below some segment returns")
    return PreferenceDataset.from_pairs(ds, pairs.subset(keep), labels[keep], teacher.source,
                                        info={**prefs.info, "queries": n, "skipped": int((~keep).sum())})
