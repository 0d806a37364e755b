"""Two ``EMACallback``s on one model (two decays, README "Lightning" and "Keras 3"): each swap
backed up what the model held, the end hooks ran in list order, and the last restore wrote the
first callback's averages into the model, for training to go on from (a hunt of 2026-12-05).
The first callback to swap now holds the model until it restores; the other waits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests._lightning_helpers import WARNINGS, Net, loader, quiet, trainer

torch = pytest.importorskip("torch")
from ema_core.integrations.lightning import EMACallback  # noqa: E402

pytestmark = WARNINGS
__all__ = ["quiet"]  # the autouse fixture


def _fit(root: Path, callbacks: list[Any]) -> Net:
    model = Net()
    trainer(root, callbacks).fit(model, loader(), loader(2))
    return model


def test_lightning_two_callbacks_leave_training_as_without_them(tmp_path: Path) -> None:
    plain = _fit(tmp_path / "a", [])
    fast, slow = EMACallback(decay=0.5), EMACallback(decay=0.99)
    both = _fit(tmp_path / "b", [fast, slow])
    for name, value in plain.state_dict().items():
        assert torch.equal(both.state_dict()[name], value), name
    # validation ran on the first callback's averages (the model holds one set at a time)
    last = both.seen["validate"][-1]
    assert fast.ema is not None
    for name, value in last.items():
        assert torch.equal(value, fast.ema.average[name]), name


def test_keras_two_callbacks_give_the_live_weights_back_after_evaluate() -> None:
    pytest.importorskip("keras")
    import subprocess
    import sys

    script = """
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
import warnings; warnings.filterwarnings("ignore")
import numpy as np, keras
from ema_core.integrations.keras import EMACallback
rng = np.random.default_rng(0)
X = rng.standard_normal((64, 4)).astype("float32")
Y = (X @ rng.standard_normal((4, 1))).astype("float32")
keras.utils.set_random_seed(1)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
fast, slow = EMACallback(decay=0.5), EMACallback(decay=0.99)
model.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[fast, slow])
live = model.get_weights()
model.evaluate(X, Y, verbose=0, callbacks=[fast, slow])
after = model.get_weights()
print(all(np.array_equal(a, b) for a, b in zip(live, after)))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True"
