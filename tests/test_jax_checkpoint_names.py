"""JAX ``state_dict`` names: each path part escaped as in a JSON Pointer, so that no two arrays
share a name; old checkpoints load where unambiguous and are refused where two arrays merged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core.jax import (  # noqa: E402
    load_state_dict,
    state_dict,
)

# -- 2.5: state_dict names ------------------------------------------------------------------


def _colliding_state() -> ema.EMAState:
    return ema.init(
        {"a/b": jnp.zeros(2), "a": {"b": jnp.ones(2)}, "t~1": jnp.full(2, 2.0), "t/": jnp.ones(3)}
    )


def test_state_dict_keeps_keys_with_a_slash_apart_from_nests():
    state = _colliding_state()
    arrays = state_dict(state)
    assert sorted(arrays) == [
        "shadow/a/b",
        "shadow/a~1b",
        "shadow/t~01",
        "shadow/t~1",
        "step",
        "weight",
    ]
    like = ema.init(jax.tree_util.tree_map(jnp.zeros_like, state.shadow))
    restored = load_state_dict(arrays, like)
    assert restored.shadow["a/b"].tolist() == [0.0, 0.0]
    assert restored.shadow["a"]["b"].tolist() == [1.0, 1.0]
    assert restored.shadow["t~1"].tolist() == [2.0, 2.0]
    assert restored.shadow["t/"].tolist() == [1.0, 1.0, 1.0]


def test_load_state_dict_reads_a_checkpoint_written_before_escaping():
    like = ema.init({"x~1": jnp.zeros(2), "c/d": jnp.zeros(2)})
    old = {
        "step": np.asarray(4, np.int32),
        "weight": np.asarray(1.0, np.float32),
        "shadow/x~1": np.full(2, 3.0, np.float32),
        "shadow/c/d": np.full(2, 5.0, np.float32),
    }
    restored = load_state_dict(old, like)
    assert restored.shadow["x~1"].tolist() == [3.0, 3.0]
    assert restored.shadow["c/d"].tolist() == [5.0, 5.0]
    assert int(restored.step) == 4


def test_load_state_dict_refuses_an_old_checkpoint_that_merged_two_arrays():
    like = _colliding_state()
    old = {
        "step": np.asarray(0, np.int32),
        "weight": np.asarray(1.0, np.float32),
        "shadow/a/b": np.ones(2, np.float32),  # one array saved for both a/b and a.b
        "shadow/t~1": np.ones(2, np.float32),
        "shadow/t/": np.ones(3, np.float32),
    }
    with pytest.raises(ValueError, match=r"both saved as 'shadow/a/b'.*cannot be loaded"):
        load_state_dict(old, like)


@jax.tree_util.register_pytree_with_keys_class
@dataclass
class _TwoZeros:
    """A node whose two children have keys that print alike (the int 0 and the string '0')."""

    first: Any
    second: Any

    def tree_flatten_with_keys(self) -> tuple[Any, None]:
        keys = (jax.tree_util.DictKey(0), jax.tree_util.DictKey("0"))
        return tuple(zip(keys, (self.first, self.second), strict=True)), None

    @classmethod
    def tree_unflatten(cls, aux: None, children: Any) -> _TwoZeros:
        return cls(*children)


def test_state_dict_refuses_two_arrays_under_one_name():
    state = ema.init(_TwoZeros(jnp.zeros(2), jnp.ones(2)))
    with pytest.raises(ValueError, match=r"would both be saved as 'shadow/0'"):
        state_dict(state)
    with pytest.raises(ValueError, match=r"would both be saved as 'shadow/0'"):
        load_state_dict({"shadow/0": np.zeros(2, np.float32)}, state)
