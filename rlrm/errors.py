"""Exception types. Every message names the file/field, what was found and what was expected."""


class RlrmError(Exception):
    """Base class: the CLIs print these as one line and exit non-zero."""


class TaskError(RlrmError):
    """Unknown task, suite or env id, or a malformed task file."""


class SpaceError(RlrmError):
    """An unsupported space, or data that does not fit a space."""


class DatasetError(RlrmError):
    """A dataset directory that is missing, empty, corrupt or inconsistent."""


class LabelError(RlrmError):
    """A labeler that cannot be loaded or produced bad labels."""


class ModelFileError(RlrmError):
    """A reward-model file that is truncated, corrupt or not an rlrm model."""


class ConfigError(RlrmError):
    """Bad hyperparameters, CLI values or configuration files."""


class RewardError(RlrmError):
    """A learned reward that is not finite, or a reward function that does not fit an env."""
