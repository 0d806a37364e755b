"""Shared pieces of the in-process Keras ``EMACallback`` tests: data, model, bit comparison.

Keras picks its backend once, at import. The test modules set ``KERAS_BACKEND`` to jax before
they import Keras; this module does the same in case it is imported first (pytest's doctest
collection imports it), and skips where Keras or jax is missing or Keras runs another backend.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("keras") is None or importlib.util.find_spec("jax") is None:
    pytest.skip("keras and jax are needed", allow_module_level=True)
if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "jax"

import keras

from ema_core.integrations.keras import EMACallback

if keras.backend.backend() != "jax":
    pytest.skip("keras was imported with another backend", allow_module_level=True)

#: Keras' own Variable.numpy() (behind model.get_weights()) under numpy 2; every module's mark
ARRAY_COPY_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
RNG = np.random.default_rng(0)
X = RNG.standard_normal((64, 4)).astype("float32")
Y = (X @ RNG.standard_normal((4, 1)) + 0.1).astype("float32")
BATCHES = 4  # per epoch, batch_size 16


def make_model(seed: int = 1) -> Any:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    return model


def assert_bits(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert g.tobytes() == w.tobytes()


def fitted(swap: Any = ("evaluate", "predict")) -> tuple[Any, EMACallback]:
    model, callback = make_model(), EMACallback(decay=0.8, swap=swap)
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=[callback])
    return model, callback
