"""Tests that a mutation-testing audit found missing: each kills a small plausible bug that
the rest of the suite let through. Values are checked against formulas written out here."""

from __future__ import annotations

import decimal
import math

import numpy as np
import pytest

import ema_core as ema
from ema_core._bf16 import bf16_to_float32, float32_to_bf16


def test_a_copying_update_never_aliases_the_params() -> None:
    """Decay 0 (``init="copy"``'s first update) on the generic path makes a new array: the
    params changed in place afterwards leave the shadow as it was."""
    xp = pytest.importorskip("array_api_strict")
    cfg = ema.Config(schedule=0.9, init="copy")
    params = {"w": xp.asarray([1.0, 2.0])}
    state = ema.update(ema.init({"w": xp.asarray([0.0, 0.0])}, cfg), params, cfg)
    params["w"][...] = 7.0
    assert np.asarray(state.shadow["w"]).tolist() == [1.0, 2.0]


def test_a_python_float_weight_follows_the_weight_recursion() -> None:
    """``w_t = d w_{t-1} + (1 - d)`` with a decay whose two roles differ (not 0.5)."""
    state = ema.init({"w": np.zeros(2)})._replace(weight=0.25)
    new = ema.update(state, {"w": np.ones(2)}, ema.Config(schedule=0.9))
    assert isinstance(new.weight, float)
    assert new.weight == pytest.approx(0.9 * 0.25 + (1 - 0.9), rel=1e-15)


def test_a_device_weight_of_zero_reads_the_zeros() -> None:
    """Before the first update of a zeros EMA (weight 0) the read is the zeros, not 0 / 0."""
    torch = pytest.importorskip("torch")
    cfg = ema.Config(schedule=0.9, init="zeros")
    state = ema.init({"w": torch.ones(3)}, cfg)
    assert float(state.weight) == 0.0
    assert ema.average(state, cfg)["w"].tolist() == [0.0, 0.0, 0.0]


def test_a_decay_floor_clamps_the_rate_too() -> None:
    """``gated(floor=f)``: the decay is ``max(d, f)`` and the rate ``1 - max(d, f)``."""
    sched = ema.schedules.gated(0.1, floor=0.5)
    assert sched(3) == 0.5
    assert sched.rate(3) == 1.0 - 0.5


def test_in_float32_rate_is_one_minus_the_rounded_decay() -> None:
    d32 = float(np.float32(0.9))
    sched = ema.schedules.in_float32(0.9)
    assert sched(1) == d32
    assert sched.rate(1) == 1.0 - d32  # exact: Sterbenz


def _exact_rate(decays: list[float]) -> float:
    """``1 - prod(decays)`` in 60-digit decimal arithmetic from the floats' exact values."""
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        return float(1 - math.prod((decimal.Decimal(d) for d in decays), start=decimal.Decimal(1)))


def test_compensated_rate_keeps_its_relative_precision_near_one() -> None:
    """The rate of ``every``'s product is formed without ``1 - product``'s cancellation."""
    d = 1 - 1e-9
    assert ema.schedules.every(d, 2).rate(2) == pytest.approx(_exact_rate([d, d]), rel=1e-12, abs=0)


def test_power_function_rate_keeps_its_relative_precision_late() -> None:
    """``1 - (1 - 1/t) ** (gamma + 1)`` at t = 10**6, against 60-digit decimal arithmetic."""
    t, gamma = 10**6, 6.94
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        one = decimal.Decimal(1)
        want = float(one - (one - one / t) ** (decimal.Decimal(gamma) + 1))
    assert ema.schedules.power_function(gamma).rate(t) == pytest.approx(want, rel=1e-13, abs=0)


def test_interval_over_a_gated_schedule_copies_at_its_first_real_update() -> None:
    """``every(n=2)`` over a schedule that starts at 4 first updates at lcm(2, 4) = 4: that
    update copies (``init="copy"``); later ones apply the product of two 0.9 decays."""
    cfg = ema.Config(schedule=ema.schedules.gated(0.9, start=4), init="copy", interval=2)
    got = [cfg.decay(t) for t in range(1, 9)]
    assert got == pytest.approx([1.0, 1.0, 1.0, 0.0, 1.0, 0.81, 1.0, 0.81], rel=1e-15)


def test_a_frozen_integer_leaf_is_a_copy_of_the_params() -> None:
    """``init`` copies an integer leaf: ``non_float="freeze"`` keeps its value at init even
    when the params' array is changed in place afterwards."""
    cfg = ema.Config(schedule=0.9, non_float="freeze")
    params = {"w": np.ones(2), "n": np.array([1, 2])}
    state = ema.init(params, cfg)
    params["n"][...] = 9
    assert state.shadow["n"].tolist() == [1, 2]


def test_a_copied_integer_leaf_never_aliases_the_params() -> None:
    """On the generic path an integer leaf takes the params' value as a new array."""
    xp = pytest.importorskip("array_api_strict")
    cfg = ema.Config(schedule=0.9)
    params = {"w": xp.asarray([1.0]), "n": xp.asarray([3, 4])}
    state = ema.update(ema.init(params, cfg), params, cfg)
    params["n"][...] = 9
    assert np.asarray(state.shadow["n"]).tolist() == [3, 4]


def test_tensorflow_preset_rounds_its_decay_to_float32() -> None:
    d32 = float(np.float32(0.999))
    cfg = ema.presets.tensorflow(0.999)
    assert cfg.decay(5) == d32 != 0.999
    assert cfg.decay_and_rate(5)[1] == 1.0 - d32


def test_a_nan_with_only_low_payload_bits_stays_a_nan_in_bfloat16() -> None:
    """float32 NaNs 0x7F800001 / 0xFF800001 truncate to inf's bits; the conversion keeps them
    NaNs of the same sign (quiet)."""
    nans = np.array([0x7F800001, 0xFF800001], dtype=np.uint32).view(np.float32)
    back = bf16_to_float32(float32_to_bf16(nans))
    assert np.isnan(back).all()
    assert np.signbit(back).tolist() == [False, True]


def test_a_complex64_blend_computes_in_complex64_with_a_device_decay() -> None:
    """A 0-d decay array gives a complex64 shadow the host float decay's bits: both blend in
    complex64 (``p - d (p - s)`` below 0.5), never widened to complex128 first."""
    xp = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(0)
    s64, p64 = ((rng.normal(size=16) + 1j * rng.normal(size=16)).astype(np.complex64) for _ in "sp")
    s, p = xp.asarray(s64), xp.asarray(p64)
    host = np.asarray(ema.ema_update(s, p, 1, decay=0.3, copy=True))
    device = np.asarray(ema.ema_update(s, p, 1, decay=xp.asarray(0.3), copy=True))
    d = np.float32(0.3)
    assert np.array_equal(host, p64 - d * (p64 - s64))
    assert np.array_equal(device, host)


def test_warmup_divides_the_step_by_inv_gamma() -> None:
    sched = ema.schedules.warmup(0.9999, inv_gamma=10.0, power=0.75)
    for t in (1, 5, 40):
        want = 1 - (1 + t / 10.0) ** -0.75
        assert sched(t) == pytest.approx(want, rel=1e-14, abs=0)
        assert sched.rate(t) == pytest.approx(1 - want, rel=1e-12, abs=0)


def test_correction_none_reads_the_shadow_as_it_is() -> None:
    """``correction="none"``: the zero-started shadow, not divided by its weight."""
    cfg = ema.Config(schedule=0.9, init="zeros", correction="none")
    state = ema.update(ema.init({"w": np.zeros(2)}, cfg), {"w": np.full(2, 3.0)}, cfg)
    assert ema.average(state, cfg)["w"] == pytest.approx([(1 - 0.9) * 3.0] * 2, rel=1e-15)


def test_a_pure_update_copies_integer_leaves_into_new_arrays() -> None:
    """``update`` never aliases the params: an integer leaf changed in place afterwards
    leaves the new state's copy as it was (numpy backend)."""
    cfg = ema.Config(schedule=0.9)
    params = {"w": np.ones(2), "n": np.array([3, 4])}
    state = ema.init({"w": np.zeros(2), "n": np.array([0, 0])}, cfg)
    new = ema.update(state, params, cfg)
    params["n"][...] = 9
    assert new.shadow["n"].tolist() == [3, 4]


def test_max_sigma_rel_is_the_peak_of_the_power_profile_width() -> None:
    """sigma_rel(gamma) = sqrt((g+1) / ((g+2)**2 (g+3))) peaks at g = (sqrt(5) - 3) / 2 (the
    root of g**2 + 3g + 1 above -1), computed here in 40-digit decimal arithmetic."""
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        g = (decimal.Decimal(5).sqrt() - 3) / 2
        peak = float(((g + 1) / ((g + 2) ** 2 * (g + 3))).sqrt())
    widest = ema.schedules.MAX_SIGMA_REL
    assert widest == pytest.approx(peak, rel=1e-15, abs=0)
    grid = np.linspace(-0.9, 2.0, 2901)
    widths = np.sqrt((grid + 1) / ((grid + 2) ** 2 * (grid + 3)))
    assert widths.max() <= widest * (1 + 1e-15)


def test_gated_count_on_a_device_step_is_at_least_one() -> None:
    """``u = max((t + offset) // divisor, 1)`` also for a tensor step whose count is 0."""
    torch = pytest.importorskip("torch")
    sched = ema.schedules.gated(ema.schedules.num_updates(0.999), offset=-3)
    want = min(0.999, (1 + 1) / (10 + 1))  # num_updates at u = 1
    for t in (1, 2, 3, 4):
        assert float(sched(torch.tensor(t))) == pytest.approx(want, rel=1e-15)
        assert sched(t) == pytest.approx(want, rel=1e-15)


def test_momentum_rate_is_exactly_the_momentum() -> None:
    sched = ema.schedules.momentum(0.1)
    assert 1.0 - (1.0 - 0.1) != 0.1  # what forming it from the decay would lose
    assert sched.rate(1) == 0.1
    assert sched(1) == 1.0 - 0.1


def test_a_phased_gate_copies_at_its_first_gated_step() -> None:
    """``gated(every=3, phase=2)`` updates at t = 2, 5, ...: ``init="copy"`` copies at 2."""
    cfg = ema.Config(schedule=ema.schedules.gated(0.9, every=3, phase=2), init="copy")
    assert [cfg.decay(t) for t in range(1, 7)] == [1.0, 0.0, 1.0, 1.0, 0.9, 1.0]
