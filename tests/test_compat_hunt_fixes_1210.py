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


def test_tf_names_drop_the_output_index_as_tf_does() -> None:
    # TF2's var.name is "dense/kernel:0"; TF saves its average as
    # "dense/kernel/ExponentialMovingAverage" and restores the others by var.op.name
    import numpy as np

    from ema_core.compat.tensorflow import ExponentialMovingAverage

    kernel, bias = np.ones((2, 2), np.float32), np.zeros(2, np.float32)
    averaged = ExponentialMovingAverage(0.99)
    averaged.apply([("dense/kernel:0", kernel), ("dense/bias:0", bias)])
    assert averaged.average_name("dense/kernel:0") == "dense/kernel/ExponentialMovingAverage"
    restore = averaged.variables_to_restore([("dense/kernel:0", kernel)])
    assert sorted(restore) == ["dense/bias", "dense/kernel/ExponentialMovingAverage"]
    assert restore["dense/bias"] is bias


def test_tf_variables_to_restore_merges_a_variable_listed_twice() -> None:
    # TF's default moving_avg_variables (moving_average_variables() + trainable_variables())
    # overlap and are merged; the list was refused as "averaged once"
    torch = pytest.importorskip("torch")
    from ema_core.compat.tensorflow import ExponentialMovingAverage

    model = torch.nn.Linear(2, 2)
    averaged = ExponentialMovingAverage(0.9)
    averaged.apply(model)
    restore = averaged.variables_to_restore([model.weight, model.weight, ("bias", model.bias)])
    assert sorted(restore) == ["bias/ExponentialMovingAverage", "weight/ExponentialMovingAverage"]
    with pytest.raises(ValueError, match=r"var_list\[1\] repeats"):
        averaged.apply([model.weight, model.weight])  # apply still refuses it
