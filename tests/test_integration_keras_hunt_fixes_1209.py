"""The Keras ``EMACallback`` as a hunt (1209, on 2026-12-05) found it: two callbacks that follow
two models of one architecture (a teacher and a student), both listed in one ``evaluate()``,
each put its averages into the evaluated model (the lock was keyed on the model each follows),
and the live weights were lost for good. Runs the jax backend in-process, as
``test_integration_keras.py`` does."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

if importlib.util.find_spec("keras") is None or importlib.util.find_spec("jax") is None:
    pytest.skip("keras and jax are needed", allow_module_level=True)
if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "jax"

import keras

from ema_core.integrations.keras import EMACallback
from tests._keras_helpers import ARRAY_COPY_WARNING

pytestmark = ARRAY_COPY_WARNING  # Keras's own get_weights() under numpy 2

if keras.backend.backend() != "jax":
    pytest.skip("keras was imported with another backend", allow_module_level=True)


def _model() -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


@pytest.mark.parametrize("teacher_first", [True, False])
def test_two_callbacks_of_two_models_in_one_evaluate_keep_the_live_weights(
    teacher_first: bool,
) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype("float32")
    y = x.sum(1, keepdims=True).astype("float32")
    keras.utils.set_random_seed(0)
    teacher, student = _model(), _model()
    ema_t, ema_s = EMACallback(decay=0.5), EMACallback(decay=0.5)
    teacher.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[ema_t])
    student.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[ema_s])
    live = [w.copy() for w in student.get_weights()]
    first = ema_t if teacher_first else ema_s
    loss = student.evaluate(x, y, verbose=0, callbacks=[first, ema_s if teacher_first else ema_t])
    for got, want in zip(student.get_weights(), live, strict=True):
        assert np.array_equal(got, want)
    student.set_weights(first.average_weights())  # the first listed ran: on its averages
    assert student.evaluate(x, y, verbose=0) == loss
