"""rlrm.model.compiled: the numba kernel of the default reward network gives the NumPy path's numbers (and torch's),
declines what it is not for (which then gets the NumPy path's answer or error), and falls back if it fails."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlrm.errors import SpaceError
from rlrm.model import compiled
from rlrm.model.ensemble import RewardEnsemble
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.tasks import Task

CARTPOLE = (spaces.Box(-np.inf, np.inf, (4,), np.float32), spaces.Discrete(2))
PENDULUM = (spaces.Box(-8.0, 8.0, (3,), np.float32), spaces.Box(-2.0, 2.0, (1,), np.float32))


def _model(obs_space: spaces.Space, action_space: spaces.Space, seed: int = 0, label_mean: float = 0.5,
           **config: object) -> tuple[RewardModel, str]:
    """A default model with a random standardization and label scale (as training leaves them)."""
    torch.manual_seed(seed)
    model = RewardModel(ModelConfig(**config))  # type: ignore[arg-type]
    task = Task("t", "CartPole-v1")  # only the spaces matter
    model.add_task(task, obs_space, action_space)
    rng = np.random.default_rng(seed)
    gid = model.tasks["t"].group
    dim = model.groups[gid].dim
    model.set_normalization(gid, rng.normal(size=dim), rng.uniform(0.5, 2.0, dim))
    model.set_label_scale("t", label_mean + seed, 3.0)
    return model.eval(), "t"


def _batch(obs_space: spaces.Space, action_space: spaces.Space, n: int, seed: int = 1) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    d = obs_space.shape[0]
    obs, nxt = (rng.normal(scale=2.0, size=(n, d)).astype(np.float32) for _ in range(2))
    if isinstance(action_space, spaces.Discrete):
        action = rng.integers(0, action_space.n, n)
    else:
        action = rng.uniform(-2, 2, (n, action_space.shape[0])).astype(np.float32)
    return obs, action, nxt, rng.random(n) < 0.3


def test_numba_is_there() -> None:
    assert compiled.available(), "numba is a dependency: the wrappers' fast path needs it"


@pytest.mark.parametrize("space_pair", [CARTPOLE, PENDULUM], ids=["discrete", "box"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernel_matches_numpy_and_torch(space_pair: tuple[spaces.Space, spaces.Space], dtype: str) -> None:
    model, task = _model(*space_pair)
    fast, slow = model.reward_fn(task, dtype), model.reward_fn(task, dtype, compiled=False)
    assert fast.compiled and not slow.compiled
    for n in (1, 8, compiled.MAX_ROWS):
        batch = _batch(*space_pair, n)
        y = fast(*batch)
        assert y.dtype == np.float32 and y.shape == (n,)
        assert y.flags.writeable  # SB3 adds the bootstrapped value to the rewards in place
        np.testing.assert_allclose(y, slow(*batch), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(y, model.predict(task, *batch), rtol=1e-5, atol=1e-5)
    # a larger batch (EPIC, a replay buffer) takes the NumPy path: the very same numbers
    big = _batch(*space_pair, compiled.MAX_ROWS + 1)
    np.testing.assert_array_equal(fast(*big), slow(*big))
    # float64 observations (MuJoCo's) and float flags take the kernel too
    obs, action, nxt, done = _batch(*space_pair, 8)
    wide = (obs.astype(np.float64), action, nxt.astype(np.float64), done.astype(np.float32))
    np.testing.assert_allclose(fast(*wide), slow(*wide), rtol=1e-6, atol=1e-6)


def test_kernel_without_done_input_and_deeper_network() -> None:
    model, task = _model(*CARTPOLE, encoder=[32, 16, 8], inputs=["obs", "action", "next_obs"])
    fast, slow = model.reward_fn(task), model.reward_fn(task, compiled=False)
    assert fast.compiled
    batch = _batch(*CARTPOLE, 16)
    np.testing.assert_allclose(fast(*batch), slow(*batch), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fast(*batch), model.predict(task, *batch), rtol=1e-5, atol=1e-5)


def test_ensemble_kernel_mean_and_std() -> None:
    # members with a large label mean: the std must not lose its digits to it
    ens = RewardEnsemble([_model(*CARTPOLE, seed=s, label_mean=1000.0)[0] for s in range(3)])
    fast, slow = ens.reward_fn("t"), ens.reward_fn("t", compiled=False)
    assert fast.compiled and not slow.compiled
    batch = _batch(*CARTPOLE, 8)
    mean, std = fast.with_std(*batch)
    assert mean.flags.writeable and std.flags.writeable
    ref_mean, ref_std = ens.predict("t", *batch, return_std=True)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
    np.testing.assert_allclose(std, ref_std, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast(*batch), mean)
    assert (std > 0).all()
    np.testing.assert_allclose(std, slow.with_std(*batch)[1], rtol=1e-4, atol=1e-4)


def test_declined_batches_get_the_numpy_answer_or_error() -> None:
    model, task = _model(*CARTPOLE)
    fast, slow = model.reward_fn(task), model.reward_fn(task, compiled=False)
    obs, action, nxt, done = _batch(*CARTPOLE, 8)
    # lists and other integer dtypes: declined by the kernel, answered by the NumPy path
    for args in ((obs.tolist(), action.tolist(), nxt.tolist(), done.tolist()),
                 (obs, action.astype(np.int32), nxt, done)):
        np.testing.assert_allclose(fast(*args), slow(*args), rtol=1e-6, atol=1e-6)
    # an action out of range: the kernel declines, the NumPy path raises its error
    bad = action.copy()
    bad[3] = 2
    with pytest.raises(SpaceError) as fast_err:
        fast(obs, bad, nxt, done)
    with pytest.raises(SpaceError) as slow_err:
        slow(obs, bad, nxt, done)
    assert str(fast_err.value) == str(slow_err.value)
    with pytest.raises(SpaceError):
        fast(obs, np.full(8, -1), nxt, done)
    # mismatched rows: an error, not a silent broadcast
    with pytest.raises(SpaceError):
        fast(obs, action, nxt[:5], done)
    # NaN in, NaN out (the wrappers turn it into a clear error)
    nan_obs = obs.copy()
    nan_obs[0, 0] = np.nan
    assert np.isnan(fast(nan_obs, action, nxt, done)[0])


def test_kernel_only_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    tanh, task = _model(*CARTPOLE, activation="tanh")
    assert not tanh.reward_fn(task).compiled
    norm, task = _model(*CARTPOLE, layer_norm=True)
    assert not norm.reward_fn(task).compiled
    symlog, task = _model(*CARTPOLE)
    symlog.tasks[task].label_transform = "symlog"
    assert not symlog.reward_fn(task).compiled
    dict_obs = spaces.Dict({"position": spaces.Box(-1, 1, (2,)), "velocity": spaces.Box(-1, 1, (2,))})
    point, task = _model(dict_obs, spaces.Box(-1, 1, (2,)))
    assert not point.reward_fn(task).compiled
    monkeypatch.setattr(compiled.numba.config, "DISABLE_JIT", True)
    plain, task = _model(*CARTPOLE)
    assert not compiled.available() and not plain.reward_fn(task).compiled


def test_a_failing_kernel_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> np.ndarray:
        raise RuntimeError("cannot cache function: no writable location")

    monkeypatch.setattr(compiled, "_mean_discrete", broken)
    model, task = _model(*CARTPOLE)
    fast, slow = model.reward_fn(task), model.reward_fn(task, compiled=False)
    batch = _batch(*CARTPOLE, 8)
    with pytest.warns(RuntimeWarning, match="compiled reward kernel failed"):
        first = fast(*batch)
    np.testing.assert_allclose(first, slow(*batch), rtol=1e-6, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(fast(*batch), first)
