"""The type of a shipped reward function (kept apart so that the family modules and the package share it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: batched ``(obs, action, next_obs, done) -> (n,) float64``, the calling convention of
#: :class:`rlrm.reward_fn.RewardFn`: a leading batch axis, Dict observations as dicts of arrays, ``done`` the
#: ``terminated`` flags
TransitionReward = Callable[[Any, Any, Any, np.ndarray], np.ndarray]
