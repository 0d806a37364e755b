"""Invariants of the update as hypothesis properties, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ema_core as ema
from ema_core import schedules
from tests.conftest import Backend, Name, assert_close, to_numpy
from tests.reference import SPECS

SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
shapes = hnp.array_shapes(min_dims=0, max_dims=2, max_side=5)
# no subnormals: XLA on CPU flushes them to zero, which is the framework's arithmetic, not ours
values = st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_subnormal=False)
decays = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0))


@st.composite
def pair(draw: st.DrawFn, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    shape = draw(shapes)
    a = draw(hnp.arrays(np.float32, shape, elements=values)).astype(dtype)
    b = draw(hnp.arrays(np.float32, shape, elements=values)).astype(dtype)
    return a, b


def _bits(x: object) -> bytes:
    return to_numpy(x).tobytes()


@SETTINGS
@given(data=pair(), decay=st.sampled_from([0.0, 1.0]), copy=st.sampled_from([None, True]))
def test_decay_zero_copies_and_one_skips_bit_exactly(backend: Backend, data, decay, copy) -> None:
    s_host, p_host = data
    shadow, params = backend.asarray(s_host), backend.asarray(p_host)
    out = ema.ema_update({"x": shadow}, {"x": params}, 1, decay=decay, copy=copy)["x"]
    assert _bits(out) == (p_host if decay == 0.0 else s_host).tobytes()


@SETTINGS
@given(data=pair(), decay=decays)
def test_bf16_params_into_float32_shadow_exact_ends(bf16_backend: Backend, data, decay) -> None:
    backend = bf16_backend
    s_host, p_host = data
    params = backend.asarray(p_host, "bfloat16")
    out = ema.ema_update(backend.asarray(s_host), params, 3, decay=decay)
    if decay == 0.0:
        assert _bits(out) == to_numpy(params).astype(np.float32).tobytes()
    elif decay == 1.0:
        assert _bits(out) == s_host.tobytes()


@SETTINGS
@given(shape=shapes, value=values, decay=decays)
def test_constant_is_a_fixed_point(backend: Backend, shape, value, decay) -> None:
    host = np.full(shape, value, dtype=np.float32)
    out = ema.ema_update(backend.asarray(host), backend.asarray(host), 5, decay=decay)
    np.testing.assert_array_equal(to_numpy(out), host)  # exact (-0.0 may come back as +0.0)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_average_stays_within_running_min_max(backend: Backend, shape, data) -> None:
    steps = data.draw(st.integers(1, 6))
    seq = [data.draw(hnp.arrays(np.float32, shape, elements=values)) for _ in range(steps + 1)]
    shadow = backend.asarray(seq[0])
    low, high = seq[0].copy(), seq[0].copy()
    for t, p in enumerate(seq[1:], 1):
        shadow = ema.ema_update(shadow, backend.asarray(p), t, decay=data.draw(decays))
        low, high = np.minimum(low, p), np.maximum(high, p)
        got = to_numpy(shadow)
        assert np.all(got >= low) and np.all(got <= high)


@SETTINGS
@given(
    value=values,
    spec=st.sampled_from(SPECS),
    init=st.sampled_from(["zeros", "copy"]),
    interval=st.integers(1, 3),
    steps=st.integers(1, 8),
)
def test_debiased_average_of_a_constant_is_the_constant(
    backend, value, spec, init, interval, steps
) -> None:
    cfg = ema.Config(schedule=spec.build(), init=init, interval=interval)
    params = {"x": backend.asarray(np.full(3, value, dtype=np.float32))}
    state = ema.init(params, cfg)
    for _ in range(steps):
        state = ema.update(state, params, cfg)
    if float(state.weight) == 0.0:  # no update applied yet: nothing to debias
        return
    assert_close(ema.average(state, cfg)["x"], np.full(3, value), "float32", ulps=8)


@SETTINGS
@given(
    data=pair("float64"), spec=st.sampled_from(SPECS[1:6]), n=st.integers(2, 4), k=st.integers(1, 3)
)
def test_compensated_interval_equals_every_step(backend, data, spec, n, k) -> None:
    """With params held fixed between updates, every(s, n) == updating every step with s."""
    if backend.name is Name.JAX:
        data = tuple(a.astype(np.float32) for a in data)
    s_host, p_host = data
    sched = spec.build()
    gated, stepwise = backend.asarray(s_host), backend.asarray(s_host)
    params = backend.asarray(p_host)
    for t in range(1, n * k + 1):
        gated = ema.ema_update(gated, params, t, schedule=schedules.every(sched, n))
        stepwise = ema.ema_update(stepwise, params, t, schedule=sched)
    dtype = "float32" if backend.name is Name.JAX else "float64"
    assert_close(gated, to_numpy(stepwise), dtype, ulps=16 * n * k)


@SETTINGS
@given(data=pair(), decay=decays, t=st.integers(0, 50))
def test_in_place_equals_copy(backend: Backend, data, decay, t) -> None:
    s_host, p_host = data
    new = ema.ema_update(
        backend.asarray(s_host), backend.asarray(p_host), t, decay=decay, copy=True
    )
    shadow = backend.asarray(s_host)
    same = ema.ema_update(shadow, backend.asarray(p_host), t, decay=decay)
    assert _bits(new) == _bits(same)
    if backend.name is not Name.JAX:
        assert same is shadow


@SETTINGS
@given(data=pair(), decay=decays)
def test_device_decay_equals_host_decay(float64_backend: Backend, data, decay) -> None:
    """A 0-d float64 decay array gives exactly the values of the same decay as a Python float
    (JAX without x64 holds such an array in float32: see the README). Values, not bits: with a
    device decay torch's fused lerp may return +0.0 where a host decay of 0 copies a -0.0."""
    backend = float64_backend
    s_host, p_host = data
    host = ema.ema_update(backend.asarray(s_host), backend.asarray(p_host), 1, decay=decay)
    dev_decay = backend.asarray(np.asarray(decay, dtype=np.float64))
    dev = ema.ema_update(backend.asarray(s_host), backend.asarray(p_host), 1, decay=dev_decay)
    np.testing.assert_array_equal(to_numpy(dev), to_numpy(host))  # exact, no tolerance


@SETTINGS
@given(
    data=pair(),
    spec=st.sampled_from(SPECS),
    steps=st.integers(1, 5),
    init=st.sampled_from(["params", "copy", "zeros"]),
)
def test_jit_equals_eager(data, spec, steps, init) -> None:
    jax = pytest.importorskip("jax")
    s_host, _ = data
    cfg = ema.Config(schedule=spec.build(), init=init)
    params = {"w": jax.numpy.asarray(s_host), "n": jax.numpy.arange(3)}
    eager = jitted = ema.init(params, cfg)
    step = jax.jit(lambda state, p: ema.update(state, p, cfg))
    for i in range(steps):
        moved = {"w": params["w"] * (1 + i) - i, "n": params["n"] + i}
        eager, jitted = ema.update(eager, moved, cfg), step(jitted, moved)
    assert int(jitted.step) == int(eager.step) == steps
    assert_close(jitted.shadow["w"], to_numpy(eager.shadow["w"]), "float32", ulps=4)
    np.testing.assert_array_equal(to_numpy(jitted.shadow["n"]), to_numpy(eager.shadow["n"]))
    avg = jax.jit(lambda s: ema.average(s, cfg))(jitted)["w"]
    assert_close(avg, to_numpy(ema.average(eager, cfg)["w"]), "float32", ulps=4)
