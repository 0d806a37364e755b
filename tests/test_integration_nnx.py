"""examples/flax_nnx_ema.py: the EMA kept inside its nnx.jit train step is the EMA of the
params after each optimizer step, under EDM2's power function (checked against a float64 loop
over the recorded trajectory), and evaluation reads the averages without touching the model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
pytest.importorskip("optax")

import ema_core as ema  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flax_nnx_ema.py"
STEPS = 40


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flax_nnx_ema_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _params(model: Any) -> dict[str, np.ndarray]:
    """The model's params as float64 numpy arrays, by path."""
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    return {jax.tree_util.keystr(p): np.asarray(v, dtype=np.float64) for p, v in flat}


def _hand_ema(trajectory: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """shadow_0 = params_0; shadow_t = d_t shadow_{t-1} + (1 - d_t) params_t, d_t from EDM2's
    power function with sigma_rel = 0.10: (1 - 1/t) ** (gamma + 1), 0 at t = 1."""
    gamma = ema.schedules.sigma_rel_to_gamma(0.10)
    shadow = dict(trajectory[0])
    for t, params in enumerate(trajectory[1:], start=1):
        d = 0.0 if t <= 1 else (1.0 - 1.0 / t) ** (gamma + 1.0)
        shadow = {k: d * shadow[k] + (1.0 - d) * params[k] for k in shadow}
    return shadow


def test_train_step_keeps_the_ema_of_the_trajectory(example: ModuleType) -> None:
    model, optimizer, state = example.setup(seed=1)
    trajectory = [_params(model)]
    for x, y in example.batches(STEPS, seed=2):
        _, state = example.train_step(model, optimizer, state, x, y)
        trajectory.append(_params(model))
    assert int(state.step) == STEPS
    expected = _hand_ema(trajectory)
    flat = jax.tree_util.tree_flatten_with_path(state.shadow)[0]
    got = {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}
    assert got.keys() == expected.keys()
    for name, value in got.items():
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # the EMA lags: it is not the last params (a step that averaged nothing would pass above
    # only if the trajectory were flat, which SGD on noisy data is not)
    last = trajectory[-1]
    assert any(not np.allclose(expected[k], last[k], atol=1e-4) for k in last)

    live = _params(model)
    copy = example.averaged(model, state)
    for name, value in _params(copy).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for name, value in _params(model).items():  # the live model is untouched
        np.testing.assert_array_equal(value, live[name])


def test_main_prints_raw_and_averaged_losses(
    example: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    result = example.main(steps=STEPS)
    out = capsys.readouterr().out
    assert f"after {STEPS} steps" in out
    assert f"raw weights      {result['raw']:.4f}" in out
    assert f"averaged weights {result['averaged']:.4f}" in out
    assert result["raw"] != result["averaged"]
    assert np.isfinite([result["raw"], result["averaged"]]).all()
