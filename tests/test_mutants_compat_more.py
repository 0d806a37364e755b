"""Tests that the fourth mutation audit showed missing in the compat layers and in the Keras
weight helpers (``ema_core.integrations._keras_weights``, two survivors of round 3): each
pins one behaviour that a hand-made mutant changed without any test failing. Keras runs its
jax backend in-process (``tests._keras_helpers`` sets it, or skips)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

import ema_core
from tests.keras_pieces import KERAS_ARRAY_WARNING, helpers_and_keras


def _model(keras: ModuleType, extra: Any) -> Any:
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1), extra])
    model.compile(optimizer="sgd", loss="mse")
    return model


@KERAS_ARRAY_WARNING
def test_keras_integer_buffers_follow_config_non_float() -> None:
    """An integer non-trainable weight (a counter of training calls) is left to the core's
    ``Config.non_float``, not copied as a floating buffer: under ``"freeze"`` its average stays
    at the value the EMA started from while the live counter moves on."""
    helpers, keras = helpers_and_keras()

    class Counter(keras.layers.Layer):  # type: ignore[name-defined,misc]
        def build(self, shape: Any) -> None:
            self.scale = self.add_weight(shape=(1,), initializer="ones", name="scale")
            self.calls = self.add_weight(
                shape=(), initializer="zeros", dtype="int32", trainable=False
            )

        def call(self, x: Any, training: bool = False) -> Any:
            if training:
                self.calls.assign(self.calls + 1)
            return x * self.scale

    model = _model(keras, Counter())
    callback = helpers.EMACallback(ema_core.Config(0.5, non_float="freeze"), buffers="copy")
    model.fit(helpers.X, helpers.Y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    assert int(model.get_weights()[-1]) == helpers.BATCHES  # the live counter moved
    assert int(callback.average_weights()[-1]) == 0  # frozen at the start


@KERAS_ARRAY_WARNING
def test_keras_evaluate_of_a_model_whose_copied_buffer_differs_is_refused() -> None:
    """Two models with the same averaged weights but a copied (floating non-trainable) weight
    of another dtype are not the same model: ``evaluate`` of the second with the first's
    callback is refused, and its weights are left alone."""
    helpers, keras = helpers_and_keras()

    class Statistic(keras.layers.Layer):  # type: ignore[name-defined,misc]
        def __init__(self, statistic_dtype: str) -> None:
            super().__init__()
            self.statistic_dtype = statistic_dtype

        def build(self, shape: Any) -> None:
            self.scale = self.add_weight(shape=(1,), initializer="ones", name="scale")
            self.statistic = self.add_weight(
                shape=(1,),
                initializer="ones",
                dtype=self.statistic_dtype,
                trainable=False,
                name="statistic",
            )

        def call(self, x: Any) -> Any:
            return x * self.scale

    model, callback = _model(keras, Statistic("float32")), helpers.EMACallback(decay=0.5)
    model.fit(helpers.X, helpers.Y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    other = _model(keras, Statistic("float16"))
    before = other.get_weights()
    with pytest.raises(ValueError, match="holds an EMA of another model"):
        other.evaluate(helpers.X, helpers.Y, verbose=0, callbacks=[callback])
    helpers.assert_bits(other.get_weights(), before)
    assert np.dtype(other.get_weights()[-1].dtype) == np.float16


@pytest.mark.parametrize("device", [True, False])
def test_mmedit_refuses_a_bool_device(device: bool) -> None:
    """``device=True`` is not a device index (a bool is an int to Python, and to
    ``torch.device`` it would name device 1 or 0): the mmedit EMA refuses it by type."""
    torch = pytest.importorskip("torch")
    from ema_core.compat.mmedit import ExponentialMovingAverage

    with pytest.raises(TypeError, match=r"device must be None, a str, an int or a torch\.device"):
        ExponentialMovingAverage(torch.nn.Linear(2, 1), device=device)


def test_tf_load_into_a_used_ema_rewinds_its_debias_counter() -> None:
    """``load_state_dict`` into an EMA that has applied since the save (zero_debias): the
    slot's own step count goes back to the saved one too, so the next apply debiases as the
    run that never went past the save (``1 - d ** 2``, not ``1 - d ** 4``)."""
    from ema_core.compat import tensorflow

    w = np.full(2, 4.0, np.float32)
    ema = tensorflow.ExponentialMovingAverage(0.5, zero_debias=True)
    ema.apply([("w", w)])
    saved = ema.state_dict()
    ema.apply([("w", w * 3)])
    ema.apply([("w", w * 5)])
    ema.load_state_dict(saved)
    ema.apply([("w", w * 2)])
    straight = tensorflow.ExponentialMovingAverage(0.5, zero_debias=True)
    straight.apply([("w", w)])
    straight.apply([("w", w * 2)])
    assert ema.state_dict()["local_steps"] == {"w": 2}
    assert np.asarray(ema.average("w")).tobytes() == np.asarray(straight.average("w")).tobytes()


def test_tf_refuses_an_empty_name() -> None:
    """The EMA's ``name`` is the suffix of every saved average's name: an empty one is
    refused when the EMA is built."""
    from ema_core.compat import tensorflow

    with pytest.raises(ValueError, match="name must be a non-empty str, got ''"):
        tensorflow.ExponentialMovingAverage(0.5, name="")


def test_tf_average_of_none_is_none_beside_a_loaded_shadow() -> None:
    """A shadow loaded from a state, not yet applied, has no variable: ``average(None)`` does
    not hand it out as the average of "no variable"."""
    from ema_core.compat import tensorflow

    saved = tensorflow.ExponentialMovingAverage(0.5)
    saved.apply([("w", np.full(2, 4.0, np.float32))])
    ema = tensorflow.ExponentialMovingAverage(0.5)
    ema.load_state_dict(saved.state_dict())
    assert ema.average("w") is not None
    assert ema.average(None) is None
