"""EPIC reward distance (rlrm.metrics.epic_distance) on real transitions: invariances, opposites, unrelated rewards,
Dict observations (by hand, and from rlrm/PointGoal-v0 through a model's NumPy reward function), batched calls."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from rlrm.data.dataset import TransitionDataset
from rlrm.data.rollout import collect
from rlrm.errors import RewardError
from rlrm.metrics import epic_distance, pearson_distance
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.rewards import true_reward_fn
from rlrm.tasks import Catalog

GAMMA = 0.99


def pendulum_reward(obs: np.ndarray, action: np.ndarray, next_obs: Any, done: np.ndarray) -> np.ndarray:
    """Pendulum-v1's own reward as a function of the transition."""
    theta = np.arctan2(obs[:, 1], obs[:, 0])
    torque = np.clip(action[:, 0], -2.0, 2.0)
    return -(theta**2 + 0.1 * obs[:, 2] ** 2 + 0.001 * torque**2)


def potential(obs: np.ndarray) -> np.ndarray:
    return 3.0 * obs[:, 0] + 20.0 * np.sin(obs[:, 2]) - obs[:, 1] ** 2


def unrelated(obs: np.ndarray, action: Any, next_obs: np.ndarray, done: np.ndarray) -> np.ndarray:
    """A fixed function of the transition that behaves like independent noise (a fast-oscillating projection)."""
    x = np.concatenate([obs, np.asarray(action, np.float64).reshape(len(obs), -1), next_obs], axis=1)
    w = np.random.default_rng(123).normal(size=x.shape[1])
    return np.sin(1e4 * (x @ w))


def _epic(ds: TransitionDataset, a: Any, b: Any, **kwargs: Any) -> float:
    return epic_distance(a, b, ds.obs, ds.action, ds.next_obs, ds.terminated, gamma=GAMMA, **kwargs)


def test_the_pendulum_reward_here_is_the_envs(pendulum_ds: TransitionDataset) -> None:
    r = pendulum_reward(pendulum_ds.obs, pendulum_ds.action, pendulum_ds.next_obs, pendulum_ds.terminated)
    np.testing.assert_allclose(r, pendulum_ds.env_reward, atol=1e-4)


def test_potential_shaping_gives_zero(pendulum_ds: TransitionDataset) -> None:
    def shaped(o: np.ndarray, a: np.ndarray, n: np.ndarray, d: np.ndarray) -> np.ndarray:
        return pendulum_reward(o, a, n, d) + GAMMA * potential(n) - potential(o)

    # both rewards see the same samples, so the shaping cancels exactly (up to a constant), not only in expectation
    assert _epic(pendulum_ds, pendulum_reward, shaped) < 1e-3
    # the raw rewards are far apart: the canonicalization is what removes the shaping
    assert pearson_distance(pendulum_reward(pendulum_ds.obs, pendulum_ds.action, None, None),
                            shaped(pendulum_ds.obs, pendulum_ds.action, pendulum_ds.next_obs, None)) > 0.1


def test_positive_affine_map_gives_zero_and_negation_one(pendulum_ds: TransitionDataset) -> None:
    assert _epic(pendulum_ds, pendulum_reward, lambda o, a, n, d: 3.0 * pendulum_reward(o, a, n, d) + 5.0) < 1e-3
    assert _epic(pendulum_ds, pendulum_reward, lambda o, a, n, d: -pendulum_reward(o, a, n, d)) > 0.999


@pytest.mark.parametrize("seed", [0, 1])
def test_unrelated_reward_gives_sqrt_half(pendulum_ds: TransitionDataset, seed: int) -> None:
    assert abs(_epic(pendulum_ds, pendulum_reward, unrelated, seed=seed) - math.sqrt(0.5)) < 0.05


def test_constant_reward_gives_nan(pendulum_ds: TransitionDataset) -> None:
    assert math.isnan(_epic(pendulum_ds, pendulum_reward, lambda o, a, n, d: np.full(len(d), 2.5)))


def test_discrete_actions_and_terminations(cartpole_ds: TransitionDataset) -> None:
    assert cartpole_ds.terminated.any()

    def reward(o: np.ndarray, a: np.ndarray, n: np.ndarray, d: np.ndarray) -> np.ndarray:
        return -np.abs(n[:, 0]) - 0.5 * np.abs(n[:, 2]) + 0.1 * a - 2.0 * d

    def shaped(o: np.ndarray, a: np.ndarray, n: np.ndarray, d: np.ndarray) -> np.ndarray:
        return 2.0 * reward(o, a, n, d) + GAMMA * n[:, 1] ** 2 - o[:, 1] ** 2

    assert _epic(cartpole_ds, reward, shaped) < 1e-3
    assert _epic(cartpole_ds, reward, lambda o, a, n, d: -reward(o, a, n, d)) > 0.999


def test_dict_observations() -> None:
    rng = np.random.default_rng(0)
    n = 600
    pos, vel = rng.uniform(-1, 1, (n + 1, 2)), rng.normal(size=(n + 1, 1))
    obs = {"pos": pos[:-1], "vel": vel[:-1]}
    next_obs = {"pos": pos[1:], "vel": vel[1:]}
    action = rng.integers(0, 3, n)
    done = np.zeros(n, bool)

    def reward(o: dict, a: np.ndarray, nx: dict, d: np.ndarray) -> np.ndarray:
        return -np.linalg.norm(nx["pos"], axis=1) + 0.2 * nx["vel"][:, 0] * (a - 1)

    def phi(o: dict) -> np.ndarray:
        return o["pos"][:, 0] * o["vel"][:, 0]

    def shaped(o: dict, a: np.ndarray, nx: dict, d: np.ndarray) -> np.ndarray:
        return reward(o, a, nx, d) + GAMMA * phi(nx) - phi(o)

    def dist(b: Any) -> float:
        return epic_distance(reward, b, obs, action, next_obs, done, gamma=GAMMA, max_transitions=400)

    assert dist(shaped) < 1e-3
    assert dist(lambda o, a, nx, d: -reward(o, a, nx, d)) > 0.999
    assert 0.3 < dist(lambda o, a, nx, d: np.sin(1e4 * (o["pos"][:, 0] + 3 * nx["pos"][:, 1] + a))) < 0.9


def test_rewards_are_called_in_few_large_batches(pendulum_ds: TransitionDataset) -> None:
    calls: list[int] = []

    def counted(o: np.ndarray, a: np.ndarray, n: np.ndarray, d: np.ndarray) -> np.ndarray:
        calls.append(len(d))
        return pendulum_reward(o, a, n, d)

    _epic(pendulum_ds, counted, unrelated)
    assert len(calls) <= 8, calls
    assert sum(calls) >= 2 * 1000 * 64  # the default sizes: every measured transition against every sample


def test_a_reward_of_the_wrong_shape_is_named(pendulum_ds: TransitionDataset) -> None:
    with pytest.raises(RewardError, match="reward_b: expected rewards of shape"):
        _epic(pendulum_ds, pendulum_reward, lambda o, a, n, d: np.zeros((len(d), 1)))


def test_pearson_distance() -> None:
    x = np.random.default_rng(0).normal(size=100)
    assert pearson_distance(x, 2 * x + 1) == pytest.approx(0.0, abs=1e-6)
    assert pearson_distance(x, -x) == pytest.approx(1.0)
    assert math.isnan(pearson_distance(x, np.ones(100)))
    assert math.isnan(pearson_distance(x[:1], x[:1]))
    with pytest.raises(ValueError):
        pearson_distance(x, x[:5])


def test_dict_observations_of_a_real_env_and_a_models_reward_fn(catalog: Catalog) -> None:
    ds = collect(catalog.task("PointGoal-v0/goal045"), 800, n_envs=4, seed=0, progress=False)
    assert isinstance(ds.obs, dict)
    truth = true_reward_fn(ds.label_source, ds.task.env_id)
    assert truth is not None
    np.testing.assert_allclose(truth(ds.obs, ds.action, ds.next_obs, ds.terminated), ds.label, atol=1e-5)

    def phi(o: dict[str, np.ndarray]) -> np.ndarray:
        return 5.0 * o["position"][:, 0] * o["velocity"][:, 1] + o["velocity"][:, 0]

    def shaped(o: Any, a: Any, n: Any, d: np.ndarray) -> np.ndarray:
        return 0.5 * truth(o, a, n, d) + GAMMA * phi(n) - phi(o)

    assert _epic(ds, truth, shaped) < 1e-3
    assert _epic(ds, truth, lambda o, a, n, d: -truth(o, a, n, d)) > 0.999
    model = RewardModel(ModelConfig(encoder=[16, 16]))
    model.add_task(ds.task, ds.obs_space, ds.action_space)
    assert 0.0 < _epic(ds, model.reward_fn(ds.task.name), truth) < 1.0
