"""Hostile arguments to the presets: an int too large for a float, where a preset reads its
argument as a float, is a ``ValueError`` naming the argument (it was an ``OverflowError`` from
``float()`` or ``math.isfinite``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ema_core import presets

HUGE = 10**400

CASES: list[tuple[Callable[[], Any], str]] = [
    (lambda: presets.timm(HUGE), r"decay must be in \[0.0, 1.0\], got an int of 1329 bits"),
    (lambda: presets.swa_utils(HUGE), r"decay must be in \[0.0, 1.0\]"),
    (lambda: presets.mmedit(HUGE), r"momentum must be in \[0.0, 1.0\]"),
    (lambda: presets.mmedit(gamma=HUGE), r"gamma must be a finite number > 0, got an int of"),
    (lambda: presets.ema_pytorch_karras(gamma=HUGE), r"gamma must be a finite number > -1"),
    (lambda: presets.allennlp(numerator=HUGE, num_updates=1), r"numerator must be in"),
    (lambda: presets.torchtitan(half_life_fraction=HUGE), r"half_life_fraction must be a finite"),
    (
        lambda: presets.edm2(halflife_Mimg=1.0, rampup_ratio=HUGE, batch_size=4),
        r"rampup_ratio must be a finite number > 0",
    ),
]


@pytest.mark.parametrize(("make", "said"), CASES)
def test_an_int_past_the_largest_float_is_a_value_error(make: Callable[[], Any], said: str) -> None:
    with pytest.raises(ValueError, match=said):
        make()


def test_an_int_below_the_largest_float_still_counts() -> None:
    # only ints a float cannot hold are refused: an int rampup ratio or gamma stays a number
    assert presets.ema_pytorch_karras(gamma=2**1000, update_every=1).decay(1) == 0.0
    assert presets.edm2(halflife_Mimg=1.0, rampup_ratio=1, batch_size=4).decay(2) > 0.0
