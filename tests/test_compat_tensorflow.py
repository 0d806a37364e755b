"""TensorFlow drop-in: the float32 decay, shadows created and updated by the first apply,
num_updates as int / array / callable, zero_debias, TF naming, JAX by name, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from ema_core.compat.tensorflow import ExponentialMovingAverage
from tests.conftest import assert_close, to_numpy


def _tf_decay(decay, n):
    """TF: the decay and (1 + n) / (10 + n) in float32, and 1 - decay in float32."""
    d = np.float32(decay)
    if n is not None:
        n32 = np.float32(n)
        d = min(d, (np.float32(1) + n32) / (np.float32(10) + n32))
    return d, np.float32(1) - d


def test_trajectory_matches_tf_in_float32(backend):
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(5).astype(np.float32) for _ in range(60)]
    step = np.zeros((), dtype=np.int64)
    ema = ExponentialMovingAverage(0.999, num_updates=step)  # a mutable 0-d counter
    ref = values[0].copy()
    for t, value in enumerate(values):
        step[...] = t
        ema.apply({"w": backend.asarray(value)})
        _, rate = _tf_decay(0.999, t)
        ref = ref - rate * (ref - value)  # TF's assign_sub form, in float32
        assert ref.dtype == np.float32
        assert_close(ema.average("w"), ref, "float32", ulps=4, what=f"apply {t}")


def test_first_apply_creates_the_shadow_from_the_variable():
    w = np.arange(3, dtype=np.float32)
    ema = ExponentialMovingAverage(0.5)
    ema.apply([w])
    assert np.array_equal(ema.average(w), w)
    assert ema.average(w) is not w
    w += 2.0
    ema.apply([w])
    assert np.array_equal(ema.average(w), np.arange(3, dtype=np.float32) + 1.0)
    assert ema.average(np.zeros(3)) is None


def test_num_updates_callable_and_int():
    counter = {"n": 0}
    ema = ExponentialMovingAverage(0.9, num_updates=lambda: counter["n"])
    fixed = ExponentialMovingAverage(0.9, num_updates=1)
    w = np.zeros(2, dtype=np.float32)
    ema.apply([("w", w)])
    fixed.apply([("w", w)])
    w += 1.0
    counter["n"] = 1
    ema.apply([("w", w)])
    fixed.apply([("w", w)])
    _, rate = _tf_decay(0.9, 1)
    np.testing.assert_array_equal(ema.average("w"), np.float32(0) + rate * np.float32(1))
    np.testing.assert_array_equal(ema.average("w"), fixed.average("w"))


def test_zero_debias_reads_the_debiased_value(backend):
    rng = np.random.default_rng(1)
    values = [rng.standard_normal(4).astype(np.float32) for _ in range(30)]
    ema = ExponentialMovingAverage(0.9, num_updates=lambda: counter[0], zero_debias=True)
    counter = [0]
    biased = np.zeros(4)
    for k, value in enumerate(values, start=1):
        counter[0] = k + 3
        ema.apply({"x": backend.asarray(value)})
        d, rate = _tf_decay(0.9, k + 3)
        biased = biased - float(rate) * (biased - value)
        want = biased / (1.0 - float(d) ** k)
        assert_close(ema.average("x"), want, "float32", ulps=8, what=f"apply {k}")
    assert abs(to_numpy(ema.average("x"))[0] - values[-1][0]) < 3  # debiased, not near zero


def test_average_name_and_variables_to_restore():
    kernel, bias = np.zeros(2, dtype=np.float32), np.zeros(1, dtype=np.float32)
    ema = ExponentialMovingAverage(0.9, name="EMA")
    ema.apply([("dense/kernel", kernel), ("dense/bias", bias)])
    assert ema.average_name("dense/kernel") == "dense/kernel/EMA"
    assert ema.average_name(kernel) == "dense/kernel/EMA"
    assert ema.variables_to_restore() == {"dense/kernel/EMA": kernel, "dense/bias/EMA": bias}
    partial = ema.variables_to_restore([("dense/kernel", kernel)])
    assert partial == {"dense/kernel/EMA": kernel, "dense/bias": bias}
    with pytest.raises(ValueError, match="named"):
        ema.average_name(np.zeros(2))


def test_torch_module_is_named_by_its_parameters():
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(2, 1)
    ema = ExponentialMovingAverage(0.5)
    ema.apply(model)
    with torch.no_grad():
        model.bias.add_(2.0)
    ema.apply(model)
    assert torch.allclose(ema.average("bias"), model.bias - 1.0)
    assert ema.average_name("weight") == "weight/ExponentialMovingAverage"


def test_bad_input():
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(1.2)
    with pytest.raises(TypeError, match="zero_debias"):
        ExponentialMovingAverage(0.9, zero_debias=1)
    with pytest.raises(ValueError, match="num_updates"):
        ExponentialMovingAverage(0.9, num_updates=-3)
    ema = ExponentialMovingAverage(0.9)
    with pytest.raises(TypeError, match="float"):
        ema.apply([np.zeros(2, dtype=np.int32)])
    ema.apply([("w", np.zeros(2))])
    with pytest.raises(ValueError, match="shape"):
        ema.apply([("w", np.zeros(3))])
    assert np.array_equal(ema.average("w"), np.zeros(2))
