"""JAX fix from the hunt of 2026-12-05: ``ema_core.jax.load_state_dict`` takes the step and
weight in ``like``'s dtypes, as ``checkpoint.load`` does (an ``.npz`` saved with x64 on loads
with it off and back; a state of Python numbers saves int64 / float64 scalars)."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ema_core as ema
from ema_core.jax import load_state_dict, make_update, state_dict

CONFIG = ema.Config(schedule=0.9, init="zeros")


def _saved(state: ema.EMAState) -> dict[str, np.ndarray]:
    buffer = io.BytesIO()
    np.savez(buffer, **state_dict(state))
    buffer.seek(0)
    return dict(np.load(buffer))


def test_an_x64_file_loads_without_x64_and_back() -> None:
    params = {"w": jnp.ones(3, jnp.float32)}
    with jax.enable_x64(True):
        wide = make_update(CONFIG)(ema.init(params, CONFIG), params)
        arrays = _saved(wide)
        assert arrays["step"].dtype == np.int64 and arrays["weight"].dtype == np.float64
    like = ema.init(params, CONFIG)
    got = load_state_dict(arrays, like)
    assert got.step.dtype == jnp.int32 and got.weight.dtype == jnp.float32
    assert int(got.step) == 1 and float(got.weight) == pytest.approx(float(wide.weight))
    narrow = _saved(got)
    with jax.enable_x64(True):
        back = load_state_dict(narrow, ema.init(params, CONFIG))
        assert back.step.dtype == jnp.int64 and int(back.step) == 1


def test_a_python_number_state_loads_into_an_array_like() -> None:
    params = {"w": jnp.ones(2, jnp.float32)}
    plain = ema.EMAState(5, {"w": jnp.full(2, 0.5, jnp.float32)}, 0.25)
    got = load_state_dict(_saved(plain), ema.init(params, CONFIG))
    assert int(got.step) == 5 and float(got.weight) == 0.25


def test_a_step_like_cannot_hold_is_refused() -> None:
    params = {"w": jnp.ones(2, jnp.float32)}
    arrays = _saved(ema.EMAState(2**40, {"w": jnp.ones(2, jnp.float32)}, 1.0))
    with pytest.raises(ValueError, match=r"arrays\['step'\] is 1099511627776, which like's int32"):
        load_state_dict(arrays, ema.init(params, CONFIG))
