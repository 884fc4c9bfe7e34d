"""Reward training: all tasks at once, held-out metrics per task."""

from rlrm.train.checks import DataWarning, data_warnings
from rlrm.train.heldout import evaluate_model
from rlrm.train.loop import TrainConfig, TrainResult, train_reward_model

__all__ = ["DataWarning", "TrainConfig", "TrainResult", "data_warnings", "evaluate_model", "train_reward_model"]
