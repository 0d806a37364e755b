"""Checkpoints: an EMAState saved mid-run and restored continues bit-identically."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core import schedules  # noqa: E402
from ema_core.jax import load_state_dict, make_update, state_dict  # noqa: E402

CONFIG = ema.Config(schedule=schedules.warmup(0.999), init="zeros", dtype="same")


def _params(k):
    rng = np.random.default_rng(k)
    return {
        "w": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32),
        "h": jnp.asarray(rng.standard_normal(7), jnp.bfloat16),  # bf16 shadow (dtype="same")
        "n": jnp.asarray(k, jnp.int32),
    }


def _run(state, steps):
    step = make_update(CONFIG, donate=False)
    for k in steps:
        state = step(state, _params(k))
    return state


def _bits(x):
    return np.atleast_1d(np.asarray(x)).view(np.uint8)


def _assert_identical(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(_bits(x), _bits(y))


def test_npz_round_trip_continues_bit_identically(tmp_path):
    state = _run(ema.init(_params(0), CONFIG), range(1, 4))
    np.savez(tmp_path / "ema.npz", **state_dict(state))
    with np.load(tmp_path / "ema.npz") as data:
        restored = load_state_dict(data, ema.init(_params(0), CONFIG))
    _assert_identical(restored, state)
    assert restored.shadow["h"].dtype == jnp.bfloat16
    _assert_identical(_run(restored, range(4, 8)), _run(state, range(4, 8)))


def test_load_state_dict_rejects_what_does_not_fit():
    like = ema.init(_params(0), CONFIG)
    arrays = state_dict(like)
    with pytest.raises(ValueError, match="arrays has no 'shadow/w'"):
        load_state_dict({k: v for k, v in arrays.items() if k != "shadow/w"}, like)
    with pytest.raises(ValueError, match=r"names that like does not have: \['extra'\]"):
        load_state_dict({**arrays, "extra": np.zeros(1)}, like)
    with pytest.raises(ValueError, match=r"arrays\['shadow/w'\] has shape \(2,\)"):
        load_state_dict({**arrays, "shadow/w": np.zeros(2, np.float32)}, like)
    with pytest.raises(TypeError, match=r"arrays\['shadow/w'\] has dtype float64"):
        load_state_dict({**arrays, "shadow/w": np.zeros((6, 5))}, like)


@pytest.mark.skipif(importlib.util.find_spec("orbax") is None, reason="orbax is not installed")
def test_orbax_round_trip_continues_bit_identically(tmp_path):
    import orbax.checkpoint as ocp

    state = _run(ema.init(_params(0), CONFIG), range(1, 4))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ema", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "ema", ema.init(_params(0), CONFIG))
    restored = ema.EMAState(*restored)
    _assert_identical(restored, state)
    _assert_identical(_run(restored, range(4, 8)), _run(state, range(4, 8)))
