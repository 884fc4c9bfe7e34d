"""The multi-task reward model: adapters → shared encoder → per-task heads; safe save/load."""

from rlrm.model.io import load, read_description, save
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.model.numpy_fn import NumpyRewardFn

__all__ = ["ModelConfig", "NumpyRewardFn", "RewardModel", "load", "read_description", "save"]
