"""JAX updates at the edges: a traced decay of exactly 1 or 0 is exact, a decay within 3e-8
of 1 still moves the shadow without x64, the step counter stops at its dtype's maximum, and a
concrete step given to ``make_update`` is checked before anything is donated."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core import schedules  # noqa: E402
from ema_core.jax import (  # noqa: E402
    _call_checks,
    _chunked,
    make_update,
    with_ema,
)
from tests.conftest import assert_close  # noqa: E402

X64 = jnp.result_type(float) == jnp.float64
INT_MAX = np.iinfo(np.int32).max


def _bits(x: Any) -> bytes:
    arr = np.asarray(x)
    return arr.view(f"u{arr.dtype.itemsize}").tobytes()


# -- 2.4: a traced decay of exactly 1 or 0 is exact -----------------------------------------

BAD = np.array([np.nan, np.inf, -np.inf, 1.0, -0.0], np.float32)


def _finite() -> dict[str, Any]:
    five = np.arange(1.0, 6.0, dtype=np.float32)
    return {
        "w": jnp.asarray(five),
        "c": jnp.asarray(five + 2j * five, jnp.complex64),
        "h": jnp.asarray(five, jnp.bfloat16),
    }


def _poisoned() -> dict[str, Any]:
    c = np.empty(BAD.shape, np.complex64)
    c.real, c.imag = BAD, BAD[::-1]
    return {
        "w": jnp.asarray(BAD),
        "c": jnp.asarray(c),
        "h": jnp.asarray(BAD, jnp.bfloat16),
    }


@pytest.fixture(params=["single", "chunked"])
def path(request, monkeypatch):
    """make_update as one jit, or in chunks of one leaf (trees of two or more leaves)."""
    if request.param == "chunked":
        monkeypatch.setattr(_chunked, "CHUNK", 1)
    return request.param


def test_traced_decay_one_keeps_the_shadow_under_nan_params(path):
    config = ema.Config(schedule=0.9, interval=2)  # step 1 is skipped: decay 1, rate 0
    state = ema.init(_finite(), config)
    before = {k: _bits(v) for k, v in state.shadow.items()}
    new = make_update(config, donate=False)(state, _poisoned())
    assert {k: _bits(v) for k, v in new.shadow.items()} == before


def test_traced_decay_zero_copies_the_params_over_a_nan_shadow(path):
    config = ema.Config(schedule=0.9, init="copy")  # step 1 copies: decay 0
    state = ema.init(_poisoned(), config)
    new = make_update(config, donate=False)(state, _finite())
    for key, value in _finite().items():
        assert _bits(new.shadow[key]) == _bits(value.astype(new.shadow[key].dtype)), key


def test_jitted_ema_update_with_a_traced_decay_is_exact_at_both_ends():
    update = jax.jit(lambda s, p, d: ema.ema_update(s, p, 1, decay=d))
    finite, poisoned = _finite(), _poisoned()
    keep = update(finite, poisoned, jnp.float32(1.0))
    copy = update(poisoned, finite, jnp.float32(0.0))
    for key, value in finite.items():
        assert _bits(keep[key]) == _bits(value), key
        assert _bits(copy[key]) == _bits(value), key


# -- 2.13: a decay within 3e-8 of 1, and the step counter at its maximum ----------------------


@pytest.mark.skipif(X64, reason="with x64 the decay does not round to 1")
@pytest.mark.parametrize("decay", [1 - 2e-8, 1 - 1e-9])
def test_make_update_moves_by_a_decay_that_rounds_to_one(path, decay):
    config = ema.Config(schedule=decay)
    shadow = {"w": jnp.zeros(2), "v": jnp.zeros(3)}
    params = {"w": jnp.full(2, 1e6), "v": jnp.full(3, -1e6)}
    eager = ema.ema_update(shadow, params, 1, decay=decay)
    compiled = make_update(config, donate=False)(ema.init(shadow, config), params)
    assert_close(compiled.shadow["w"], np.full(2, (1 - decay) * 1e6), "float32")
    for key in shadow:
        assert _bits(compiled.shadow[key]) == _bits(eager[key]), key


def test_make_update_holds_the_step_at_its_maximum(path):
    """2**31 - 1 + 1 would wrap to -2**31, where warmup's (1 + t) ** -2/3 is NaN."""
    config = ema.Config(schedule=schedules.warmup(0.99))
    step = make_update(config, donate=False)
    params = {"w": jnp.ones(3), "v": jnp.full(2, 2.0)}
    state = ema.init(jax.tree_util.tree_map(jnp.zeros_like, params), config)
    state = step(state._replace(step=jnp.asarray(INT_MAX, jnp.int32)), params)
    assert state.step.dtype == jnp.int32 and int(state.step) == INT_MAX
    d = config.decay(INT_MAX)
    assert_close(state.shadow["w"], np.full(3, 1 - d), "float32")
    state = step(state, params)
    assert int(state.step) == INT_MAX
    assert_close(state.shadow["w"], np.full(3, 1 - d * d), "float32")
    assert_close(state.shadow["v"], np.full(2, 2 * (1 - d * d)), "float32")


def test_with_ema_holds_the_step_at_its_maximum():
    optax = pytest.importorskip("optax")
    config = ema.Config(schedule=0.5)
    opt = with_ema(optax.sgd(1.0), config)
    params = {"w": jnp.zeros(3)}
    state = opt.init(params)
    state = state._replace(ema=state.ema._replace(step=jnp.asarray(INT_MAX, jnp.int32)))
    train = jax.jit(lambda g, s, p: opt.update(g, s, p)[1])
    state = train({"w": -jnp.ones(3)}, state, params)  # params after the step: ones
    assert int(state.ema.step) == INT_MAX
    assert state.ema.shadow["w"].tolist() == [0.5, 0.5, 0.5]


# -- 2.2: a concrete step given to make_update is checked, a traced one trusted ---------------


def test_make_update_rejects_a_negative_concrete_step_before_donating(path):
    step = make_update(ema.Config(schedule=0.9))
    params = {"w": jnp.ones(2), "v": jnp.ones(3)}
    state = ema.init(params)._replace(step=jnp.asarray(-3, jnp.int32))
    with pytest.raises(ValueError, match=r"state\.step must be >= 0, got -3"):
        step(state, params)
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))


def test_with_ema_rejects_a_negative_concrete_step():
    optax = pytest.importorskip("optax")
    opt = with_ema(optax.sgd(1.0))
    params = {"w": jnp.zeros(2)}
    state = opt.init(params)
    state = state._replace(ema=state.ema._replace(step=jnp.asarray(-1, jnp.int32)))
    with pytest.raises(ValueError, match=r"step must be >= 0, got -1"):
        opt.update({"w": jnp.ones(2)}, state, params)


def test_make_update_reads_only_steps_it_did_not_make(monkeypatch):
    read: list[Any] = []
    check = _call_checks.ops_for
    monkeypatch.setattr(_call_checks, "ops_for", lambda t, name: read.append(t) or check(t, name))
    step = make_update(ema.Config(schedule=0.9))
    state = ema.init({"w": jnp.zeros(2)})
    for _ in range(4):
        state = step(state, {"w": jnp.ones(2)})
    assert len(read) == 1  # the fresh state's step; the next three were made by step
    state = ema.init({"w": jnp.zeros(2)})
    step(state, {"w": jnp.ones(2)})
    assert len(read) == 2
