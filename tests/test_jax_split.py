"""make_update's split of a tree (``ema_core.jax._split``) into the arrays that enter the
compiled function and the leaves kept aside: decided per leaf type from a table, which must
agree with ``isinstance`` for every kind of leaf (numpy subclasses and tracers included),
whichever type it saw first."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from ema_core.jax import _split as splits  # noqa: E402


class _Sub(np.ndarray):
    """A numpy subclass: an array, by ``isinstance``."""


def _leaves() -> list[object]:
    return [
        jnp.ones(2),
        np.ones(3),
        np.ones(2).view(_Sub),
        np.float32(1.5),  # a numpy scalar is not an array
        2.5,
        "relu",
        jax.nn.relu,
    ]


@pytest.mark.parametrize("order", [1, -1], ids=["arrays-first", "statics-first"])
def test_split_agrees_with_isinstance_for_each_leaf_type(order: int) -> None:
    splits._ARRAY_TYPES.clear()
    tree = {f"k{i}": x for i, x in enumerate(_leaves()[::order])}
    want = [isinstance(x, (jax.Array, np.ndarray)) for x in jax.tree_util.tree_leaves(tree)]
    arrays, split = splits.split(tree)
    assert list(split.dynamic) == want and sum(want) == 3
    assert len(arrays) == 3 and len(split.statics) == 4
    again, split_again = splits.split(tree)  # read from the table this time
    assert split_again == split and hash(split_again) == hash(split)
    assert all(a is b for a, b in zip(again, arrays, strict=True))
    assert jax.tree_util.tree_leaves(split.merge(arrays)) == jax.tree_util.tree_leaves(tree)


def test_tracers_enter_the_compiled_function() -> None:
    splits._ARRAY_TYPES.clear()
    splits.split({"a": np.ones(1), "b": 1.0})  # the table knows numpy and float first

    @jax.jit
    def inside(x: jax.Array) -> jax.Array:
        arrays, split = splits.split({"x": x, "s": "kept"})
        assert split.dynamic == (False, True) and split.statics == ("kept",)
        return arrays[0] * 2

    assert float(inside(jnp.asarray(3.0))) == 6.0


def test_splits_of_different_trees_differ() -> None:
    _, one = splits.split({"a": jnp.ones(1), "b": 1.0})
    _, other = splits.split({"a": jnp.ones(1), "b": 2.0})
    _, arrays = splits.split({"a": jnp.ones(1), "b": jnp.ones(1)})
    assert one != other and one != arrays and one == splits.split({"a": jnp.zeros(1), "b": 1.0})[1]


def test_the_type_table_starts_again_past_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splits, "_MOST_TYPES", 2)
    splits._ARRAY_TYPES.clear()
    splits.split([1, 1.0, "a", b"b"])
    assert len(splits._ARRAY_TYPES) == 4
    splits.split([jnp.ones(1)])  # a new type past the size: cleared, then filled
    assert set(splits._ARRAY_TYPES) == {type(jnp.ones(1))}
