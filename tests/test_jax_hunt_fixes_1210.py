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


def test_a_deleted_closed_over_state_is_named_under_an_outer_jit() -> None:
    # the review of 2026-12-05: with the check moved before the call only where arrays span
    # devices, a traced call skipped it and JAX's unnamed "Array has been deleted" came out
    from ema_core.jax import make_update

    config = ema.Config(0.9)
    params = {"w": jnp.ones(4)}
    state = make_update(config, donate=False)(ema.init(params, config), params)
    dead = state._replace(shadow={"w": jnp.ones(4)})
    dead.shadow["w"].delete()
    update = make_update(config, donate=False)
    with pytest.raises(ValueError, match=r"state\.shadow\['w'\] was deleted"):
        jax.jit(lambda p: update(dead, p).shadow)(params)


def test_a_bank_names_its_snapshots_by_the_step_a_narrow_count_stops_at(tmp_path) -> None:
    # a uint8 step stops at 255, but the files were named 256, 258 (the host count ran on)
    from ema_core import schedules
    from ema_core.jax import make_bank_update

    params = {"w": jnp.ones(3)}
    configs = [ema.Config(schedules.power_function(sigma_rel=0.05), init="zeros")]
    bank = make_bank_update(configs, donate=False, snapshot_every=2, snapshot_dir=tmp_path)
    for step in (np.asarray(250, dtype="uint8"), jnp.asarray(250, dtype="uint8")):
        states = [ema.init(params, c)._replace(step=step) for c in configs]
        for _ in range(8):
            states = bank(states, params)
        assert int(states[0].step) == 255
    steps = sorted(int(p.name.split("-")[1]) for p in tmp_path.iterdir())
    assert steps == [252, 254], steps
