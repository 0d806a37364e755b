"""Paddle drop-in: zero start, float32 decay, apply()/restore() with the 1 - d**t correction,
the context manager's restore on error, thres_steps, JAX by new values."""

from __future__ import annotations

import numpy as np
import pytest

from ema_core.compat.paddle import ExponentialMovingAverage
from tests.conftest import Name, assert_close, to_numpy


def _paddle_reference(values, decay, thres=None):
    """Paddle's documented EMA in float64 with the float32 decay; returns the corrected value."""
    ema, d = np.zeros_like(values[0], dtype=np.float64), None
    for k, value in enumerate(values):
        d = np.float32(decay)
        if thres is not None:
            n = np.float32(thres + k)
            d = min(d, (np.float32(1) + n) / (np.float32(10) + n))
        ema = float(d) * ema + (1.0 - float(d)) * value
    return ema / (1.0 - float(d) ** len(values))


def test_apply_restore_round_trip_with_bias_correction(backend):
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((2, 3)).astype(np.float32) for _ in range(25)]
    w = backend.asarray(values[0])
    ema = ExponentialMovingAverage({"w": w}, decay=0.9, thres_steps=lambda: counter[0])
    counter = [1]
    for k, value in enumerate(values):
        counter[0] = 1 + k
        if backend.name is Name.JAX:
            ema.update({"w": backend.asarray(value)})
        else:
            ema.parameters["w"][...] = backend.asarray(value)
            ema.update()
    live = to_numpy(ema.parameters["w"]).copy()
    with ema.apply() as params:
        assert_close(params["w"], _paddle_reference(values, 0.9, 1), "float32", ulps=8)
        if backend.name is not Name.JAX:
            assert params["w"] is w  # written into the parameter itself
    assert np.array_equal(to_numpy(ema.parameters["w"]), live)  # restored exactly


def test_apply_before_update_leaves_zeros_and_restores_on_error():
    w = np.full(3, 7.0, dtype=np.float32)
    ema = ExponentialMovingAverage([w], decay=0.5)
    with pytest.raises(RuntimeError, match="boom"), ema.apply() as params:
        assert np.array_equal(params["0"], np.zeros(3))
        assert np.array_equal(w, np.zeros(3))
        raise RuntimeError("boom")
    assert np.array_equal(w, np.full(3, 7.0))


def test_need_restore_false_then_restore():
    w = np.full(2, 4.0, dtype=np.float32)
    ema = ExponentialMovingAverage([("w", w)], decay=0.75)
    ema.update()
    with ema.apply(need_restore=False):
        pass
    np.testing.assert_allclose(w, 4.0, rtol=1e-6)  # the corrected average of a constant
    w[...] = 0.0
    assert ema.parameters["w"] is w
    ema.restore()
    assert np.array_equal(w, np.full(2, 4.0, dtype=np.float32))


def test_torch_module_parameters():
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 1)
    ema = ExponentialMovingAverage(model, decay=0.5)
    first = model.weight.detach().clone()
    ema.update()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    with ema.apply():
        # (0.25 * first + 0.5 * (first + 1)) / (1 - 0.25)
        assert torch.allclose(model.weight, first + 2.0 / 3.0)
    assert torch.equal(model.weight, first + 1.0)


def test_bad_input():
    w = np.zeros(2)
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage([w], decay=-0.1)
    with pytest.raises(TypeError, match="thres_steps"):
        ExponentialMovingAverage([w], thres_steps=1.5)
    ema = ExponentialMovingAverage([w])
    with pytest.raises(RuntimeError, match="apply"):
        ema.restore()
    with pytest.raises(ValueError, match="shape"):
        ema.update({"0": np.zeros(3)})
    with pytest.raises(TypeError, match="need_restore"), ema.apply(need_restore="no"):
        pass
