"""Which transitions of a new task to label when only a few labels will be given.

A uniform draw of 4-8 transitions can land on near-duplicates, or all miss the region where the new reward
differs from the old ones, and no fit recovers from that. :func:`choose_labels` spreads the labels out instead
(greedy k-center, :func:`rlrm.data.selection.spread_index`) in the space a new head is learned in: the rewards
of the model's earlier tasks on the same spaces (what a span head mixes, :mod:`rlrm.train.span`), or, without a
model or such tasks, the raw input features. Measured on the CartPole family in benchmarks/RESULTS.md (issue #9).
"""

from __future__ import annotations

import numpy as np

from rlrm.data.dataset import TransitionDataset
from rlrm.data.selection import spread_index
from rlrm.model.features import INPUTS, InputGroup
from rlrm.model.network import RewardModel
from rlrm.train.span import basis_rewards, span_basis


def label_space(ds: TransitionDataset, model: RewardModel | None = None) -> np.ndarray:
    """The points :func:`choose_labels` spreads labels over, one row per transition of ``ds``: ``model``'s rewards
    for its earlier tasks on ``ds``'s spaces (label units), else the raw features (obs, action, next_obs, done)."""
    if model is not None and model.group_for(ds.obs_space, ds.action_space) is not None:
        basis = span_basis(model, ds)
        if basis:
            return basis_rewards(model, ds, basis)
    group = InputGroup("labels", ds.obs_space, ds.action_space, list(INPUTS))
    return group.features(ds.obs, ds.action, ds.next_obs, ds.terminated).astype(np.float64)


def choose_labels(ds: TransitionDataset, n: int, model: RewardModel | None = None, seed: int = 0) -> np.ndarray:
    """Sorted indices of the ``n`` transitions of ``ds`` to label (see the module doc); ``seed`` draws the first.

    :raises ConfigError: ``n`` outside ``1..len(ds)``.
    """
    return np.sort(spread_index(label_space(ds, model), n, np.random.default_rng(seed)))
