"""with_ema / ema_average as an optax user wires them: gradient accumulation, skipped steps,
hyperparameter injection, the finite guard under jit, a forgotten config."""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")

import ema_core as ema  # noqa: E402
from ema_core.jax import ema_average, with_ema  # noqa: E402

CONFIG = ema.Config(schedule=ema.schedules.warmup(0.99), init="zeros")
GRADS = [{"w": jnp.full(2, g)} for g in (-1.0, -3.0, 2.0, -0.5, 1.0, -2.0)]


def _run(opt, jit: bool):
    params = {"w": jnp.zeros(2)}
    state = opt.init(params)

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    for grads in GRADS:
        params, state = step(params, state, grads)
    return params, state


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_with_ema_around_multisteps_counts_real_steps(jit: bool) -> None:
    """Either order averages once per optimizer step (every k micro-batches), as optax users
    expect: the params change only then, and a schedule counts optimizer steps."""
    accumulate = lambda opt: optax.MultiSteps(opt, every_k_schedule=2)  # noqa: E731
    outside, s_out = _run(with_ema(accumulate(optax.sgd(1.0)), CONFIG), jit)
    inside, s_in = _run(accumulate(with_ema(optax.sgd(1.0), CONFIG)), jit)
    # by hand: one step per pair of micro-batches, with their mean gradient (exact here)
    # (traced when the train step is: a traced decay is float32, a host one float64)
    by_hand = jax.jit(ema.update, static_argnums=2) if jit else ema.update
    params, ema_state = {"w": jnp.zeros(2)}, ema.init({"w": jnp.zeros(2)}, CONFIG)
    for first, second in zip(GRADS[::2], GRADS[1::2], strict=True):
        params = {"w": params["w"] - (first["w"] + second["w"]) / 2}
        ema_state = by_hand(ema_state, params, CONFIG)
    assert int(s_out.ema.step) == len(GRADS) // 2
    assert jnp.array_equal(outside["w"], params["w"])
    assert jnp.array_equal(ema_average(s_out, CONFIG)["w"], ema.average(ema_state, CONFIG)["w"])
    if jit:  # both orders traced: the same decays, bit for bit
        assert jnp.array_equal(outside["w"], inside["w"])
        assert jnp.array_equal(ema_average(s_out, CONFIG)["w"], ema_average(s_in, CONFIG)["w"])


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_with_ema_around_apply_if_finite_skips_the_skipped_step(jit: bool) -> None:
    opt = with_ema(optax.apply_if_finite(optax.sgd(1.0), max_consecutive_errors=3), CONFIG)
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    update = jax.jit(opt.update) if jit else opt.update
    _, state = update({"w": jnp.full(2, jnp.nan)}, state, params)
    assert int(state.ema.step) == 0  # no optimizer step was taken
    _, state = update({"w": -jnp.ones(2)}, state, params)
    assert int(state.ema.step) == 1
    assert jnp.array_equal(ema_average(state, CONFIG)["w"], jnp.full(2, 2.0))


def test_with_ema_under_inject_hyperparams_and_chain() -> None:
    """Coverage (passes before the fixes too): the EMA is found and read inside both."""
    make = lambda learning_rate: optax.chain(  # noqa: E731
        optax.clip(10.0), with_ema(optax.sgd(learning_rate), CONFIG)
    )
    opt = optax.inject_hyperparams(make)(learning_rate=1.0)
    params = {"w": jnp.zeros(2)}
    _, state = jax.jit(opt.update)(GRADS[0], opt.init(params), params)
    assert jnp.array_equal(ema_average(state, CONFIG)["w"], jnp.ones(2))


def test_guard_finite_inside_a_jitted_step_is_named() -> None:
    config = ema.Config(schedule=0.5, guard_finite=True)
    opt = with_ema(optax.sgd(1.0), config)
    params = {"w": jnp.zeros(2)}
    with pytest.raises(ValueError, match=r"guard_finite=True.*traced.*apply_if_finite"):
        jax.jit(opt.update)(GRADS[0], opt.init(params), params)


def test_ema_average_without_the_zeros_config_is_refused() -> None:
    """A bias-corrected EMA read with the default config would return the raw, biased shadow."""
    opt = with_ema(optax.sgd(1.0), CONFIG)
    params = {"w": jnp.zeros(2)}
    _, state = opt.update(GRADS[0], opt.init(params), params)
    zeros_read = r"weight 0\.62996.*init='zeros'.*ema_average\(opt_state, config\)"
    with pytest.raises(ValueError, match=zeros_read):
        ema_average(state)
    with pytest.raises(ValueError, match=r"init='params'"):
        ema_average(state, ema.Config(schedule=0.99))
    assert jnp.array_equal(ema_average(state, CONFIG)["w"], jnp.ones(2))
