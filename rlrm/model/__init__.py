"""The multi-task reward model: adapters → shared encoder → per-task heads; ensembles of it; safe save/load."""

from rlrm.model.ensemble import RewardEnsemble, predict_members
from rlrm.model.io import load, read_description, save
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.model.numpy_ensemble import NumpyEnsembleRewardFn
from rlrm.model.numpy_fn import NumpyRewardFn

__all__ = ["ModelConfig", "NumpyEnsembleRewardFn", "NumpyRewardFn", "RewardEnsemble", "RewardModel", "load",
           "predict_members", "read_description", "save"]
