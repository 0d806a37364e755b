"""Preset fixes from the hunt of 2026-12-05: ``presets.keras`` takes Keras's
``gradient_accumulation_steps`` (Keras copies through its first n batches, then blends at every
batch), checked against real Keras on each installed backend."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import ema_core
from ema_core import presets
from tests.peers import KerasWorker, require_installed

pytestmark = pytest.mark.slow  # a Keras process per backend


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, KerasWorker]]:
    require_installed("keras")
    tmp = Path(tmp_path_factory.mktemp("keras-accumulation"))
    found = [b for b in ("jax", "torch") if importlib.util.find_spec(b) is not None]
    started = {backend: KerasWorker(backend, tmp) for backend in found}
    yield started
    for worker in started.values():
        worker.close()


def _averages(data: dict[str, np.ndarray], config: ema_core.Config, steps: int) -> list[dict]:
    live = {f"v{i}": data[f"init{i}"] for i in range(2)}
    state = ema_core.init(live, config)
    out = []
    for t in range(steps):
        live = {f"v{i}": data[f"var{i}_{t}"] for i in range(2)}
        state = ema_core.update(state, live, config)  # one update per batch, as Keras blends
        out.append(ema_core.average(state, config))
    return out


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("n", [2, 3])
def test_keras_accumulation_matches_keras(
    workers: dict[str, KerasWorker], backend: str, n: int
) -> None:
    if backend not in workers:
        pytest.skip(f"Keras backend {backend} is not installed")
    args = {"ema_momentum": 0.9, "gradient_accumulation_steps": n}
    steps = 24
    data = workers[backend].run(args, 0, steps)
    ours = _averages(data, presets.keras(**args), steps)
    plain = _averages(data, presets.keras(0.9), steps)  # what the preset gave before
    worst_plain = 0.0
    for t in range(steps):
        for i in range(2):
            theirs = data[f"ema{i}_{t}"]  # to a few float32 ulps, as without accumulation
            np.testing.assert_allclose(ours[t][f"v{i}"], theirs, rtol=1e-6, atol=1e-6)
            worst_plain = max(worst_plain, float(np.abs(plain[t][f"v{i}"] - theirs).max()))
    assert worst_plain > 1e-3  # without the argument the preset does not follow Keras


def test_keras_accumulation_argument_is_checked() -> None:
    assert presets.keras(0.9, gradient_accumulation_steps=None) == presets.keras(0.9)
    for bad, error in ((1, ValueError), (0, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match="gradient_accumulation_steps"):
            presets.keras(0.9, gradient_accumulation_steps=bad)
