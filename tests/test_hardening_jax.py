"""Issue 13 on the JAX side: checkpoint names, interval products, exact endpoints, the step
counter, near-one decays and concrete steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core import schedules  # noqa: E402
from ema_core.backends.jax import (  # noqa: E402
    _chunked,
    _compiled,
    load_state_dict,
    make_update,
    state_dict,
    with_ema,
)
from tests.conftest import Backend, Name, _load, assert_close, to_numpy  # noqa: E402

X64 = jnp.result_type(float) == jnp.float64
INT_MAX = np.iinfo(np.int32).max


def _bits(x: Any) -> bytes:
    arr = np.asarray(x)
    return arr.view(f"u{arr.dtype.itemsize}").tobytes()


# -- 2.5: state_dict names ------------------------------------------------------------------


def _colliding_state() -> ema.EMAState:
    return ema.init(
        {"a/b": jnp.zeros(2), "a": {"b": jnp.ones(2)}, "t~1": jnp.full(2, 2.0), "t/": jnp.ones(3)}
    )


def test_state_dict_keeps_keys_with_a_slash_apart_from_nests():
    state = _colliding_state()
    arrays = state_dict(state)
    assert sorted(arrays) == [
        "shadow/a/b",
        "shadow/a~1b",
        "shadow/t~01",
        "shadow/t~1",
        "step",
        "weight",
    ]
    like = ema.init(jax.tree_util.tree_map(jnp.zeros_like, state.shadow))
    restored = load_state_dict(arrays, like)
    assert restored.shadow["a/b"].tolist() == [0.0, 0.0]
    assert restored.shadow["a"]["b"].tolist() == [1.0, 1.0]
    assert restored.shadow["t~1"].tolist() == [2.0, 2.0]
    assert restored.shadow["t/"].tolist() == [1.0, 1.0, 1.0]


def test_load_state_dict_reads_a_checkpoint_written_before_escaping():
    like = ema.init({"x~1": jnp.zeros(2), "c/d": jnp.zeros(2)})
    old = {
        "step": np.asarray(4, np.int32),
        "weight": np.asarray(1.0, np.float32),
        "shadow/x~1": np.full(2, 3.0, np.float32),
        "shadow/c/d": np.full(2, 5.0, np.float32),
    }
    restored = load_state_dict(old, like)
    assert restored.shadow["x~1"].tolist() == [3.0, 3.0]
    assert restored.shadow["c/d"].tolist() == [5.0, 5.0]
    assert int(restored.step) == 4


def test_load_state_dict_refuses_an_old_checkpoint_that_merged_two_arrays():
    like = _colliding_state()
    old = {
        "step": np.asarray(0, np.int32),
        "weight": np.asarray(1.0, np.float32),
        "shadow/a/b": np.ones(2, np.float32),  # one array saved for both a/b and a.b
        "shadow/t~1": np.ones(2, np.float32),
        "shadow/t/": np.ones(3, np.float32),
    }
    with pytest.raises(ValueError, match=r"both saved as 'shadow/a/b'.*cannot be loaded"):
        load_state_dict(old, like)


@jax.tree_util.register_pytree_with_keys_class
@dataclass
class _TwoZeros:
    """A node whose two children have keys that print alike (the int 0 and the string '0')."""

    first: Any
    second: Any

    def tree_flatten_with_keys(self) -> tuple[Any, None]:
        keys = (jax.tree_util.DictKey(0), jax.tree_util.DictKey("0"))
        return tuple(zip(keys, (self.first, self.second), strict=True)), None

    @classmethod
    def tree_unflatten(cls, aux: None, children: Any) -> _TwoZeros:
        return cls(*children)


def test_state_dict_refuses_two_arrays_under_one_name():
    state = ema.init(_TwoZeros(jnp.zeros(2), jnp.ones(2)))
    with pytest.raises(ValueError, match=r"would both be saved as 'shadow/0'"):
        state_dict(state)
    with pytest.raises(ValueError, match=r"would both be saved as 'shadow/0'"):
        load_state_dict({"shadow/0": np.zeros(2, np.float32)}, state)


# -- 2.11: interval=n costs the same whatever n ---------------------------------------------


def _lowered_size(n: int) -> int:
    config = ema.Config(schedule=schedules.warmup(0.999), interval=n)
    state = ema.init({"w": jnp.zeros(4)}, config)
    return len(make_update(config).lower(state, {"w": jnp.ones(4)}).as_text())


def test_make_update_with_an_interval_does_not_grow_with_it():
    small, big = _lowered_size(10), _lowered_size(1000)
    assert big < small + 100  # the same program; only the constant n differs


def _equations(sched: schedules.Schedule) -> int:
    return len(jax.make_jaxpr(sched.decay_and_rate)(jnp.asarray(7)).jaxpr.eqns)


@pytest.mark.parametrize(
    "inner", [schedules.warmup(0.99), lambda t: 0.9], ids=["warmup", "callable"]
)
def test_traced_interval_product_is_one_loop(inner):
    assert _equations(schedules.every(inner, 3)) == _equations(schedules.every(inner, 500))


def _unrolled_jax(inner: schedules.Schedule, n: int, t: Any) -> tuple[Any, Any]:
    """The compensated product as n separate factors, in the loop's order."""
    decay, log_keep = jnp.float32(1.0), jnp.float32(0.0)
    for k in range(n):
        d_k, r_k = inner.decay_and_rate(jnp.clip(t - k, min=0))
        decay, log_keep = decay * d_k, log_keep + jnp.log1p(-jnp.minimum(r_k, 0.5))
    return decay, jnp.where(decay < 0.5, 1.0 - decay, -jnp.expm1(log_keep))


@pytest.mark.skipif(X64, reason="the unrolled reference is written in float32")
@pytest.mark.parametrize("n", [3, 40])
def test_traced_interval_product_equals_the_unrolled_one(n):
    inner = schedules.power_function(6.94)
    looped = jax.jit(schedules.every(inner, n).decay_and_rate)
    unrolled = jax.jit(lambda t: _unrolled_jax(inner, n, t))
    for t in (n, 2 * n, 9 * n, 250 * n):
        for got, want in zip(looped(jnp.asarray(t)), unrolled(jnp.asarray(t)), strict=True):
            assert_close(got, np.float32(want), "float32", ulps=2, what=f"t={t}")


@dataclass(frozen=True)
class _Counted(schedules.Constant):
    calls: ClassVar[list[int]] = []

    def pair(self, ops, /):
        self.calls.append(1)
        return super().pair(ops)


@pytest.mark.parametrize("n", [2, 300])
@pytest.mark.parametrize("name", [Name.TORCH, Name.JAX], ids=["torch", "jax"])
def test_device_step_interval_product_is_one_vectorised_evaluation(name, n):
    """A torch tensor or a concrete JAX count (a traced one: the fori_loop of the jaxpr test;
    numpy and array-api-strict counts are host values, multiplied in the host loop)."""
    backend = _load(name)
    sched = schedules.every(_Counted(0.999), n)
    _Counted.calls.clear()
    dtype = np.int32 if name is Name.JAX else np.int64
    decay, rate = sched.decay_and_rate(backend.asarray(np.asarray(3 * n, dtype)))
    assert len(_Counted.calls) == 1
    rel = 1e-5 if name is Name.JAX else 1e-12  # float32 / float64
    assert float(to_numpy(decay)) == pytest.approx(0.999**n, rel=rel)
    assert float(to_numpy(rate)) == pytest.approx(-np.expm1(n * np.log(0.999)), rel=rel)


def test_host_array_step_interval_product_is_the_host_loop_bit_for_bit():
    sched = schedules.every(schedules.warmup(0.999), 30)
    for t in (0, 30, 31, 600):
        decay, rate = sched.decay_and_rate(np.asarray(t))
        assert (float(decay), float(rate)) == (sched(t), sched.rate(t)), t


@pytest.mark.parametrize(
    "inner",
    [
        schedules.warmup(0.9999, power=0.75),
        schedules.num_updates(0.999),
        schedules.gated(schedules.warmup(0.99), every=2, offset=1, floor=0.3),
        schedules.in_float32(schedules.power_function(16.97)),
        lambda t: 0.95 if int(t) % 2 else 0.9,  # reads its count: called with 0-d counts
    ],
    ids=["warmup", "num_updates", "gated", "in_float32", "callable"],
)
def test_array_step_interval_product_equals_the_host_loop(backend: Backend, inner):
    n = 25
    sched = schedules.every(inner, n)
    dtype = np.int32 if backend.name is Name.JAX else np.int64
    rel = 1e-5 if backend.name is Name.JAX else 1e-13  # float32 against the float64 host loop
    for t in (0, 1, n, 2 * n, 2 * n + 1, 40 * n):
        decay, rate = sched.decay_and_rate(backend.asarray(np.asarray(t, dtype)))
        assert float(to_numpy(decay)) == pytest.approx(sched(t), rel=rel, abs=1e-300), t
        assert float(to_numpy(rate)) == pytest.approx(sched.rate(t), rel=rel, abs=1e-300), t


def test_nested_intervals_on_an_array_step_match_the_host_loop(float64_backend: Backend):
    sched = schedules.every(schedules.every(schedules.warmup(0.99), 2), 3)
    for t in (6, 12, 13, 60):
        decay, rate = sched.decay_and_rate(float64_backend.asarray(np.asarray(t, np.int64)))
        assert float(to_numpy(decay)) == pytest.approx(sched(t), rel=1e-13), t
        assert float(to_numpy(rate)) == pytest.approx(sched.rate(t), rel=1e-13, abs=1e-300), t


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
    check = _compiled.ops_for
    monkeypatch.setattr(_compiled, "ops_for", lambda t, name: read.append(t) or check(t, name))
    step = make_update(ema.Config(schedule=0.9))
    state = ema.init({"w": jnp.zeros(2)})
    for _ in range(4):
        state = step(state, {"w": jnp.ones(2)})
    assert len(read) == 1  # the fresh state's step; the next three were made by step
    state = ema.init({"w": jnp.zeros(2)})
    step(state, {"w": jnp.ones(2)})
    assert len(read) == 2
