"""with_ema: the EMA carried in an optax state, inside a jitted train loop."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")

import ema_core as ema  # noqa: E402
from ema_core import schedules  # noqa: E402
from ema_core.jax import WithEMAState, ema_average, with_ema  # noqa: E402


def _problem():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((32, 4)), jnp.float32)
    y = jnp.asarray(rng.standard_normal(32), jnp.float32)
    params = {"w": jnp.zeros(4), "b": jnp.zeros(())}

    def loss(p):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    return params, loss


@pytest.mark.parametrize("init", ["params", "zeros"])
def test_jitted_loop_equals_update_by_hand(init):
    config = ema.Config(schedule=schedules.warmup(0.99), init=init)
    params, loss = _problem()
    opt = with_ema(optax.adam(1e-1), config)
    plain = optax.adam(1e-1)

    @jax.jit
    def train(p, s):
        updates, s = opt.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    @jax.jit
    def train_by_hand(p, s, e):
        updates, s = plain.update(jax.grad(loss)(p), s, p)
        p = optax.apply_updates(p, updates)
        return p, s, ema.update(e, p, config)

    p1, s1 = params, opt.init(params)
    p2, s2, e2 = params, plain.init(params), ema.init(params, config)
    for _ in range(20):
        p1, s1 = train(p1, s1)
        p2, s2, e2 = train_by_hand(p2, s2, e2)
    assert isinstance(s1, WithEMAState)
    assert int(s1.ema.step) == 20
    for a, b in zip(
        jax.tree_util.tree_leaves((p1, s1)), jax.tree_util.tree_leaves((p2, s2, e2)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    avg, want = ema_average(s1, config), ema.average(e2, config)
    for key in params:
        np.testing.assert_array_equal(np.asarray(avg[key]), np.asarray(want[key]))
        assert not np.array_equal(np.asarray(avg[key]), np.asarray(p1[key]))  # it lags


def test_ema_average_finds_the_state_inside_a_chain():
    params, loss = _problem()
    config = ema.Config(schedule=0.5)
    opt = optax.chain(optax.clip_by_global_norm(1.0), with_ema(optax.sgd(0.1), config))
    state = opt.init(params)
    updates, state = opt.update(jax.grad(loss)(params), state, params)
    new = optax.apply_updates(params, updates)
    avg = ema_average(state, config)
    for key in params:
        want = 0.5 * np.asarray(params[key]) + 0.5 * np.asarray(new[key])
        np.testing.assert_allclose(np.asarray(avg[key]), want, rtol=1e-6, atol=1e-7)


def test_bad_input():
    with pytest.raises(TypeError, match="optimizer must be an optax GradientTransformation"):
        with_ema(0.1)
    with pytest.raises(TypeError, match=r"config must be an ema_core\.Config, got float"):
        with_ema(optax.sgd(0.1), 0.99)
    opt = with_ema(optax.sgd(0.1))
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    with pytest.raises(ValueError, match="with_ema needs the params"):
        opt.update(params, state)
    with pytest.raises(ValueError, match="exactly one with_ema state, found 0"):
        ema_average(optax.sgd(0.1).init(params))
    with pytest.raises(ValueError, match="found 2"):
        ema_average((state, state))
