"""``Config(interval=n)`` with an array step: the product of the n decays is one loop (traced)
or one vectorised evaluation (device steps), so its cost does not grow with n, and it equals
the unrolled product and the host loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core import schedules  # noqa: E402
from ema_core.jax import (  # noqa: E402
    make_update,
)
from tests.conftest import Backend, Name, _load, assert_close, to_numpy  # noqa: E402

X64 = jnp.result_type(float) == jnp.float64


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
def test_device_step_interval_product_is_one_vectorised_evaluation(name, n, monkeypatch):
    """A device count (a traced one: the fori_loop of the jaxpr test; numpy, array-api-strict
    and CPU counts are host values, multiplied in the host loop): here CPU torch tensors and
    JAX arrays stand in for device ones, as no platform counts as the host."""
    monkeypatch.setattr(ema._ops, "HOST_PLATFORMS", frozenset())
    backend = _load(name)
    sched = schedules.every(_Counted(0.999), n)
    _Counted.calls.clear()
    dtype = np.int32 if name is Name.JAX else np.int64
    decay, rate = sched.decay_and_rate(backend.asarray(np.asarray(3 * n, dtype)))
    assert len(_Counted.calls) == 1
    rel = 1e-5 if name is Name.JAX else 1e-12  # float32 / float64
    assert float(to_numpy(decay)) == pytest.approx(0.999**n, rel=rel)
    assert float(to_numpy(rate)) == pytest.approx(-np.expm1(n * np.log(0.999)), rel=rel)


@pytest.mark.parametrize("name", [Name.NUMPY, Name.TORCH], ids=["numpy", "torch"])
def test_host_array_step_interval_product_is_the_host_loop_bit_for_bit(name):
    # a CPU torch tensor is a host value too (read, no sync); a concrete JAX count is not
    # (below: an eager JAX update gives the compiled one's bits)
    backend = _load(name)
    sched = schedules.every(schedules.warmup(0.999, power=0.75), 30)
    for t in (0, 30, 31, 600):
        decay, rate = sched.decay_and_rate(backend.asarray(np.asarray(t, np.int32)))
        assert (float(to_numpy(decay)), float(to_numpy(rate))) == (sched(t), sched.rate(t)), t


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
