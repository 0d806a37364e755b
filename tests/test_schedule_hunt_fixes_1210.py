"""Fixes of the schedule hunt of 2026-12-05 (JAX without x64): a narrow signed count through a
gate, and the numpy step of a state given to ``make_update``."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

import ema_core as ema  # noqa: E402
from ema_core import schedules  # noqa: E402
from ema_core.jax import make_update  # noqa: E402


@pytest.mark.parametrize("dtype", ["int8", "int16", "uint8", "uint16", "int32"])
def test_a_gate_gives_a_narrow_jax_step_the_int_steps_decay(dtype: str) -> None:
    # int8 gave 0.9343 and int16 0.99973 at step 5 past an offset of 40,000 (counted in their
    # own dtype, which wraps); the int step's decay is 0.99977508
    schedule = schedules.gated(schedules.num_updates(1.0), offset=40000)
    config = ema.Config(schedule)
    want = config.decay(5)
    with jax.enable_x64(False):
        got = float(config._pair_at(jnp.asarray(5, dtype=dtype))[0])
        jitted = float(jax.jit(lambda t: config._pair_at(t)[0])(jnp.asarray(5, dtype=dtype)))
    assert got == jitted
    assert got == pytest.approx(want, rel=1e-6)  # the float32 rounding of the int's decay


@pytest.mark.parametrize(("dtype", "start"), [("uint8", 254), ("uint32", 2**32 - 3)])
def test_make_update_keeps_a_numpy_steps_dtype_as_the_eager_update_does(dtype, start) -> None:
    # make_update turned the step into int32: uint8 went on to 257, and a uint32 count near its
    # top went back to 2**31 - 1 (another decay, another weight)
    config = ema.Config(schedules.num_updates(1.0), init="zeros")
    params = {"w": jnp.ones(3)}
    with jax.enable_x64(False):  # a JAX state whose step came from numpy (a pickle, a file)
        state = ema.init(params, config)._replace(step=np.asarray(start, dtype=dtype))
        eager, compiled, update = state, state, make_update(config, donate=False)
        for _ in range(3):
            eager = ema.update(eager, params, config)
            compiled = update(compiled, params)
        assert compiled.step.dtype == np.dtype(dtype)
        assert int(compiled.step) == int(eager.step) == np.iinfo(dtype).max
        # a host step's decay is formed in float64, a JAX step's in float32 (README): one
        # rounding apart at most; the int32 step of before was another count altogether
        assert float(compiled.weight) == pytest.approx(float(eager.weight), rel=1e-6)
