"""Config and schedule promises a hostile-user hunt (1209, on 2026-12-05) found broken, each
test failing before its fix: ``correction="power"`` over a schedule that skips steps (``every``,
``gated``: the read was the raw shadow at skipped steps, off at the others); an unsigned JAX
step through a gate without x64 (a raw OverflowError for uint32, another decay than the int
step's for uint16); ``num_updates(numerator=-1)`` at step 0 (decay -0.1: a jitted update
overshot the params); and an eager stateless ``ema_update`` with a JAX step, whose decay was
computed op by op and differed from a jitted call's in its last bit."""

from __future__ import annotations

import numpy as np
import pytest

import ema_core as ema
from ema_core import presets
from ema_core import schedules as S

jax = pytest.importorskip("jax")
jnp = jax.numpy


@pytest.mark.parametrize(
    "schedule",
    [
        S.every(0.9, 2),
        S.gated(0.9, every=2),
        S.gated(0.9, start=5),
        S.in_float32(S.every(0.9, 3)),
        S.gated(S.every(0.9, 2), offset=1),
    ],
)
def test_power_correction_refuses_a_schedule_that_skips(schedule: S.Schedule) -> None:
    with pytest.raises(ValueError, match=r"Config.correction='power' .* skips steps.*interval=n"):
        ema.Config(schedule, init="zeros", correction="power")


@pytest.mark.parametrize(
    "schedule", [S.gated(S.num_updates(0.999), offset=1), S.gated(0.9, floor=0.5), S.every(0.9, 1)]
)
def test_power_correction_takes_a_gate_that_skips_nothing(schedule: S.Schedule) -> None:
    config = ema.Config(schedule, init="zeros", correction="power")
    state = ema.update(ema.init({"w": np.zeros(2)}, config), {"w": np.ones(2)}, config)
    assert np.isfinite(ema.average(state, config)["w"]).all()


def test_power_correction_with_config_interval_reads_the_params() -> None:
    config = ema.Config(0.9, init="zeros", correction="power", interval=2)
    state = ema.init({"w": np.zeros(2)}, config)
    reads = []
    for _ in range(6):
        state = ema.update(state, {"w": np.full(2, 5.0)}, config)
        reads.append(float(ema.average(state, config)["w"][0]))
    assert reads[0] == 0.0 and all(abs(r - 5.0) < 1e-12 for r in reads[1:]), reads


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
def test_unsigned_jax_steps_through_gates_give_the_int_steps_decay(dtype: str) -> None:
    nested = S.gated(S.gated(0.5, start=130), offset=-7, divisor=300)
    timm = presets.timm(use_warmup=True).schedule
    for schedule in (S.gated(0.9), nested, timm):
        for t in (1, 5, 200):
            got = float(schedule(jnp.asarray(t, getattr(jnp, dtype))))
            want = float(np.float32(schedule(t)))
            assert got == want, (schedule, dtype, t, got, want)


@pytest.mark.parametrize(
    ("dtype", "steps"),
    [("uint8", (253, 254, 255)), ("uint32", (2**31 - 2, 2**31, 2**31 + 2, 2**32 - 2))],
)
def test_unsigned_steps_at_the_top_of_their_dtype_gate_as_the_int_step(
    dtype: str, steps: tuple[int, ...]
) -> None:
    schedules = [
        S.gated(0.9, every=3, phase=1, offset=-1, divisor=2),
        S.gated(0.9, every=2, offset=3, divisor=3, start=5),
        S.gated(0.8, offset=-300, copy_through=2),
    ]
    for schedule in schedules:
        for t in steps:
            got = float(schedule(jnp.asarray(t, getattr(jnp, dtype))))
            assert got == float(np.float32(schedule(t))), (schedule, dtype, t)


def test_a_uint32_step_updates_under_a_gated_preset() -> None:
    config = presets.diffusers()
    step = jnp.asarray(5, jnp.uint32)
    got = ema.ema_update({"w": jnp.zeros(3)}, {"w": jnp.ones(3)}, step, config=config)
    want = ema.ema_update({"w": jnp.zeros(3)}, {"w": jnp.ones(3)}, jnp.asarray(5), config=config)
    assert np.array_equal(np.asarray(got["w"]), np.asarray(want["w"]))


def test_num_updates_numerator_minus_1_copies_at_step_0() -> None:
    schedule = S.num_updates(0.999, numerator=-1)
    assert schedule(0) == 0.0 and schedule.rate(0) == 1.0
    assert schedule(1) == 0.0 and schedule(2) == 1 / 12
    step = jax.jit(lambda s, p, t: ema.ema_update(s, p, t, schedule=schedule))
    got = step({"w": jnp.full(3, 7.0)}, {"w": jnp.ones(3)}, jnp.asarray(0))
    assert np.array_equal(np.asarray(got["w"]), np.ones(3, np.float32))


def test_eager_stateless_update_with_a_jax_step_gives_the_jitted_bits() -> None:
    config = ema.Config(schedule=S.warmup(0.999, inv_gamma=3.0, power=0.75), init="copy")
    jitted = jax.jit(lambda s, p, t: ema.ema_update(s, p, t, config=config))
    base = jnp.linspace(0.0, 1.0, 7)
    eager = compiled = {"w": base}
    for k in range(1, 12):
        params = {"w": base * (k % 5) + k * 0.37}
        eager = ema.ema_update(eager, params, jnp.asarray(k), config=config)
        compiled = jitted(compiled, params, jnp.asarray(k))
        assert np.array_equal(np.asarray(eager["w"]), np.asarray(compiled["w"])), k
