"""Preset fixes of the claims check of 2026-12-05: an interval or step offset past int64 named
the gate's own argument (``every``, ``phase``, ``offset``) and a value the user never gave, and
``edm2(batch_size=<huge int>)`` raised ``OverflowError``; each is now a ``ValueError`` naming
the preset's argument."""

from __future__ import annotations

import pytest

from ema_core import presets

BIG = 2**63


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: presets.ema_pytorch(update_every=BIG), "update_every"),
        (lambda: presets.ema_pytorch_karras(sigma_rel=0.1, update_every=BIG), "update_every"),
        (lambda: presets.mmedit(interval=BIG), "interval"),
        (lambda: presets.torchtitan(update_every_n_steps=BIG), "update_every_n_steps"),
        (lambda: presets.torchtitan(start_step=BIG), "start_step"),
        (lambda: presets.torchtitan(step_bias=BIG), "step_bias"),
        (lambda: presets.torchtitan(start_step=-(2**70)), "start_step"),
        (lambda: presets.edm2(halflife_Mimg=1.0, batch_size=10**400), "batch_size"),
    ],
)
def test_a_value_past_int64_is_a_value_error_naming_the_presets_argument(make, name):
    with pytest.raises(ValueError, match=rf"^{name} must be an int in \[.*\] \(an int64\)"):
        make()


def test_torchtitans_step_bias_and_start_step_must_differ_by_an_int64():
    top = 2**63 - 1
    with pytest.raises(ValueError, match=r"step_bias - start_step must fit an int64 step"):
        presets.torchtitan(start_step=-top, step_bias=top)
    edge = presets.torchtitan(start_step=-top, step_bias=0)  # a difference of 2**63 - 1: builds
    assert 0.0 <= edge.decay(1) <= 1.0
