"""The Keras ``EMACallback`` against a hostile but realistic user (jax backend, in-process).

Gradient accumulation in the optimizer, layers frozen or unfrozen between fits, files into
missing folders, a wrong ``model`` for ``load``, a model with no weights yet.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("keras") is None or importlib.util.find_spec("jax") is None:
    pytest.skip("keras and jax are needed", allow_module_level=True)
if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "jax"

import keras

from ema_core.integrations.keras import EMACallback
from tests._keras_helpers import ARRAY_COPY_WARNING, BATCHES, X, Y, assert_bits, make_model

if keras.backend.backend() != "jax":
    pytest.skip("keras was imported with another backend", allow_module_level=True)

pytestmark = ARRAY_COPY_WARNING


def _fit(model: Any, callback: EMACallback, epochs: int = 1) -> None:
    model.fit(X, Y, batch_size=16, epochs=epochs, verbose=0, shuffle=False, callbacks=[callback])


class Stepped(keras.callbacks.Callback):
    """The weights after each batch that applied an optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if int(self.model.optimizer.iterations) > len(self.seen):  # syncs the JAX state
            self.seen.append([np.array(w) for w in self.model.get_weights()])


@pytest.mark.parametrize("order", ["callback-first", "recorder-first"])
def test_gradient_accumulation_updates_once_per_optimizer_step(order: str) -> None:
    model = make_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05, gradient_accumulation_steps=2), loss="mse")
    callback, recorder = EMACallback(decay=0.5, buffers="skip"), Stepped()
    plain, plain_model = EMACallback(decay=0.5, buffers="skip"), make_model()
    callbacks = [callback, recorder] if order == "callback-first" else [recorder, callback]
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=callbacks)
    assert callback.step == int(model.optimizer.iterations) == BATCHES  # 8 batches, 4 steps
    # the same EMA as a plain fit over the weights of the optimizer steps only
    plain_model.compile(optimizer="sgd", loss="mse")
    _fit(plain_model, plain, epochs=0)
    for weights in recorder.seen:
        plain_model.set_weights(weights)
        plain.on_train_batch_end(0)
    assert_bits(callback.average_weights(), plain.average_weights())


def test_unfreezing_between_fits_says_what_changed_and_how_to_keep_going() -> None:
    model, callback = make_model(), EMACallback(decay=0.9)
    model.layers[0].trainable = False
    model.compile(optimizer="sgd", loss="mse")
    _fit(model, callback)
    before = callback.average_weights()
    model.layers[0].trainable = True
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"trainable.*0000:kernel.*buffers='average'"):
        _fit(model, callback)
    assert callback.step == BATCHES
    assert_bits(callback.average_weights(), before)


def test_unfreezing_with_buffers_average_keeps_the_ema() -> None:
    model, callback = make_model(), EMACallback(decay=0.9, buffers="average")
    model.layers[0].trainable = False
    model.compile(optimizer="sgd", loss="mse")
    _fit(model, callback)
    model.layers[0].trainable = True
    model.compile(optimizer="sgd", loss="mse")
    _fit(model, callback)
    assert callback.step == 2 * BATCHES


def test_filepath_into_a_missing_folder_is_created(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "a" / "ema.safetensors"
    model, callback = make_model(), EMACallback(decay=0.9, filepath=path)
    _fit(model, callback)
    assert path.is_file()
    assert callback.save(tmp_path / "other" / "ema.safetensors").is_file()


@pytest.mark.parametrize("bad", ["", "."])
def test_filepath_that_cannot_be_a_file_is_refused_when_built(bad: str) -> None:
    with pytest.raises(ValueError, match=rf"filepath must name a file.*got {bad!r}"):
        EMACallback(decay=0.9, filepath=bad)


def test_filepath_of_an_existing_folder_is_refused_when_built(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"filepath must name a file.*is a directory"):
        EMACallback(decay=0.9, filepath=tmp_path)


def test_load_with_something_that_is_not_a_model(tmp_path: Path) -> None:
    model, callback = make_model(), EMACallback(decay=0.9)
    _fit(model, callback)
    path = callback.save(tmp_path / "ema.safetensors")
    fresh = EMACallback(decay=0.9)
    with pytest.raises(TypeError, match=r"model must be a keras\.Model.*got str"):
        fresh.load(path, "model")
    with pytest.raises(RuntimeError, match="before the EMA exists"):
        fresh.average_weights()


def test_load_into_a_model_not_built_yet(tmp_path: Path) -> None:
    model, callback = make_model(), EMACallback(decay=0.9)
    _fit(model, callback)
    path = callback.save(tmp_path / "ema.safetensors")
    lazy = keras.Sequential([keras.layers.Dense(8), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"model has no weights yet.*build"):
        EMACallback(decay=0.9).load(path, lazy)
