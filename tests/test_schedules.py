"""Schedules against their formulas, on Python ints and on 0-d arrays of every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ema_core as ema
from ema_core import schedules
from tests.conftest import Backend, Name, to_numpy
from tests.reference import SPECS, Spec

IDS = [f"{s.name}{s.args}{s.kwargs}" for s in SPECS]


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_python_int_matches_formula(spec: Spec) -> None:
    sched = spec.build()
    for t in range(0, 60):
        got = sched(t)
        assert isinstance(got, float)
        assert got == pytest.approx(spec.decay(t), rel=1e-12, abs=1e-15), t
        assert sched.rate(t) == pytest.approx(1 - spec.decay(t), rel=1e-9, abs=1e-15), t


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_array_step_matches_int_step(backend: Backend, spec: Spec) -> None:
    sched = spec.build()
    wide32 = backend.name is Name.JAX  # JAX without x64 computes in float32
    for t in (0, 1, 2, 3, 7, 100, 12345):
        step = backend.asarray(np.asarray(t, dtype=np.int32 if wide32 else np.int64))
        decay, rate = sched.decay_and_rate(step)
        assert tuple(decay.shape) == () and tuple(rate.shape) == ()
        want_d, want_r = sched(t), sched.rate(t)
        rel = 2e-6 if wide32 else 1e-14  # float32: a few ulps of exp(log(...))
        assert float(to_numpy(decay)) == pytest.approx(want_d, rel=rel, abs=1e-30), t
        # the rate keeps its relative precision even where 1 - decay would cancel
        assert float(to_numpy(rate)) == pytest.approx(want_r, rel=rel, abs=1e-30), t


def test_rate_keeps_precision_in_float32() -> None:
    jnp = pytest.importorskip("jax.numpy")
    for sched in (
        schedules.constant(0.99999),
        schedules.warmup(0.999999),
        schedules.num_updates(0.99999),
        schedules.half_life(1e6),
    ):
        t = 10**7
        rate = float(sched.rate(jnp.asarray(t)))
        assert rate == pytest.approx(sched.rate(t), rel=1e-6)
        naive = 1.0 - float(np.float32(sched(t)))
        assert abs(naive - sched.rate(t)) > 1e-4 * sched.rate(t)  # what the rate avoids


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("spec", SPECS[2:6], ids=IDS[2:6])
def test_every_compensates_with_the_product(spec: Spec, n: int) -> None:
    inner = spec.build()
    comp, plain = schedules.every(inner, n), schedules.every(inner, n, compensate=False)
    for t in range(1, 31):
        if t % n:
            assert comp(t) == 1.0 and comp.rate(t) == 0.0 and plain(t) == 1.0
            continue
        product = math.prod(inner(k) for k in range(t - n + 1, t + 1))
        assert comp(t) == pytest.approx(product, rel=1e-12, abs=1e-300)
        assert comp.rate(t) == pytest.approx(1 - product, rel=1e-9, abs=1e-300)
        assert plain(t) == inner(t)


def test_every_on_arrays_matches_ints(backend: Backend) -> None:
    sched = schedules.every(schedules.warmup(0.99), 3)
    dtype = np.int32 if backend.name is Name.JAX else np.int64
    for t in range(0, 10):
        got = float(to_numpy(sched(backend.asarray(np.asarray(t, dtype=dtype)))))
        assert got == pytest.approx(sched(t), rel=1e-6, abs=1e-12)


def test_config_decay_applies_interval_and_copy() -> None:
    cfg = ema.Config(schedule=0.9, init="copy", interval=2, compensate=True)
    assert [cfg.decay(t) for t in range(1, 7)] == pytest.approx([1, 0, 1, 0.81, 1, 0.81])
    cfg = ema.Config(schedule=schedules.warmup(0.9), init="copy")
    assert cfg.decay(1) == 0.0 and cfg.decay(2) == schedules.warmup(0.9)(2)


def test_sigma_rel_gamma_relation() -> None:
    # EDM2's published pairs: sigma_rel 0.05 <-> gamma 16.97, 0.10 <-> 6.94
    assert schedules.sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert schedules.sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for gamma in (0.5, 3.0, 16.97, 100.0):
        sigma = schedules.gamma_to_sigma_rel(gamma)
        assert schedules.sigma_rel_to_gamma(sigma) == pytest.approx(gamma, rel=1e-9)
    assert schedules.power_function(sigma_rel=0.05) == schedules.power_function(
        schedules.sigma_rel_to_gamma(0.05)
    )


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: schedules.constant(1.5), ValueError),
        (lambda: schedules.constant(float("nan")), ValueError),
        (lambda: schedules.constant("0.9"), TypeError),
        (lambda: schedules.constant(True), TypeError),
        (lambda: schedules.num_updates(0.9, denominator=0), ValueError),
        (lambda: schedules.warmup(0.9, power=-1), ValueError),
        (lambda: schedules.warmup(0.9, min_decay=0.95), ValueError),
        (schedules.power_function, TypeError),
        (lambda: schedules.power_function(1.0, sigma_rel=0.1), TypeError),
        (lambda: schedules.power_function(sigma_rel=0.5), ValueError),
        (lambda: schedules.power_function(-0.5), ValueError),
        (lambda: schedules.half_life(0), ValueError),
        (lambda: schedules.annealing(2.0), ValueError),
        (lambda: schedules.every(schedules.constant(0.9), 0), ValueError),
        (lambda: schedules.every(schedules.constant(0.9), 2.0), TypeError),
        (lambda: schedules.every("x", 2), TypeError),
    ],
)
def test_bad_schedule_arguments(make, error) -> None:
    with pytest.raises(error):
        make()


@pytest.mark.parametrize(
    ("t", "error", "match"),
    [
        (-1, ValueError, ">= 0"),
        (1.0, TypeError, "int"),
        (True, TypeError, "int"),
        (np.zeros(2, dtype=np.int64), TypeError, "0-d"),
        (np.asarray(1.0), TypeError, "integer"),
        (np.asarray(-3), ValueError, ">= 0"),
    ],
)
def test_bad_steps(t, error, match) -> None:
    with pytest.raises(error, match=match):
        schedules.constant(0.5)(t)
