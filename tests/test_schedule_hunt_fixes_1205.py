"""Schedule and stateless promises a hunt of 2026-12-05 found broken, each pinned: the first
update of nested ``every`` / ``gated`` schedules (where ``init="copy"`` copies) and a ``Config``
subclass's own ``decay_and_rate`` through ``ema_update(config=)`` and ``Config.decay``."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

import ema_core as ema
from ema_core import schedules as S

POWER = S.power_function(sigma_rel=0.1)
NESTED = [
    S.gated(0.5, start=5),
    S.gated(S.every(0.5, 3)),
    S.gated(S.every(POWER, 2), every=3),
    S.every(S.gated(0.5, start=5), 3),
    S.every(S.gated(0.5, start=5), 3, compensate=False),
    S.every(S.every(0.5, 3), 2),
    S.every(S.every(0.5, 3), 2, compensate=False),
    S.in_float32(S.gated(S.every(POWER, 4), start=7)),
]


@pytest.mark.parametrize("schedule", NESTED, ids=repr)
def test_first_update_is_the_first_step_that_moves(schedule: S.Schedule) -> None:
    """``every`` took the lcm of n and the inner first update, ``gated`` ignored its inner
    schedule: ``every(gated(start=5), 3)`` first updates at 6, not 15."""
    moving = next(t for t in itertools.count(1) if schedule(t) != 1.0)
    assert schedule.first_update == moving


def test_init_copy_copies_at_the_first_update_of_a_gated_interval() -> None:
    """README: ``init="copy"`` copies at the schedule's first update. With ``gated(start=5)``
    and ``interval=3`` it blended at 6, 9, 12 and copied at 15, wiping three updates."""
    config = ema.Config(schedule=S.gated(0.5, start=5), interval=3, init="copy")
    state = ema.init({"w": np.zeros(1)}, config)
    want = 0.0
    for t in range(1, 16):
        state = ema.update(state, {"w": np.full(1, float(t))}, config)
        if t == 6:
            want = 6.0
        elif t in (9, 12, 15):
            want = want + (1 - 0.125) * (t - want)  # every(…, 3) compensates: d = 0.5 ** 3
    assert state.shadow["w"][0] == want


@dataclasses.dataclass(frozen=True)
class _Halving(ema.Config):
    """A user's Config whose decays are its own."""

    def decay_and_rate(self, t: object, /) -> tuple[float, float]:
        return 0.5, 0.5


def test_a_config_subclass_decays_reach_ema_update_and_decay() -> None:
    """``update`` applied the subclass's 0.5, ``ema_update(config=)`` and ``Config.decay``
    the schedule's 0.9."""
    config = _Halving(schedule=0.9)
    assert config.decay(1) == 0.5
    got = ema.ema_update({"w": np.zeros(1)}, {"w": np.ones(1)}, 1, config=config)
    state = ema.update(ema.init({"w": np.zeros(1)}, config), {"w": np.ones(1)}, config)
    assert got["w"][0] == state.shadow["w"][0] == 0.5


def test_building_a_config_calls_no_plain_callable_schedule() -> None:
    """The first-update search called a user's callable while the ``Config`` was built: one
    written for array steps failed on a Python int, and one returning 1 for long made
    4,096,000 calls at ``interval=4096``. A plain inner schedule needs no search."""
    calls: list[object] = []

    def for_arrays(t: object) -> object:
        calls.append(t)
        return 1 - 1 / (t.astype(np.float64) + 10)  # type: ignore[attr-defined]

    config = ema.Config(schedule=for_arrays, interval=4096, init="copy")
    assert config.effective_schedule.first_update == 4096 and calls == []


def test_first_update_falls_back_to_the_lcm_past_the_search() -> None:
    """``every(gated(every=10**6), 4096, compensate=False)`` first moves at their lcm; the
    search finds nothing within its budget, and the fallback is that lcm, not a skipped step."""
    schedule = S.every(S.gated(0.9, every=10**6), 4096, compensate=False)
    assert schedule.first_update == 64_000_000
    assert schedule(64_000_000) == 0.9
