"""Issue 14, item 2: a zero-started EMA over a float16/bfloat16 shadow reads in float32, as
optax returns its EMA, on every path that reads an average (``average``, the torch ``EMA``,
JAX ``ema_average``); the state stays in the half dtype. The ``slow`` test runs optax itself.
"""

from __future__ import annotations

import numpy as np
import pytest

import ema_core as ema
from ema_core import presets
from tests.peers import require


def _half_zero_config(correction: str = "exact", dtype: str = "float16") -> ema.Config:
    return ema.Config(0.99984, init="zeros", dtype=dtype, correction=correction)  # type: ignore[arg-type]


@pytest.mark.parametrize("correction", ["exact", "power", "none"])
def test_functional_read_of_a_half_shadow_is_float32(correction):
    cfg = _half_zero_config(correction)
    params = {"w": np.array([77.1305695, -3.25, 1e-3], np.float32), "n": np.array([7])}
    state = ema.update(ema.init(params, cfg), params, cfg)
    out = ema.average(state, cfg)
    assert state.shadow["w"].dtype == np.float16 and out["w"].dtype == np.float32
    weight = 1.0 if correction == "none" else float(state.weight)
    np.testing.assert_array_equal(out["w"], state.shadow["w"].astype(np.float32) / weight)
    assert out["n"] is state.shadow["n"]  # integer leaves as they are


def test_torch_read_of_a_half_shadow_is_float32():
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = torch.nn.Linear(3, 2)
    averager = EMA(model, config=_half_zero_config(dtype="bfloat16"))
    averager.update()
    saved = averager.state_dict()
    shadow, read = saved["shadow"]["weight"], averager.average["weight"]
    assert shadow.dtype == torch.bfloat16 and read.dtype == torch.float32
    assert torch.equal(read, shadow.float() / float(saved["weight"]))


def test_jax_ema_average_of_a_half_shadow_is_float32():
    jnp = pytest.importorskip("jax.numpy")
    optax = pytest.importorskip("optax")
    from ema_core.jax import ema_average, with_ema

    cfg = presets.optax(0.99984, accumulator_dtype="bfloat16")
    opt = with_ema(optax.sgd(1.0), cfg)
    params = {"w": jnp.full(4, 77.1305695, jnp.float32)}
    _, state = opt.update({"w": jnp.zeros(4)}, opt.init(params), params)
    assert ema_average(state, cfg)["w"].dtype == jnp.float32


@pytest.mark.slow
def test_optax_half_accumulator_read_matches_optax_to_the_accumulator_rounding():
    jnp, optax = require("jax.numpy"), require("optax")
    x = np.array([77.1305695, -3.25, 1e-3, 1234.5], np.float32)
    for acc in ("bfloat16", "float16"):
        for decay in (0.9, 0.99984):
            tx, cfg = optax.ema(decay, accumulator_dtype=acc), presets.optax(decay, True, acc)
            params = {"w": jnp.asarray(x)}
            want, peer = tx.update(params, tx.init(params))
            state = ema.update(ema.init(params, cfg), params, cfg)
            got = ema.average(state, cfg)["w"]
            assert got.dtype == want["w"].dtype == jnp.float32
            stored = np.asarray(state.shadow["w"].astype(jnp.float32), np.float64)
            assert np.array_equal(stored, np.asarray(peer.ema["w"].astype(jnp.float32)))
            # both debias one rounding apart: the accumulator's (ours), optax's float32 1 - d
            up = jnp.nextafter(state.shadow["w"], jnp.full_like(state.shadow["w"], jnp.inf))
            half_ulp = np.abs(np.asarray(up.astype(jnp.float32), np.float64) - stored) / 2
            bc32 = float(1 - np.float32(decay))
            slack = np.abs(x) * (abs(bc32 - (1 - decay)) / (1 - decay) + 4 * 2.0**-23)
            diff = np.abs(np.asarray(got, np.float64) - np.asarray(want["w"], np.float64))
            assert np.all(diff <= half_ulp / (1 - decay) + slack), (acc, decay, diff)
