"""rlrm.spaces: feature dimensions and values per space type, JSON round trips, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gymnasium import spaces

from rlrm import spaces as sp
from rlrm.errors import SpaceError


def _features(space: spaces.Space, samples: list) -> np.ndarray:
    out = sp.SpaceAdapter(space, "obs").transform(sp.stack(space, samples))
    assert out.dtype == np.float32
    return out


# --------------------------------------------------------------------------- Box
@pytest.mark.parametrize("shape, dtype", [((3,), np.float32), ((), np.float64), ((2, 3), np.float32),
                                          ((8, 8, 3), np.uint8), ((4,), np.int64), ((2, 2), np.int32)])
def test_box_features_are_the_flattened_values(shape: tuple[int, ...], dtype: type) -> None:
    space = spaces.Box(0, 200, shape=shape, dtype=dtype, seed=1)
    samples = [space.sample() for _ in range(5)]
    adapter = sp.SpaceAdapter(space)
    dim = int(np.prod(shape)) if shape else 1
    assert adapter.dim == dim
    assert adapter.continuous.tolist() == [True] * dim
    out = adapter.transform(np.stack(samples))
    assert out.shape == (5, dim)
    np.testing.assert_array_equal(out, np.stack(samples).reshape(5, dim).astype(np.float32))


def test_image_box_keeps_pixel_order() -> None:
    space = spaces.Box(0, 255, shape=(2, 3, 4), dtype=np.uint8)
    img = np.arange(24, dtype=np.uint8).reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(sp.SpaceAdapter(space).transform(img)[0], np.arange(24))


# --------------------------------------------------------------------------- discrete types
@pytest.mark.parametrize("start", [0, -2, 5])
def test_discrete_is_one_hot_relative_to_start(start: int) -> None:
    space = spaces.Discrete(4, start=start)
    out = _features(space, [start + 2, start, start + 3])
    np.testing.assert_array_equal(out, np.eye(4)[[2, 0, 3]])
    assert sp.SpaceAdapter(space).continuous.tolist() == [False] * 4


@pytest.mark.parametrize("start, bad", [(0, [4]), (0, [7, 0]), (0, [-1]), (0, [0, -2]), (5, [4]), (5, [9]), (-2, [-3])])
def test_discrete_values_outside_the_space_are_an_error(start: int, bad: list[int]) -> None:
    # a value just below ``start`` must not wrap around to the last category
    with pytest.raises(SpaceError, match="outside"):
        sp.SpaceAdapter(spaces.Discrete(4, start=start)).transform(np.array(bad))


def test_discrete_rejects_floats() -> None:
    with pytest.raises(SpaceError, match="integers"):
        sp.SpaceAdapter(spaces.Discrete(3), "action").transform(np.array([0.0, 1.0]))


def test_multi_discrete_is_concatenated_one_hots() -> None:
    space = spaces.MultiDiscrete([2, 3, 4])
    out = _features(space, [np.array([1, 2, 0]), np.array([0, 0, 3])])
    np.testing.assert_array_equal(out, [[0, 1, 0, 0, 1, 1, 0, 0, 0], [1, 0, 1, 0, 0, 0, 0, 0, 1]])


def test_multi_discrete_with_start_and_2d_nvec() -> None:
    space = spaces.MultiDiscrete(np.array([[2, 3], [2, 2]]), start=np.array([[1, -1], [0, 10]]))
    adapter = sp.SpaceAdapter(space)
    assert adapter.dim == 9
    out = adapter.transform(np.array([[[2, -1], [1, 10]]]))
    np.testing.assert_array_equal(out[0], [0, 1, 1, 0, 0, 0, 1, 1, 0])
    with pytest.raises(SpaceError, match="outside"):
        adapter.transform(np.array([[[0, 0], [0, 10]]]))  # 0 is below start 1


@pytest.mark.parametrize("n, dim", [(5, 5), ([2, 3], 6)])
def test_multi_binary_is_its_bits(n: int | list[int], dim: int) -> None:
    space = spaces.MultiBinary(n, seed=0)
    samples = [space.sample() for _ in range(3)]
    out = _features(space, samples)
    assert out.shape == (3, dim)
    np.testing.assert_array_equal(out, np.stack(samples).reshape(3, dim))


# --------------------------------------------------------------------------- composites
NESTED = spaces.Dict({
    "pos": spaces.Box(-1, 1, (2,)),
    "inner": spaces.Tuple((spaces.Discrete(3), spaces.Dict({"bits": spaces.MultiBinary(2)}))),
    "img": spaces.Box(0, 255, (2, 2), np.uint8),
})


def test_nested_dict_tuple_features_are_parts_in_space_order() -> None:
    adapter = sp.SpaceAdapter(NESTED)
    # gymnasium sorts Dict keys: img (4), inner = (Discrete 3, bits 2), pos (2)
    assert list(NESTED.spaces) == ["img", "inner", "pos"]
    assert adapter.dim == 4 + 3 + 2 + 2
    assert adapter.continuous.tolist() == [True] * 4 + [False] * 5 + [True] * 2
    sample = {"img": np.array([[1, 2], [3, 4]], np.uint8), "inner": (2, {"bits": np.array([1, 0], np.int8)}),
              "pos": np.array([0.5, -0.25], np.float32)}
    out = adapter.transform(sp.add_batch_dim(NESTED, sample))
    np.testing.assert_array_equal(out, [[1, 2, 3, 4, 0, 0, 1, 1, 0, 0.5, -0.25]])


def test_nested_batch_of_many_samples() -> None:
    NESTED.seed(3)
    samples = [NESTED.sample() for _ in range(7)]
    out = sp.SpaceAdapter(NESTED).transform(sp.stack(NESTED, samples))
    assert out.shape == (7, 11)
    for row, s in zip(out, samples):
        np.testing.assert_array_equal(row[:4], s["img"].reshape(-1))
        assert row[4:7].argmax() == s["inner"][0] and row[4:7].sum() == 1
        np.testing.assert_array_equal(row[7:9], s["inner"][1]["bits"])
        np.testing.assert_allclose(row[9:], s["pos"])


def test_composite_batch_missing_a_part_is_a_space_error() -> None:
    with pytest.raises(SpaceError, match="Dict"):
        sp.SpaceAdapter(NESTED, "obs").transform({"pos": np.zeros((1, 2))})


def test_composite_parts_of_different_lengths_are_a_space_error() -> None:
    space = spaces.Dict({"a": spaces.Box(0, 1, (2,)), "b": spaces.Discrete(2)})
    with pytest.raises(SpaceError, match="different lengths"):
        sp.SpaceAdapter(space).transform({"a": np.zeros((3, 2)), "b": np.zeros(2, np.int64)})


def test_split_join_and_leaves_are_inverse() -> None:
    NESTED.seed(0)
    batch = sp.stack(NESTED, [NESTED.sample() for _ in range(4)])
    arrays = sp.split(NESTED, batch, "obs")
    assert sorted(arrays) == sorted(name for name, _ in sp.leaves(NESTED, "obs"))
    assert sorted(arrays) == ["obs.img", "obs.inner.0", "obs.inner.1.bits", "obs.pos"]
    back = sp.join(NESTED, arrays, "obs")
    a = sp.SpaceAdapter(NESTED)
    np.testing.assert_array_equal(a.transform(back), a.transform(batch))


# --------------------------------------------------------------------------- JSON
ROUND_TRIP = [
    spaces.Box(-np.inf, np.inf, (3,), np.float32),
    spaces.Box(np.array([-1.0, 0.0, -5.0]), np.array([1.0, 2.0, np.inf]), dtype=np.float64),
    spaces.Box(0, 255, (4, 4, 3), np.uint8),
    spaces.Box(-3, 3, (), np.int64),
    spaces.Discrete(5, start=-2),
    spaces.MultiDiscrete([3, 4], start=[1, 0]),
    spaces.MultiBinary([2, 3]),
    NESTED,
    spaces.Tuple((spaces.Discrete(2), spaces.Box(0, 1, (1,)))),
]


@pytest.mark.parametrize("space", ROUND_TRIP, ids=lambda s: type(s).__name__)
def test_json_round_trip(space: spaces.Space) -> None:
    text = json.dumps(sp.space_to_json(space), allow_nan=False)  # strict JSON: infinities are strings
    back = sp.space_from_json(json.loads(text))
    assert back == space
    assert sp.space_signature(back) == sp.space_signature(space)
    assert sp.SpaceAdapter(back).dim == sp.SpaceAdapter(space).dim


def test_signature_includes_bounds_but_layout_does_not() -> None:
    a, b = spaces.Box(-1, 1, (3,), np.float32), spaces.Box(-2, 2, (3,), np.float64)
    assert sp.space_signature(a) != sp.space_signature(b)
    assert sp.layout(a) == sp.layout(b)
    sp.check_compatible(a, b, "obs")
    with pytest.raises(SpaceError, match="obs"):
        sp.check_compatible(a, spaces.Box(-1, 1, (4,)), "obs")


@pytest.mark.parametrize("bad", [{"type": "Box"}, {"type": "Nope"}, {"type": "Discrete", "n": "x"}, {}])
def test_malformed_space_json_is_a_space_error(bad: dict) -> None:
    with pytest.raises(SpaceError):
        sp.space_from_json(bad)


# --------------------------------------------------------------------------- unsupported spaces and misfits
UNSUPPORTED = [
    (spaces.Text(5), "Text"),
    (spaces.Graph(spaces.Box(0, 1, (2,)), spaces.Discrete(2)), "Graph"),
    (spaces.Sequence(spaces.Discrete(3)), "Sequence"),
    (spaces.Dict({"ok": spaces.Discrete(2), "words": spaces.Text(3)}), "Text"),
    (spaces.Tuple((spaces.Box(0, 1, (1,)), spaces.Sequence(spaces.Discrete(2)))), "Sequence"),
]


@pytest.mark.parametrize("space, name", UNSUPPORTED, ids=[n for _, n in UNSUPPORTED])
def test_unsupported_spaces_raise_a_space_error_naming_the_space(space: spaces.Space, name: str) -> None:
    with pytest.raises(SpaceError, match=name) as err:
        sp.SpaceAdapter(space, "obs")
    assert "Box" in str(err.value)  # says what is supported
    with pytest.raises(SpaceError, match=name):
        sp.space_to_json(space)


@pytest.mark.parametrize("space, batch, expected, got", [
    (spaces.Box(0, 1, (3,)), np.zeros((4, 2)), "(n, 3)", "(4, 2)"),
    (spaces.Box(0, 1, (2, 2)), np.zeros((5, 4)), "(n, 2, 2)", "(5, 4)"),
    (spaces.MultiBinary(3), np.zeros((2, 4), np.int8), "(n, 3)", "(2, 4)"),
    (spaces.MultiDiscrete([2, 2]), np.zeros((6, 3), np.int64), "(n, 2)", "(6, 3)"),
    (spaces.Discrete(3), np.zeros((2, 3), np.int64), "(n,)", "(2, 3)"),
])
def test_wrong_shaped_batch_names_both_shapes(space: spaces.Space, batch: np.ndarray, expected: str, got: str) -> None:
    with pytest.raises(SpaceError) as err:
        sp.SpaceAdapter(space, "obs").transform(batch)
    msg = str(err.value)
    assert msg.startswith("obs")
    assert expected in msg and got in msg


def test_wrong_shape_inside_a_dict_names_the_key() -> None:
    space = spaces.Dict({"pos": spaces.Box(0, 1, (2,)), "vel": spaces.Box(0, 1, (3,))})
    with pytest.raises(SpaceError, match=r"obs\['vel'\].*\(n, 3\).*\(4, 2\)"):
        sp.SpaceAdapter(space, "obs").transform({"pos": np.zeros((4, 2)), "vel": np.zeros((4, 2))})


def test_non_numeric_box_batch_is_an_error() -> None:
    with pytest.raises(SpaceError, match="numeric"):
        sp.SpaceAdapter(spaces.Box(0, 1, (2,))).transform(np.array([["a", "b"]]))
