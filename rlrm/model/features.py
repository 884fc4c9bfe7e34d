"""Input groups: the adapters of one (observation space, action space) pair, turning a batch of transitions
into one feature matrix. Training (torch) and inference (NumPy) both call :meth:`InputGroup.features`, so a
model gives the same number for a transition in a dataset and inside a wrapper."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from rlrm import spaces as sp

INPUTS = ("obs", "action", "next_obs", "done")


class InputGroup:
    """The adapters of one (observation space, action space) pair and the size of their features."""

    def __init__(self, gid: str, obs_space: spaces.Space, action_space: spaces.Space, inputs: list[str]) -> None:
        self.id = gid
        self.obs_space, self.action_space = obs_space, action_space
        self.obs = sp.SpaceAdapter(obs_space, "obs")
        self.next_obs = sp.SpaceAdapter(obs_space, "next_obs")
        self.action = sp.SpaceAdapter(action_space, "action")
        self.inputs = inputs
        parts = {"obs": self.obs.continuous, "action": self.action.continuous,
                 "next_obs": self.next_obs.continuous, "done": np.zeros(1, bool)}
        #: which features are standardized (Box values); one-hot and flags are left as they are
        self.continuous = np.concatenate([parts[i] for i in inputs])
        self.dim = len(self.continuous)

    def features(self, obs: Any, action: Any, next_obs: Any, done: Any, out: np.ndarray | None = None,
                 extra: np.ndarray | None = None) -> np.ndarray:
        """``(n, dim)`` features of a batch of transitions (float32, or written into ``out``).

        :param extra: a block appended after the features (the NumPy path's column of ones).
        """
        blocks: list[np.ndarray] = []
        for name in self.inputs:
            if name == "obs":
                self.obs.blocks(obs, blocks)
            elif name == "action":
                self.action.blocks(action, blocks)
            elif name == "next_obs":
                self.next_obs.blocks(next_obs, blocks)
            else:
                d = np.asarray(done)
                blocks.append(d.reshape(len(d), 1))
        if extra is not None:
            blocks.append(extra)
        if out is None:
            out = np.empty((len(blocks[0]), self.dim + (0 if extra is None else extra.shape[1])), dtype=np.float32)
        return sp.join_blocks(blocks, out, "obs/action/next_obs/done")

    @property
    def signature(self) -> str:
        return sp.space_signature(self.obs_space) + "|" + sp.space_signature(self.action_space)

    def to_json(self) -> dict[str, Any]:
        return {"obs_space": sp.space_to_json(self.obs_space), "action_space": sp.space_to_json(self.action_space),
                "dim": self.dim}
