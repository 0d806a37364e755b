"""Fixes of the JAX packed-state hunt of 2026-12-05: ``unpack`` inside ``jit`` / ``vmap``, a
64-bit packed state unpacked with x64 off, and ``pack`` of stacked (vmapped) states."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

import ema_core as ema  # noqa: E402
from ema_core.jax import pack, state_dict, unpack  # noqa: E402

CONFIG = ema.Config(schedule=0.5, init="zeros")


def _packed() -> tuple[dict[str, object], object]:
    params = {"w": jnp.arange(3.0), "b": jnp.full((2, 1), 2.0)}
    state = ema.update(ema.init(params, CONFIG), params, CONFIG)
    return params, pack(state)


def test_unpack_works_inside_jit_and_vmap() -> None:
    # raised JAX's TracerArrayConversionError: the buffers were read on the host
    params, packed = _packed()
    want = ema.average(unpack(packed), CONFIG)
    got = jax.jit(lambda s: ema.average(unpack(s), CONFIG))(packed)
    for name in ("w", "b"):
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]))
        assert got[name].shape == params[name].shape
    stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x, 2 * x]), packed)
    shadows = jax.vmap(unpack)(stacked).shadow
    np.testing.assert_array_equal(np.asarray(shadows["b"][1]), 2 * np.asarray(want["b"]) * 0.5)


def test_a_64_bit_packed_state_with_x64_off_is_refused_not_narrowed() -> None:
    # unpack and state_dict gave float32 shadows silently (1 + 2**-40 came back as 1.0)
    with jax.enable_x64(True):
        params = {"w": jnp.full(3, 1 + 2.0**-40, dtype=jnp.float64)}
        packed = pack(ema.init(params, ema.Config()))
        assert unpack(packed).shadow["w"].dtype == jnp.float64
    with jax.enable_x64(False):
        for call in (unpack, state_dict):
            with pytest.raises(ValueError, match=r"flats\[0\] is float64, packed with x64 on"):
                call(packed)
    with jax.enable_x64(True):
        assert float(unpack(packed).shadow["w"][0]) == 1 + 2.0**-40


def test_pack_refuses_stacked_states() -> None:
    # was packed, then no update could take it (vmap: "inconsistent sizes"; direct: weight)
    params = {"w": jnp.ones((4, 3))}
    stacked = jax.vmap(lambda p: ema.init(p, ema.Config()))(params)
    with pytest.raises(ValueError, match=r"state\.step of shape \(4,\).*pack each EMA"):
        pack(stacked)
