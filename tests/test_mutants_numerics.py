"""Tests that kill mutants of the numerics (``_core``, ``_ops``, ``schedules``, ``presets``) which
the rest of the suite let live. Each expected value is computed here from the documented formula;
each test was checked to fail with its mutant applied and to pass on the code as it is."""

from __future__ import annotations

import struct

import pytest

import ema_core as ema
from ema_core import presets, schedules


def _f32(value: float) -> float:
    """``value`` rounded to float32, as Keras forms ``ema_momentum`` for float32 variables."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


def test_annealing_default_gamma_is_mmengines_100() -> None:
    """``annealing(momentum)`` uses mmengine's default ``gamma=100``:
    ``d_t = 1 - max(momentum, 100 / (100 + t))``."""
    t = 5
    assert schedules.annealing(0.0002)(t) == pytest.approx(1 - 100 / (100 + t), rel=1e-14)


def test_gated_first_update_is_the_first_step_on_the_gate() -> None:
    """``gated(every=n)`` from ``start=0`` first updates at ``t = n`` (the first t >= 1 with
    ``t % n == 0``), so ``init="copy"`` copies there and not at a step the gate skips."""
    schedule = schedules.gated(0.9, every=3)
    assert schedule.first_update == 3
    cfg = ema.Config(schedule, init="copy")
    assert [cfg.decay(t) for t in range(1, 7)] == [1.0, 1.0, 0.0, 1.0, 1.0, 0.9]


def test_gated_floor_caps_the_rate_too() -> None:
    """``gated(floor=f)`` lifts the decay to ``f`` and the rate with it to ``1 - f``."""
    decay, rate = schedules.gated(schedules.constant(0.5), floor=0.75).decay_and_rate(3)
    assert (decay, rate) == (0.75, 0.25)


def test_counter_presets_accept_a_counter_of_two_to_the_53() -> None:
    """A counter start may be ``2**53`` (the documented ``[0, 2**53]``): its decay is the cap."""
    cfg = presets.allennlp(0.9, num_updates=2**53)
    assert cfg.decay(1) == 0.9


def test_edm2_traditional_half_life_is_in_optimizer_steps() -> None:
    """``edm2(halflife_Mimg=h, batch_size=b)`` halves every ``h * 1e6 / b`` steps once the ramp
    is past it."""
    cfg = presets.edm2(halflife_Mimg=0.01, batch_size=1000, rampup_ratio=0.09)
    steps = 0.01 * 1e6 / 1000  # 10 steps; the ramp 0.09 t passes it at t > 111
    assert cfg.decay(1000) == pytest.approx(0.5 ** (1 / steps), rel=1e-14)


def test_keras_leaves_the_non_trainable_variables_live() -> None:
    """Keras averages the trainable variables only: its preset skips buffers (BatchNorm's
    moving statistics stay live) and copies on the first step, then blends at float32(0.9)."""
    cfg = presets.keras(0.9)
    assert cfg.buffers == "skip"
    assert [cfg.decay(t) for t in (1, 2)] == [0.0, _f32(0.9)]
