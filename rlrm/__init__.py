"""rlrm: reinforcement learning from a learned reward."""

from rlrm.errors import RlrmError

__version__ = "0.1.0"

__all__ = ["RlrmError", "__version__"]
