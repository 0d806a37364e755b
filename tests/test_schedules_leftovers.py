"""Schedules, leftovers of the hostile-input round: ``every`` with a huge interval evaluates
its product in bounded memory (and a step the host reads skips it when gated off), and a
constant decay of ``-0.0`` is the decay ``+0.0``."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from ema_core import schedules
from ema_core._ops import ArrayOps
from ema_core.schedules._every import Every

torch = pytest.importorskip("torch")
xps = pytest.importorskip("array_api_strict")

HUGE = 2**40


def test_every_with_a_huge_interval_on_a_cpu_tensor_step_allocates_nothing_per_step():
    """The gate is off below t = n: a count the host reads (a CPU tensor) returns decay 1
    without evaluating the n decays (it allocated 2**40 counts, 8 TiB, and raised)."""
    s = schedules.every(0.9, HUGE)
    for t in (0, 1, 5, 2**31):
        decay, rate = s.decay_and_rate(torch.tensor(t))
        assert decay.dtype == rate.dtype == torch.float64
        assert float(decay) == 1.0 and float(rate) == 0.0


def test_every_huge_interval_through_the_torch_ema_class_with_tensor_steps():
    from ema_core.torch import EMA

    model = torch.nn.Linear(3, 2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    average = EMA(model, schedule=schedules.every(0.9, HUGE))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for t in (1, 2, 3):
        average.update(torch.tensor(t))
    for name, shadow in average.average.items():
        assert torch.equal(shadow, before[name]), name  # decay 1: nothing moved


@pytest.mark.parametrize("inner", [0.9, schedules.warmup(0.99)], ids=["constant", "warmup"])
def test_every_device_product_memory_does_not_grow_with_n(inner):
    """The array-count product (the path of a count the host cannot read: CUDA, traced by
    torch) evaluates the n steps in bounded blocks: its peak memory does not follow n."""
    n = 2**20  # the one-shot evaluation held several float64 arrays of n: > 30 MB
    s = schedules.every(inner, n)
    assert isinstance(s, Every)
    ops = ArrayOps(xps.asarray(n, dtype=xps.int64))  # numpy memory, which tracemalloc sees
    tracemalloc.start()
    try:
        decay, rate = s._gated_pair(ops)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak
    want_decay, want_rate = s.decay_and_rate(n)  # the host loop, step by step
    assert float(decay) == pytest.approx(want_decay, rel=1e-9, abs=1e-300)
    assert float(rate) == pytest.approx(want_rate, rel=1e-9)


@pytest.mark.parametrize("n", [1, 3, 4096, 4097, 10_000])
def test_every_blocked_product_matches_the_host_loop(n):
    s = schedules.every(schedules.warmup(0.9999), n)
    for t in (n, 2 * n):
        decay, rate = s.decay_and_rate(np.asarray(t, dtype=np.int64))  # host: the loop
        got = s._gated_pair(ArrayOps(torch.tensor(t)))
        assert float(got[0]) == pytest.approx(decay, rel=1e-12, abs=1e-300)
        assert float(got[1]) == pytest.approx(rate, rel=1e-9)


def test_every_on_a_cpu_tensor_step_matches_the_int_step_when_gated_on():
    s = schedules.every(schedules.warmup(0.99), 3)
    for t in range(0, 13):
        got = s.decay_and_rate(torch.tensor(t))
        want = s.decay_and_rate(t)
        assert float(got[0]) == pytest.approx(want[0], rel=1e-12, abs=1e-300)
        assert float(got[1]) == pytest.approx(want[1], rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("build", [schedules.constant, schedules.as_schedule])
def test_constant_minus_zero_is_the_decay_plus_zero(build):
    s = build(-0.0)
    decay = s(7)
    assert decay == 0.0 and math.copysign(1.0, decay) == 1.0
    assert math.copysign(1.0, float(s(torch.tensor(7)))) == 1.0
    assert s == schedules.constant(0.0)  # one schedule, one config text


def test_every_of_minus_zero_is_a_copy_at_each_gate():
    s = schedules.every(-0.0, 3)  # the product of three -0.0 decays was -0.0
    assert math.copysign(1.0, s(3)) == 1.0 and s.rate(3) == 1.0
