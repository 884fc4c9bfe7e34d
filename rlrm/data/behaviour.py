"""Behaviour policies shipped with rlrm, for data that cover what a task family rewards (``--policy rlrm:NAME``).

- ``rlrm:cartpole_wander(epsilon=0.1, period=100, span=2)``: balances the pole while steering the cart to a random
  target in ``[-span, span]`` that changes every ``period`` steps, with an ``epsilon`` share of random actions.
  Random CartPole actions keep the cart within |x| < 0.5 and drop the pole in ~20 steps; this covers x in about
  [-2, 2] with the pole up, in long episodes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gymnasium import spaces

from rlrm import rewards
from rlrm.data.rollout import Policy
from rlrm.errors import ConfigError, LabelError
from rlrm.tasks import Task

#: state-feedback gains on (x - target, x_dot, theta, theta_dot): push right when positive
_WANDER_GAINS = np.array([0.05, 0.1, 1.0, 0.3])


def cartpole_wander(n_envs: int, seed: int, epsilon: float = 0.1, period: float = 100, span: float = 2.0) -> Policy:
    """A CartPole controller that wanders: see the module doc.

    :param n_envs: batch size of the observations it gets.
    :param seed: seeds the targets and the random actions.
    :param epsilon: probability of a uniformly random action.
    :param period: steps between target changes (each env changes at its own phase).
    :param span: targets are uniform in ``[-span, span]``.
    """
    if not 0 <= epsilon <= 1 or period < 1 or not 0 <= span <= 2.4:
        raise ConfigError(f"policy rlrm:cartpole_wander: expected 0 <= epsilon <= 1, period >= 1 and "
                          f"0 <= span <= 2.4, got epsilon={epsilon:g}, period={period:g}, span={span:g}")
    rng = np.random.default_rng(seed)
    period_steps = int(period)
    target = rng.uniform(-span, span, n_envs)
    clock = rng.integers(0, period_steps, n_envs)  # phases differ, so the envs do not all turn at once

    def act(obs: np.ndarray) -> np.ndarray:
        nonlocal target
        o = np.asarray(obs, dtype=np.float64).reshape(n_envs, 4)
        clock[:] += 1
        turn = clock % period_steps == 0
        target = np.where(turn, rng.uniform(-span, span, n_envs), target)
        u = (o - np.stack([target, *([np.zeros(n_envs)] * 3)], axis=1)) @ _WANDER_GAINS
        action = (u > 0).astype(np.int64)
        explore = rng.random(n_envs) < epsilon
        return np.where(explore, rng.integers(0, 2, n_envs), action)

    return act


def _is_cartpole(obs_space: spaces.Space, action_space: spaces.Space) -> bool:
    return (isinstance(obs_space, spaces.Box) and obs_space.shape == (4,) and isinstance(action_space, spaces.Discrete)
            and int(action_space.n) == 2)


#: name -> (factory(n_envs, seed, **kwargs), default kwargs, check of the (obs, action) spaces, what it needs)
BEHAVIOURS: dict[str, tuple[Callable[..., Policy], dict[str, float],
                            Callable[[spaces.Space, spaces.Space], bool], str]] = {
    "cartpole_wander": (cartpole_wander, {"epsilon": 0.1, "period": 100, "span": 2.0}, _is_cartpole,
                        "CartPole (Box(4,) observations, Discrete(2) actions)"),
}


def builtin_policy(spec: str, task: Task, n_envs: int, seed: int) -> Policy:
    """The behaviour policy named by ``spec`` (``rlrm:NAME`` or ``rlrm:NAME(key=value, ...)``) for ``task``.

    :raise ConfigError: an unknown name, a bad argument, or a task whose spaces the policy cannot drive.
    """
    try:
        name, kwargs = rewards.parse_spec(spec, "policy")
    except LabelError as err:
        raise ConfigError(str(err)) from None
    if name not in BEHAVIOURS:
        raise ConfigError(f"policy {spec!r}: unknown behaviour policy {name!r}; expected one of "
                          f"{', '.join(f'rlrm:{n}' for n in sorted(BEHAVIOURS))}")
    factory, defaults, fits, needs = BEHAVIOURS[name]
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ConfigError(f"policy {spec!r}: unexpected {unknown}; rlrm:{name} takes "
                          f"({', '.join(f'{k}={v:g}' for k, v in defaults.items())})")
    env = task.make_env()
    try:
        if not fits(env.observation_space, env.action_space):
            raise ConfigError(f"policy {spec!r}: task {task.name!r} ({task.env_id}) has observation space "
                              f"{env.observation_space} and action space {env.action_space}; expected {needs}")
    finally:
        env.close()
    return factory(n_envs, seed, **{**defaults, **kwargs})
