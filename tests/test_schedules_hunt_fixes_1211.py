"""Schedule fixes of the claims check of 2026-12-05: a callable inside a nested gate
(``every(gated(f))``, ``gated(every(f))``, or ``gated(f)`` under an interval) was called
thousands of times while the ``Config`` was built, to find the first update, and ``init="copy"``
then copied at the step it found instead of the gate's first step."""

from __future__ import annotations

import numpy as np
import pytest

import ema_core as ema
from ema_core import schedules


def _counting(calls):
    def f(t):
        calls.append(t)
        return 1.0 if t <= 3000 else 0.5

    return f


@pytest.mark.parametrize(
    ("build", "first"),
    [
        # looked for over the gates alone (f stood in by a decay that moves): f is not asked
        (lambda f: ema.Config(schedule=schedules.gated(f, start=2), interval=3, init="copy"), 3),
        (lambda f: ema.Config(schedules.gated(schedules.every(f, 3), start=2), init="copy"), 3),
        (lambda f: ema.Config(schedules.every(schedules.gated(f, every=2), 4), init="copy"), 4),
        (
            lambda f: ema.Config(
                schedules.gated(schedules.every(f, 3, False), every=2), init="copy"
            ),
            6,
        ),
    ],
)
def test_a_callable_in_a_nested_gate_is_never_called_ahead(build, first):
    calls = []
    config = build(_counting(calls))
    assert calls == [] and config.effective_schedule.first_update == first


def test_the_copy_of_a_callable_under_a_gate_and_an_interval_is_at_the_first_due_step():
    config = ema.Config(schedule=schedules.gated(lambda t: 1.0, start=2), interval=3, init="copy")
    state = ema.init({"w": np.array([-1.0])}, config)
    for t in range(1, 4):
        state = ema.update(state, {"w": np.array([float(t)])}, config)
    assert float(ema.average(state, config)["w"][0]) == 3.0  # copied at t = 3


def test_built_in_schedules_in_a_nested_gate_are_still_looked_for():
    config = ema.Config(schedule=schedules.gated(0.5, start=5), interval=3, init="copy")
    assert config.effective_schedule.first_update == 6  # the README's example
    nested = ema.Config(schedule=schedules.gated(schedules.every(0.5, 3), start=2))
    assert nested.effective_schedule.first_update == 3  # looked for: the first moving step
