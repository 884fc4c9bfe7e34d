"""rlrm.model: the multi-task reward model, its NumPy inference path and its safetensors file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from safetensors.torch import save as st_save

from rlrm import model as rm
from rlrm import spaces as sp
from rlrm.data.dataset import TransitionDataset
from rlrm.errors import ConfigError, ModelFileError, SpaceError
from rlrm.model.network import ModelConfig, RewardModel
from rlrm.tasks import Task

DICT_OBS = spaces.Dict({"pos": spaces.Box(-1, 1, (3,), np.float32), "mode": spaces.Discrete(4, start=1),
                        "grid": spaces.MultiBinary([2, 2]),
                        "more": spaces.Tuple((spaces.MultiDiscrete([2, 3]), spaces.Box(0, 9, (2, 2), np.uint8)))})
DICT_ACT = spaces.Tuple((spaces.Discrete(3), spaces.Box(-1, 1, (2,), np.float32)))
DICT_TASK = Task("dict.task", "CartPole-v1")  # the env id is not used: the model only needs the spaces


def _scramble(model: RewardModel, seed: int = 0) -> RewardModel:
    """Non-trivial input standardization and label scales, as training would set them."""
    rng = np.random.default_rng(seed)
    for gid, group in model.groups.items():
        model.set_normalization(gid, rng.normal(size=group.dim), rng.uniform(0.5, 2.0, group.dim))
    for name in model.tasks:
        model.set_label_scale(name, float(rng.normal()), float(rng.uniform(0.5, 3.0)))
    return model.eval()


def _model(datasets: list[TransitionDataset], config: ModelConfig | None = None, dict_task: bool = False,
           seed: int = 0) -> RewardModel:
    torch.manual_seed(seed)
    model = RewardModel(config or ModelConfig(encoder=[32, 32]))
    for ds in datasets:
        model.add_task(ds.task, ds.obs_space, ds.action_space)
    if dict_task:
        model.add_task(DICT_TASK, DICT_OBS, DICT_ACT)
    return _scramble(model, seed)


def _batch(ds: TransitionDataset, n: int, start: int = 0) -> tuple[Any, Any, Any, np.ndarray]:
    sub = ds.subset(slice(start, start + n))
    return sub.obs, sub.action, sub.next_obs, sub.terminated


def _dict_batch(n: int, seed: int = 0) -> tuple[Any, Any, Any, np.ndarray]:
    DICT_OBS.seed(seed)
    DICT_ACT.seed(seed)
    obs = sp.stack(DICT_OBS, [DICT_OBS.sample() for _ in range(n)])
    act = sp.stack(DICT_ACT, [DICT_ACT.sample() for _ in range(n)])
    nxt = sp.stack(DICT_OBS, [DICT_OBS.sample() for _ in range(n)])
    return obs, act, nxt, np.arange(n) % 3 == 0


# --------------------------------------------------------------------------- structure and predict
def test_tasks_of_different_spaces_coexist(cartpole_ds: TransitionDataset, pendulum_ds: TransitionDataset) -> None:
    model = _model([cartpole_ds, pendulum_ds], dict_task=True)
    assert list(model.tasks) == ["CartPole-v1", "Pendulum-v1", "dict.task"]
    assert len(model.groups) == 3
    assert model.group_of("CartPole-v1").dim == 4 + 2 + 4 + 1  # obs, one-hot action, next_obs, done
    assert model.group_of("Pendulum-v1").dim == 3 + 1 + 3 + 1
    assert model.group_of("dict.task").dim == 2 * (3 + 4 + 4 + 5 + 4) + 3 + 2 + 1
    for ds, n in ((cartpole_ds, 17), (pendulum_ds, 5)):
        r = model.predict(ds.task.name, *_batch(ds, n))
        assert r.shape == (n,) and r.dtype == np.float32 and np.all(np.isfinite(r))
    r = model.predict("dict.task", *_dict_batch(9))
    assert r.shape == (9,) and r.dtype == np.float32


def test_same_spaces_share_an_input_group(pendulum_ds: TransitionDataset) -> None:
    model = _model([pendulum_ds])
    head = model.add_task(Task("Pendulum-v1/upright", "Pendulum-v1"), pendulum_ds.obs_space, pendulum_ds.action_space)
    assert head.group == model.tasks["Pendulum-v1"].group
    assert len(model.groups) == 1 and len(model.heads) == 2


def test_done_input_adds_a_feature(cartpole_ds: TransitionDataset) -> None:
    model = _model([cartpole_ds], ModelConfig(encoder=[16], inputs=["done", "obs"]))
    assert model.config.inputs == ["obs", "done"]
    assert model.group_of("CartPole-v1").dim == 5
    obs, act, nxt, _ = _batch(cartpole_ds, 4)
    a = model.predict("CartPole-v1", obs, act, nxt, np.zeros(4, bool))
    b = model.predict("CartPole-v1", obs, act, nxt, np.ones(4, bool))
    assert not np.allclose(a, b)


def test_predict_for_an_unknown_task_names_it(cartpole_ds: TransitionDataset) -> None:
    model = _model([cartpole_ds])
    with pytest.raises(ConfigError, match="Acrobot-v1") as err:
        model.predict("Acrobot-v1", *_batch(cartpole_ds, 3))
    assert "CartPole-v1" in str(err.value)  # and says which tasks it has
    with pytest.raises(ConfigError, match="Acrobot-v1"):
        model.reward_fn("Acrobot-v1")


def test_predict_with_wrong_shaped_obs_is_a_space_error(cartpole_ds, pendulum_ds) -> None:
    model = _model([cartpole_ds, pendulum_ds])
    obs, act, nxt, done = _batch(pendulum_ds, 6)
    with pytest.raises(SpaceError, match=r"obs.*\(n, 3\).*\(6, 4\)"):
        model.predict("Pendulum-v1", np.zeros((6, 4), np.float32), act, nxt, done)
    with pytest.raises(SpaceError, match="action"):
        model.predict("Pendulum-v1", obs, np.zeros((6, 2), np.float32), nxt, done)
    with pytest.raises(SpaceError):  # CartPole data for the Pendulum head
        model.predict("Pendulum-v1", *_batch(cartpole_ds, 6))
    with pytest.raises(SpaceError, match="lengths"):
        model.predict("Pendulum-v1", obs, act[:5], nxt, done)


@pytest.mark.parametrize("action", [2, 7, -1])
def test_out_of_range_discrete_action_is_a_space_error(cartpole_ds: TransitionDataset, action: int) -> None:
    model = _model([cartpole_ds])
    obs, act, nxt, done = _batch(cartpole_ds, 4)
    bad = act.copy()
    bad[1] = action
    with pytest.raises(SpaceError, match="outside"):
        model.predict("CartPole-v1", obs, bad, nxt, done)
    with pytest.raises(SpaceError, match="outside"):
        model.reward_fn("CartPole-v1")(obs, bad, nxt, done)


def test_duplicate_task_is_a_config_error(cartpole_ds: TransitionDataset) -> None:
    model = _model([cartpole_ds])
    with pytest.raises(ConfigError, match="CartPole-v1"):
        model.add_task(cartpole_ds.task, cartpole_ds.obs_space, cartpole_ds.action_space)


@pytest.mark.parametrize("kwargs", [{"encoder": []}, {"encoder": [0, 8]}, {"activation": "swish"},
                                    {"inputs": ["obs", "reward"]}, {"inputs": []}, {"inputs": ["obs", "obs"]}])
def test_bad_model_config(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ModelConfig(**kwargs)


def test_adding_a_task_later_leaves_encoder_and_other_tasks_untouched(cartpole_ds, pendulum_ds, acrobot_ds) -> None:
    model = _model([pendulum_ds])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pred = model.predict("Pendulum-v1", *_batch(pendulum_ds, 20))
    model.add_task(cartpole_ds.task, cartpole_ds.obs_space, cartpole_ds.action_space)
    model.add_task(acrobot_ds.task, acrobot_ds.obs_space, acrobot_ds.action_space)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert any(k.startswith("encoder.") for k in before)
    assert set(after) - set(before)  # new stems and heads
    np.testing.assert_array_equal(model.predict("Pendulum-v1", *_batch(pendulum_ds, 20)), pred)


# --------------------------------------------------------------------------- the NumPy path
@pytest.mark.parametrize("activation, layer_norm", [("relu", False), ("tanh", False), ("relu", True),
                                                    ("tanh", True), ("gelu", False), ("silu", True),
                                                    ("elu", False)])
def test_reward_fn_matches_predict(cartpole_ds, pendulum_ds, activation: str, layer_norm: bool) -> None:
    model = _model([cartpole_ds, pendulum_ds], ModelConfig(encoder=[32, 24, 16], activation=activation,
                                                           layer_norm=layer_norm), dict_task=True)
    for ds in (cartpole_ds, pendulum_ds):
        for dtype in ("float32", "float64"):
            fn = model.reward_fn(ds.task.name, dtype)
            for n, start in ((1, 0), (8, 3), (8, 50), (100, 200), (1, 7), (8, 11)):  # batch size changes re-plan
                batch = _batch(ds, n, start)
                out = fn(*batch)
                assert out.shape == (n,) and out.dtype == np.float32
                np.testing.assert_allclose(out, model.predict(ds.task.name, *batch), rtol=1e-5, atol=1e-5)
            obs, act, nxt, done = _batch(ds, 8)  # far outside the standardization: both paths clip alike
            far = (obs * 1e4, act * 1e4 if act.dtype.kind == "f" else act, -nxt * 1e4, done)
            np.testing.assert_allclose(fn(*far), model.predict(ds.task.name, *far), rtol=1e-5, atol=1e-5)
    fn = model.reward_fn("dict.task")
    for n, seed in ((1, 0), (13, 1), (13, 2)):
        batch = _dict_batch(n, seed)
        out = fn(*batch)
        assert out.shape == (n,) and out.dtype == np.float32
        np.testing.assert_allclose(out, model.predict("dict.task", *batch), rtol=1e-5, atol=1e-5)


def test_reward_fn_matches_predict_with_done_and_other_dtypes(cartpole_ds: TransitionDataset) -> None:
    model = _model([cartpole_ds], ModelConfig(encoder=[16, 16], activation="tanh",
                                              inputs=["obs", "action", "next_obs", "done"]))
    fn = model.reward_fn("CartPole-v1")
    obs, act, nxt, done = _batch(cartpole_ds, 30)
    for variant in [(obs, act, nxt, done), (obs.astype(np.float64), act.astype(np.int32), nxt, done.astype(float)),
                    (obs.tolist(), act.tolist(), nxt.tolist(), done.tolist())]:
        np.testing.assert_allclose(fn(*variant), model.predict("CartPole-v1", *variant), rtol=1e-5, atol=1e-5)


def _outcome(f: Any, *batch: Any) -> Any:
    try:
        return np.asarray(f(*batch))
    except SpaceError as e:
        return f"SpaceError: {e}"


def test_reward_fn_short_path_accepts_and_rejects_what_predict_does(cartpole_ds, pendulum_ds) -> None:
    """The short path skips checks that np.concatenate makes itself: every odd batch must still end as in predict."""
    model = _model([cartpole_ds, pendulum_ds])
    obs, act, nxt, done = _batch(cartpole_ds, 8)
    pobs, pact, pnxt, pdone = _batch(pendulum_ds, 8)
    cases = {
        "CartPole-v1": [
            (obs[:, :3], act, np.hstack([nxt, nxt[:, :1]]), done),  # widths 3 + 2 + 5: the right total
            (obs.astype(object), act, nxt, done), (obs.astype(np.complex64), act, nxt, done),
            (obs, act.astype(np.float32), nxt, done), (obs, act[:, None], nxt, done),
            (obs, act.astype(bool), nxt, done),
            (obs, act.astype(np.int32), nxt, done), (obs, act.astype(np.uint8), nxt, done), (obs, act[:7], nxt, done),
            (obs.astype(np.int64), act, nxt, done), (obs.astype(np.float16), act, nxt, done), (obs, act, nxt[:7], done),
            (obs.tolist(), act.tolist(), nxt.tolist(), done), (obs[:, :, None], act, nxt[:, :, None], done),
            (obs, np.where(act == 1, 2, act), nxt, done), (obs, np.int64(1), nxt, done), (obs[0], act[0], nxt[0], done),
        ],
        "Pendulum-v1": [
            (pobs[:, :2], np.hstack([pact, pact, pact]), pnxt[:, :2], pdone),  # widths 2 + 3 + 2: the right total
            (pobs, pact[:, 0], pnxt, pdone), (pobs, pact.astype(np.int8), pnxt, pdone), (pobs, pact, pnxt, pdone),
            (pobs.astype(str), pact, pnxt, pdone), (pobs, pact, pnxt.astype(np.float64), pdone),
        ],
    }
    for task, batches in cases.items():
        fn = model.reward_fn(task)
        for i, batch in enumerate(batches):
            expected, got = _outcome(model.predict, task, *batch), _outcome(fn, *batch)
            if isinstance(expected, str):
                assert got == expected, (task, i)
            else:
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"{task} case {i}")


def test_reward_fn_dtype_follows_the_standardization(pendulum_ds: TransitionDataset) -> None:
    """float32 (like torch) while |mean| / std stays moderate; float64 where folding would cancel large terms."""
    obs, act, nxt, done = _batch(pendulum_ds, 64)
    model = _model([pendulum_ds], ModelConfig(inputs=["obs", "action", "next_obs"]))
    gid = model.tasks["Pendulum-v1"].group
    rng = np.random.default_rng(1)
    for offset, dtype in ((0.0, np.float32), (8.0, np.float32), (50.0, np.float64)):
        std = np.exp(rng.uniform(np.log(0.1), np.log(10.0), 7))
        model.set_normalization(gid, offset * std * rng.choice([-1.0, 1.0], 7), std)
        model.set_label_scale("Pendulum-v1", -6.0, 3.5)  # Pendulum's labels
        fn = model.reward_fn("Pendulum-v1")
        assert fn.dtype == dtype, offset
        mean = model.normalization(gid)[0].numpy()
        # inputs around the standardization's mean, a few std away, as real data would be
        o, a, n_ = ((mean[i] + std[i] * rng.normal(0, 1.5, (64, i.stop - i.start))).astype(np.float32)
                    for i in (slice(0, 3), slice(3, 4), slice(4, 7)))
        expected = model.predict("Pendulum-v1", o, a, n_, done)
        np.testing.assert_allclose(fn(o, a, n_, done), expected, rtol=1e-5, atol=1e-5)
    # actions within 0.5 +- 1e-4 in the data: std at its floor (1e-3 of |mean| + range), |mean| / std ~1000
    const = np.full_like(act, 0.5)
    low, high = np.r_[obs.min(0), 0.5 - 1e-4, nxt.min(0)], np.r_[obs.max(0), 0.5 + 1e-4, nxt.max(0)]
    model.set_normalization(gid, np.r_[obs.mean(0), 0.5, nxt.mean(0)], np.r_[obs.std(0), 1e-6, nxt.std(0)], low, high)
    assert model.normalization(gid)[1][3] == pytest.approx(1e-3 * (0.5 + 2e-4))
    exact = model.predict("Pendulum-v1", obs, const, nxt, done)
    fn = model.reward_fn("Pendulum-v1")
    assert fn.dtype == np.float64
    np.testing.assert_allclose(fn(obs, const, nxt, done), exact, rtol=1e-5, atol=1e-5)
    assert model.reward_fn("Pendulum-v1", dtype="float32").dtype == np.float32
    # exactly 0.5 in the data: a constant feature, folded into the bias (float32 again); no action moves the reward
    low[3] = high[3] = 0.5
    model.set_normalization(gid, np.r_[obs.mean(0), 0.5, nxt.mean(0)], np.r_[obs.std(0), 0.0, nxt.std(0)], low, high)
    fn = model.reward_fn("Pendulum-v1")
    assert fn.dtype == np.float32
    for a in (0.5, -2.0, 2.0, 1e6):
        other = np.full_like(act, a)
        np.testing.assert_allclose(fn(obs, other, nxt, done), exact, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(model.predict("Pendulum-v1", obs, other, nxt, done), exact)
    with pytest.raises(ValueError, match="dtype"):
        model.reward_fn("Pendulum-v1", dtype="float16")


def test_reward_fn_is_a_snapshot(pendulum_ds: TransitionDataset) -> None:
    model = _model([pendulum_ds])
    fn = model.reward_fn("Pendulum-v1")
    batch = _batch(pendulum_ds, 10)
    first = fn(*batch).copy()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    np.testing.assert_array_equal(fn(*batch), first)
    assert not np.allclose(model.predict("Pendulum-v1", *batch), first)
    assert fn.observation_space == pendulum_ds.obs_space and fn.action_space == pendulum_ds.action_space


# --------------------------------------------------------------------------- save / load
def test_save_load_round_trip_gives_identical_predictions(cartpole_ds, pendulum_ds, tmp_path: Path) -> None:
    model = _model([cartpole_ds, pendulum_ds], ModelConfig(encoder=[24, 16], activation="tanh", layer_norm=True),
                   dict_task=True)
    model.meta["note"] = {"hello": [1, 2]}
    path = rm.save(model, tmp_path / "m.safetensors")
    loaded = rm.load(path)
    assert loaded.config == model.config
    assert list(loaded.tasks) == list(model.tasks)
    assert loaded.meta["note"] == {"hello": [1, 2]}
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    for ds in (cartpole_ds, pendulum_ds):
        batch = _batch(ds, 50)
        np.testing.assert_array_equal(loaded.predict(ds.task.name, *batch), model.predict(ds.task.name, *batch))
        np.testing.assert_array_equal(loaded.reward_fn(ds.task.name)(*batch), model.reward_fn(ds.task.name)(*batch))
    batch = _dict_batch(7)
    np.testing.assert_array_equal(loaded.predict("dict.task", *batch), model.predict("dict.task", *batch))
    desc = rm.read_description(path)
    assert desc["rlrm_version"] and desc["format"] == "rlrm.reward_model"
    assert desc["config"]["activation"] == "tanh"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp leftovers


@pytest.fixture
def model_file(cartpole_ds: TransitionDataset, pendulum_ds: TransitionDataset, tmp_path: Path) -> Path:
    return rm.save(_model([cartpole_ds, pendulum_ds]), tmp_path / "model.safetensors")


def _load_error(path: Path) -> str:
    with pytest.raises(ModelFileError) as err:
        rm.load(path)
    assert str(path) in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("keep", [0, 4, 9, 100, 0.5, -1])
def test_truncated_file(model_file: Path, keep: float) -> None:
    data = model_file.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    model_file.write_bytes(data[:n])
    _load_error(model_file)


@pytest.mark.parametrize("size", [8, 100, 10_000])
def test_random_bytes(tmp_path: Path, size: int) -> None:
    path = tmp_path / "random.safetensors"
    path.write_bytes(np.random.default_rng(size).bytes(size))
    _load_error(path)


def test_small_header_length_with_garbage(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes((20).to_bytes(8, "little") + b"\xff" * 40)
    _load_error(path)


@pytest.mark.parametrize("metadata", [None, {"other": "x"}, {"rlrm": "not json"}, {"rlrm": "[1, 2]"}])
def test_safetensors_without_rlrm_metadata(tmp_path: Path, metadata: dict | None) -> None:
    path = tmp_path / "plain.safetensors"
    path.write_bytes(st_save({"w": torch.zeros(3)}, metadata=metadata))
    assert "rlrm" in _load_error(path)


def _rewrite_description(path: Path, **changes: Any) -> None:
    """Rewrite the file with ``changes`` to its description (weights from a fresh load of the original)."""
    original = path.with_name("original.safetensors")
    if not original.exists():
        original.write_bytes(path.read_bytes())
    tensors = {k: v.contiguous() for k, v in rm.load(original).state_dict().items()}
    desc = {**rm.read_description(original), **changes}
    path.write_bytes(st_save(tensors, metadata={"rlrm": json.dumps(desc)}))


def test_newer_model_format_version(model_file: Path) -> None:
    _rewrite_description(model_file, format_version=99)
    msg = _load_error(model_file)
    assert "format_version" in msg and "99" in msg


def test_other_format(model_file: Path) -> None:
    _rewrite_description(model_file, format="something.else")
    assert "something.else" in _load_error(model_file)


def test_malformed_description(model_file: Path) -> None:
    _rewrite_description(model_file, config={"encoder": [8], "activation": "nope"})
    _load_error(model_file)
    _rewrite_description(model_file, tasks={"x": {"group": "g9"}})
    _load_error(model_file)


def test_weights_that_do_not_match_the_description(model_file: Path) -> None:
    desc = rm.read_description(model_file)
    tensors = {k: v.contiguous() for k, v in rm.load(model_file).state_dict().items()}
    first_head = next(k for k in tensors if k.startswith("heads."))
    wrong = {**tensors, first_head: torch.zeros(5, 5)}
    model_file.write_bytes(st_save(wrong, metadata={"rlrm": json.dumps(desc)}))
    assert first_head in _load_error(model_file)
    del wrong[first_head]
    model_file.write_bytes(st_save(wrong, metadata={"rlrm": json.dumps(desc)}))
    assert "missing" in _load_error(model_file)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert "not found" in _load_error(tmp_path / "nope.safetensors")
    assert "directory" in _load_error(tmp_path)
