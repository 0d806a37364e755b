"""Core fixes from the hunt of 2026-12-05: ints no float holds are ``ValueError``s, and an update
past the last Python int step names ``state.step``."""

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
    for call in (
        lambda: posthoc.sigma_rel_to_gamma(10**400),
        lambda: posthoc.save_snapshot("unused", {"w": np.ones(1)}, step=1, sigma_rel=10**400),
        lambda: posthoc.reconstruct("unused", 10**400),
    ):
        with pytest.raises(
            ValueError, match=r"sigma_rel must be in \(0, 12\*\*-0\.5.*int too large"
        ):
            call()


def test_an_update_past_the_last_int_step_names_state_step() -> None:
    top = 2**63 - 1
    shadow = {"w": np.zeros(2)}
    with pytest.raises(ValueError, match=r"state\.step is 2\*\*63 - 1, the largest step"):
        ema.update(EMAState(top, shadow, 1.0), {"w": np.ones(2)}, ema.Config(0.5))
    assert np.array_equal(shadow["w"], np.zeros(2))
    assert (
        ema.update(EMAState(top - 1, shadow, 1.0), {"w": np.ones(2)}, ema.Config(0.5)).step == top
    )


def test_copy_under_a_callable_is_at_step_one_and_gated_waits_as_the_readme_says() -> None:
    late = ema.Config(schedule=lambda t: 1.0 if t <= 3 else 0.5, init="copy")
    assert [late.decay(t) for t in range(1, 6)] == [0.0, 1.0, 1.0, 0.5, 0.5]
    gated = ema.Config(schedule=schedules.gated(0.5, start=4), init="copy")
    assert [gated.decay(t) for t in range(1, 6)] == [1.0, 1.0, 1.0, 0.0, 0.5]
