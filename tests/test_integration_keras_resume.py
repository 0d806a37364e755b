"""The Keras 3 ``EMACallback`` saved and resumed: bit for bit, and refused without a write.

Runs the jax backend in-process, as ``test_integration_keras.py`` does (it sets
``KERAS_BACKEND`` before Keras is imported, and skips if that import chose another backend).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("keras") is None or importlib.util.find_spec("jax") is None:
    pytest.skip("keras and jax are needed", allow_module_level=True)
if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "jax"

import keras

from ema_core import Config, schedules
from ema_core.integrations.keras import EMACallback
from tests._keras_helpers import ARRAY_COPY_WARNING, BATCHES, X, Y, assert_bits, fitted, make_model

if keras.backend.backend() != "jax":
    pytest.skip("keras was imported with another backend", allow_module_level=True)

pytestmark = ARRAY_COPY_WARNING


def test_resume_from_model_checkpoint_is_bit_for_bit(tmp_path: Path) -> None:
    config = Config(schedule=schedules.warmup(0.95), init="zeros")
    whole, straight = make_model(), EMACallback(config)
    whole.fit(X, Y, batch_size=16, epochs=3, verbose=0, shuffle=False, callbacks=[straight])

    first, saved = make_model(), EMACallback(config, filepath=tmp_path / "ema.safetensors")
    keep = keras.callbacks.ModelCheckpoint(tmp_path / "last.keras")
    first.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=[saved, keep])

    model = keras.models.load_model(tmp_path / "last.keras")
    resumed = EMACallback(config)
    resumed.load(tmp_path / "ema.safetensors", model)
    assert resumed.step == saved.step == 2 * BATCHES
    assert_bits(resumed.average_weights(), saved.average_weights())
    model.fit(
        X,
        Y,
        batch_size=16,
        epochs=3,
        initial_epoch=2,
        verbose=0,
        shuffle=False,
        callbacks=[resumed],
    )
    assert resumed.step == straight.step == 3 * BATCHES
    assert_bits(model.get_weights(), whole.get_weights())
    assert_bits(resumed.average_weights(), straight.average_weights())


def test_calls_before_an_ema_exists(tmp_path: Path) -> None:
    callback = EMACallback(decay=0.9)
    with pytest.raises(RuntimeError, match="average_weights"):
        callback.average_weights()
    with pytest.raises(RuntimeError, match="save"):
        callback.save(tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="needs the model"):
        callback.load(tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="path must be a str"):
        callback.save(3)  # type: ignore[arg-type]


def test_a_mismatch_changes_nothing(tmp_path: Path) -> None:
    model, callback = fitted()
    path = callback.save(tmp_path / "ema.safetensors")
    before = callback.average_weights()
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    other.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="another model"):
        other.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    with pytest.raises(ValueError):
        callback.load(path, other)
    with pytest.raises(ValueError, match="config"):
        EMACallback(decay=0.5).load(path, model)
    assert callback.step == 2 * BATCHES
    assert_bits(callback.average_weights(), before)
