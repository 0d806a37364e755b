"""Core fixes from the hunt of 2026-12-05: ints no float holds are ``ValueError``s, and a Python
int step saturates at 2**63 - 1."""

from __future__ import annotations

import numpy as np
import pytest

import ema_core as ema
from ema_core import EMAState, posthoc, schedules


def test_ints_no_float_holds_are_value_errors() -> None:
    shadow = {"w": np.zeros(2)}
    config = ema.Config(0.9, init="zeros")
    for call in (
        lambda: ema.update(EMAState(0, shadow, 10**400), {"w": np.ones(2)}, config),
        lambda: ema.average(EMAState(3, shadow, 10**400), config),
    ):
        with pytest.raises(ValueError, match=r"state.weight .* an int too large for a float"):
            call()
    assert np.array_equal(shadow["w"], np.zeros(2))
    with pytest.raises(ValueError, match="gamma must be a finite number > -1, got an int"):
        schedules.gamma_to_sigma_rel(10**400)
    with pytest.raises(ValueError, match="gamma must be a finite number, got an int too large"):
        posthoc.gamma_to_sigma_rel(10**400)


def test_a_python_int_step_saturates_at_the_int64_top() -> None:
    top = 2**63 - 1
    state = EMAState(top, {"w": np.zeros(2)}, 1.0)
    new = ema.update(state, {"w": np.ones(2)}, ema.Config(0.5))
    assert new.step == top
    assert np.array_equal(new.shadow["w"], np.full(2, 0.5))


def test_copy_under_a_callable_is_at_step_one_and_gated_waits_as_the_readme_says() -> None:
    late = ema.Config(schedule=lambda t: 1.0 if t <= 3 else 0.5, init="copy")
    assert [late.decay(t) for t in range(1, 6)] == [0.0, 1.0, 1.0, 0.5, 0.5]
    gated = ema.Config(schedule=schedules.gated(0.5, start=4), init="copy")
    assert [gated.decay(t) for t in range(1, 6)] == [1.0, 1.0, 1.0, 0.0, 0.5]
