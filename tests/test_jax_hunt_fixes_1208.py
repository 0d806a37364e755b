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
from ema_core import schedules
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
    with pytest.raises(ValueError, match=r"arrays\['step'\] holds 1099511627776, which like's"):
        load_state_dict(arrays, ema.init(params, CONFIG))


@pytest.mark.parametrize(("decay", "n"), [(0.999, 100), (0.999, 1000), (0.9999, 10_000)])
def test_a_compensated_interval_keeps_float32_precision_on_a_jax_step(decay: float, n: int) -> None:
    """The window's rate ``1 - decay**n`` on a JAX step (traced: ``make_update``; eager:
    blocks of steps, more than one past 4,096) was the product of n rounded float32 decays,
    off by about n/10 ulps; from the rates' compensated log sum it is within a few."""
    config = ema.Config(schedule=decay, interval=n)
    params = {"w": jnp.ones(1)}
    state = ema.init({"w": jnp.zeros(1)}, config)._replace(step=jnp.int32(5 * n - 1))
    exact = -np.expm1(n * np.log(decay))
    ulp = float(np.spacing(np.float32(exact)))
    compiled = float(make_update(config, donate=False)(state, params).shadow["w"][0])
    eager = float(ema.update(state, params, config).shadow["w"][0])
    assert compiled == eager
    assert abs(compiled - exact) <= 3 * ulp, (compiled - exact) / ulp


def test_a_copy_inside_a_compensated_window_on_a_jax_step_is_exact() -> None:
    """A window holding decay 0 (``init="copy"``'s first update) takes the plain product."""
    config = ema.Config(schedule=0.9, interval=4, init="copy")
    params = {"w": jnp.full(1, 3.0)}
    state = ema.init({"w": jnp.zeros(1)}, config)._replace(step=jnp.int32(3))
    assert float(make_update(config, donate=False)(state, params).shadow["w"][0]) == 3.0
    assert float(ema.update(state, params, config).shadow["w"][0]) == 3.0


def test_a_stacked_state_loads_across_step_dtypes() -> None:
    """A state of K vmapped EMAs holds one step per EMA: each is checked against like's dtype."""
    params = {"w": jnp.ones((2, 3), jnp.float32)}
    batched = jax.vmap(lambda p: ema.init(p, CONFIG))(params)
    arrays = _saved(batched)
    arrays["step"] = np.asarray([3, 4], np.int64)
    got = load_state_dict(arrays, batched)
    assert got.step.dtype == jnp.int32 and got.step.tolist() == [3, 4]
    arrays["step"] = np.asarray([3, 2**40], np.int64)
    with pytest.raises(ValueError, match=r"holds 1099511627776"):
        load_state_dict(arrays, batched)


@pytest.mark.parametrize(("decay", "n"), [(0.999, 7), (0.999, 1000), (0.9999, 5000)])
def test_eager_and_compiled_windows_agree_bit_for_bit(decay: float, n: int) -> None:
    """A concrete JAX count (``schedule.rate(jnp.int32(t))`` eagerly) sums the window as the
    compiled call does, past one block of 4,096 steps too."""
    window = schedules.every(decay, n)
    t = jnp.int32(3 * n)
    assert float(window.rate(t)) == float(jax.jit(window.rate)(t))
    assert float(window(t)) == float(jax.jit(window)(t))
    exact = -np.expm1(n * np.log(decay))
    assert abs(float(window.rate(t)) - exact) <= 3 * float(np.spacing(np.float32(exact)))


@pytest.mark.usefixtures("x64")
def test_with_x64_a_jax_window_keeps_the_int_steps_bits() -> None:
    """In float64 the product of the decays is what the host computes, eagerly and compiled
    (past one block of 4,096 steps too): no log sum there."""
    for decay, n in ((0.999, 1000), (0.9, 10), (0.5, 20), (0.9999, 5000)):
        window = schedules.every(decay, n)
        t = 3 * n
        for call in (window.rate, window):
            assert float(jax.jit(call)(jnp.int64(t))) == call(t)
            assert float(call(jnp.int64(t))) == call(t)


def test_state_dict_of_params_names_what_it_takes() -> None:
    with pytest.raises(TypeError, match=r"state must be an EMAState .* or a PackedState .*dict"):
        state_dict({"a": jnp.ones(3)})  # params by mistake: saved with no step before
