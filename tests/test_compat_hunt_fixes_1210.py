"""Fixes of the seeds hunt of 2026-12-05: a decay passed as mmengine's momentum is warned of."""

from __future__ import annotations

import pytest

from ema_core import presets


def test_a_momentum_above_one_half_is_warned_of_as_mmengine_does() -> None:
    with pytest.warns(UserWarning, match=r"momentum=0\.9999 is the weight of the NEW value"):
        config = presets.mmedit(0.9999)
    assert config.decay(2) == pytest.approx(1e-4)  # still built: mmengine only warns
    with pytest.warns(UserWarning, match=r"momentum=0\.75"):
        presets.mmedit(0.75, gamma=100.0)
    presets.mmedit(0.5)  # the edge: no warning (filterwarnings=error would raise)


def test_the_compat_class_warns_at_construction_and_when_momentum_is_set() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.compat.mmedit import ExponentialMovingAverage

    model = torch.nn.Linear(2, 2)
    with pytest.warns(UserWarning, match=r"momentum=0\.999 "):
        averaged = ExponentialMovingAverage(model, momentum=0.999)
    averaged.momentum = 0.001
    with pytest.warns(UserWarning, match=r"momentum=0\.99 "):
        averaged.momentum = 0.99


def test_setting_the_interval_does_not_warn_of_the_momentum_again() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.compat.mmedit import ExponentialMovingAverage

    with pytest.warns(UserWarning, match=r"momentum=0\.9 "):
        averaged = ExponentialMovingAverage(torch.nn.Linear(2, 2), momentum=0.9)
    averaged.interval = 3  # filterwarnings=error: a second warning would raise
    assert averaged.interval == 3
