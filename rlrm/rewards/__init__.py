"""Reward functions shipped with rlrm: task families' labelers (``rlrm:NAME(key=value, ...)``) and the
rewards of known envs written as functions of a transition.

A :data:`TransitionReward` has the calling convention of :class:`rlrm.reward_fn.RewardFn`: batched
``(obs, action, next_obs, done) -> (n,) float64`` with a leading batch axis; Dict observations arrive as dicts
of arrays; ``done`` holds the ``terminated`` flags.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from rlrm.errors import LabelError
from rlrm.rewards import cartpole, cheetah, pendulum, point
from rlrm.rewards.transition import TransitionReward

#: family name -> (factory taking the spec's keyword arguments, required keys, optional keys with defaults)
FAMILIES: dict[str, tuple[Callable[..., TransitionReward], tuple[str, ...], dict[str, float]]] = {
    "cartpole_position": (cartpole.position_reward, ("target",), {"width": 0.75}),
    "cheetah_velocity": (cheetah.velocity_reward, ("target",), {"ctrl_cost": 0.05}),
    "point_goal": (point.goal_reward, ("x", "y"), {"ctrl_cost": 0.0}),
}

#: env id -> the env's own reward as a function of the transition (only where it is exactly one)
ENV_REWARDS: dict[str, Callable[[], TransitionReward]] = {
    "CartPole-v1": cartpole.alive_reward,
    "Pendulum-v1": pendulum.env_reward,
    "rlrm/PointGoal-v0": lambda: point.goal_reward(x=0.0, y=0.0),
}

PREFIX = "rlrm:"
_SPEC = re.compile(r"rlrm:([A-Za-z_]\w*)(?:\((.*)\))?")
_ARG = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*([^,=\s]+)\s*")


def _expected() -> str:
    forms = [f"rlrm:{name}({', '.join(f'{k}=NUMBER' for k in req)})" for name, (_, req, _) in sorted(FAMILIES.items())]
    return "expected one of " + ", ".join(forms)


def parse_spec(spec: str, what: str = "labeler") -> tuple[str, dict[str, float]]:
    """Split ``rlrm:NAME(key=value, ...)`` into the name and its numeric keyword arguments.

    :param what: what the spec is, for error messages (``labeler``, ``policy``).

    :raise LabelError: a malformed spec (not ``rlrm:``, bad parentheses, a non-numeric or repeated value).
    """
    m = _SPEC.fullmatch(spec.strip())
    if m is None:
        raise LabelError(f"{what} {spec!r}: expected 'rlrm:NAME' or 'rlrm:NAME(key=number, ...)'")
    name, body = m.group(1), m.group(2)
    kwargs: dict[str, float] = {}
    if body is not None and body.strip():
        for part in body.split(","):
            a = _ARG.fullmatch(part)
            if a is None:
                raise LabelError(f"{what} {spec!r}: argument {part.strip()!r}: expected key=number")
            key, text = a.groups()
            try:
                value = float(text)
            except ValueError:
                raise LabelError(f"{what} {spec!r}: argument {key!r}: expected a number, got {text!r}") from None
            if not math.isfinite(value):
                raise LabelError(f"{what} {spec!r}: argument {key!r}: expected a finite number, got {text!r}")
            if key in kwargs:
                raise LabelError(f"{what} {spec!r}: argument {key!r} given twice")
            kwargs[key] = value
    return name, kwargs


def reward_function(spec: str) -> TransitionReward:
    """The shipped reward function named by ``spec`` (``rlrm:NAME(key=value, ...)``).

    :raise LabelError: an unknown name, a missing or unexpected argument; the message lists the known families.
    """
    name, kwargs = parse_spec(spec)
    if name not in FAMILIES:
        raise LabelError(f"labeler {spec!r}: unknown reward function {name!r}; {_expected()}")
    factory, required, optional = FAMILIES[name]
    missing = [k for k in required if k not in kwargs]
    unknown = sorted(set(kwargs) - set(required) - set(optional))
    if missing or unknown:
        allowed = [*required, *(f"{k}={v:g}" for k, v in optional.items())]
        found = "; ".join(([f"missing {missing}"] if missing else []) + ([f"unexpected {unknown}"] if unknown else []))
        raise LabelError(f"labeler {spec!r}: {found}; rlrm:{name} takes ({', '.join(allowed)})")
    return factory(**{**optional, **kwargs})


def known_env_reward(env_id: str) -> TransitionReward | None:
    """The env's own reward as a function of the transition, or ``None`` where rlrm does not know it exactly.

    :param env_id: a Gymnasium id (a ``module:`` prefix is ignored).
    """
    make = ENV_REWARDS.get(env_id.split(":", 1)[-1])
    return make() if make is not None else None


def true_reward_fn(labeler: str, env_id: str) -> TransitionReward | None:
    """The function behind a task's labels: an ``rlrm:`` labeler's function, the env's own reward for ``env``
    (where known, see :func:`known_env_reward`), ``None`` for anything else (``python:``, ``file:``).

    :raise LabelError: a malformed or unknown ``rlrm:`` spec.
    """
    if labeler.startswith(PREFIX):
        return reward_function(labeler)
    if labeler == "env":
        return known_env_reward(env_id)
    return None


__all__ = ["ENV_REWARDS", "FAMILIES", "PREFIX", "TransitionReward", "known_env_reward", "parse_spec",
           "reward_function", "true_reward_fn"]
