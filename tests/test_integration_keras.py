"""The Keras 3 ``EMACallback`` with real Keras: fit, evaluate, predict, validation, arguments.

Keras picks its backend once, at import: this module runs the jax backend in-process (it sets
``KERAS_BACKEND`` unless Keras is already imported, and skips if that import chose another
backend). Resume and save/load: ``test_integration_keras_resume.py``; the torch backend, in a
subprocess: ``test_integration_keras_torch.py``.

Averages are compared with ema-core's own ``init`` / ``update`` / ``average`` run by hand on
the weights a recording callback saw after each batch, on the same backend's arrays: the same
compiled update on the same float32 inputs, so the bits must agree, not just the values.
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

import jax.numpy as jnp
import keras

import ema_core as ema
from ema_core import Config, schedules
from ema_core.integrations.keras import EMACallback
from tests._keras_helpers import (
    ARRAY_COPY_WARNING,
    BATCHES,
    X,
    Y,
    assert_bits,
    fitted,
    make_model,
)

if keras.backend.backend() != "jax":
    pytest.skip("keras was imported with another backend", allow_module_level=True)

pytestmark = ARRAY_COPY_WARNING


class Recorder(keras.callbacks.Callback):
    """The model's weights after every training batch, as numpy arrays."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        # reading self.model syncs the JAX trainer's state into the variables (Keras does it)
        self.seen.append([np.array(w) for w in self.model.get_weights()])


class Probe(keras.callbacks.Callback):
    """The weights the model holds when validation begins and when each epoch ends."""

    def __init__(self, ema_callback: EMACallback) -> None:
        super().__init__()
        self.ema = ema_callback
        self.at_validation: list[list[np.ndarray]] = []
        self.at_epoch_end: list[tuple[list[np.ndarray], list[np.ndarray]]] = []

    def on_test_begin(self, logs: Any = None) -> None:
        self.at_validation.append(self.model.get_weights())

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.at_epoch_end.append((self.model.get_weights(), self.ema.average_weights()))


def hand_run(model: Any, initial: list, seen: list, config: Config, kept: set[str]) -> list:
    """ema-core's functional EMA over the recorded weights whose paths are in ``kept``."""
    names = [w.path for w in model.weights]
    pick = [i for i, n in enumerate(names) if n in kept]
    state = ema.init({names[i]: jnp.asarray(initial[i]) for i in pick}, config)
    for weights in seen:
        state = ema.update(state, {names[i]: jnp.asarray(weights[i]) for i in pick}, config)
    average = ema.average(state, config)
    return [np.asarray(average[n]) if n in kept else None for n in names]


BUFFER_CASES = {
    "copy": (lambda: EMACallback(decay=0.9), "copy"),
    "average": (
        lambda: EMACallback(Config(schedule=schedules.warmup(0.95), init="zeros")),
        "average",
    ),
    "skip": (lambda: EMACallback(schedule=schedules.warmup(0.9), buffers="skip"), "skip"),
}


# recorder first: it syncs the JAX state into the variables and the callback reads those;
# callback first: it reads the trainer's state between batches (model._jax_state)
@pytest.mark.parametrize(
    ("case", "recorder_first"),
    [("copy", True), ("copy", False), ("average", False), ("skip", True)],
    ids=["copy-synced", "copy-jax-state", "average-jax-state", "skip-synced"],
)
def test_fit_averages_equal_a_hand_run(case: str, recorder_first: bool) -> None:
    build, policy = BUFFER_CASES[case]
    model, callback, recorder = make_model(), build(), Recorder()
    initial = model.get_weights()
    order = [recorder, callback] if recorder_first else [callback, recorder]
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=order)
    assert callback.step == len(recorder.seen) == 2 * BATCHES
    buffers = {w.path for w in model.non_trainable_weights}
    averaged = {w.path for w in model.weights} - (buffers if policy != "average" else set())
    want = hand_run(model, initial, recorder.seen, callback.config, averaged)
    last = recorder.seen[-1]
    if policy == "copy":  # BatchNorm statistics: the live values of the last update
        want = [last[i] if w is None else w for i, w in enumerate(want)]
    else:  # skipped ones read as the model holds them (the last batch's values)
        want = [model.get_weights()[i] if w is None else w for i, w in enumerate(want)]
    assert_bits(callback.average_weights(), want)
    assert_bits(model.get_weights(), last)  # the live weights are the model's


def twin_of(model: Any, weights: list[np.ndarray]) -> Any:
    twin = keras.models.clone_model(model)
    twin.compile(loss="mse")
    twin.set_weights(weights)
    return twin


def test_evaluate_and_predict_use_the_averages_and_restore_the_live_weights() -> None:
    model, callback = fitted()
    live = model.get_weights()
    twin = twin_of(model, callback.average_weights())
    loss = model.evaluate(X, Y, verbose=0, callbacks=[callback])
    assert_bits(model.get_weights(), live)
    assert loss == twin.evaluate(X, Y, verbose=0)
    assert loss != model.evaluate(X, Y, verbose=0)  # the live weights give another loss
    out = model.predict(X, verbose=0, callbacks=[callback])
    assert_bits(model.get_weights(), live)  # Keras' SwapEMAWeights leaves the EMA in here
    assert_bits([out], [twin.predict(X, verbose=0)])
    assert not np.array_equal(out, model.predict(X, verbose=0))
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, shuffle=False, callbacks=[callback])
    assert callback.step == 3 * BATCHES  # the EMA survived the swaps (no donated arrays)


class Boom(keras.callbacks.Callback):
    def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
        raise KeyError("boom")

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        raise KeyError("boom")


def test_live_weights_come_back_after_an_evaluate_that_raised() -> None:
    model, callback = fitted(swap=("evaluate",))
    live = model.get_weights()
    with pytest.raises(KeyError, match="boom"):  # Keras calls no on_test_end then
        model.evaluate(X, Y, verbose=0, callbacks=[callback, Boom()])
    model.predict(X, verbose=0, callbacks=[callback])  # the next begin restores them
    assert_bits(model.get_weights(), live)


def test_evaluate_after_a_fit_that_raised_is_not_validation() -> None:
    model, callback = fitted(swap=("evaluate",))
    with pytest.raises(KeyError, match="boom"):  # Keras calls no on_train_end then
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[callback, Boom()])
    loss = model.evaluate(X, Y, verbose=0, callbacks=[callback])
    assert loss != model.evaluate(X, Y, verbose=0)


def test_nothing_is_swapped_in_before_an_update() -> None:
    model = make_model()
    live = model.get_weights()
    loss = model.evaluate(X, Y, verbose=0, callbacks=[EMACallback(decay=0.9)])
    assert loss == model.evaluate(X, Y, verbose=0)
    assert_bits(model.get_weights(), live)


def test_swap_can_leave_evaluate_and_predict_live() -> None:
    model, callback = fitted(swap=())
    live = model.get_weights()
    loss = model.evaluate(X, Y, verbose=0, callbacks=[callback])
    assert loss == model.evaluate(X, Y, verbose=0)
    assert_bits([model.predict(X, verbose=0, callbacks=[callback])], [model.predict(X, verbose=0)])
    assert_bits(model.get_weights(), live)


@pytest.mark.parametrize("swap", [("evaluate", "predict"), ("validate",)])
def test_validation_inside_fit_uses_the_averages_only_when_asked(swap: tuple[str, ...]) -> None:
    model, callback = make_model(), EMACallback(decay=0.8, swap=swap)
    probe = Probe(callback)
    model.fit(
        X,
        Y,
        batch_size=16,
        epochs=2,
        verbose=0,
        shuffle=False,
        validation_data=(X, Y),
        callbacks=[callback, probe],
    )
    for seen, (live, averages) in zip(probe.at_validation, probe.at_epoch_end, strict=True):
        assert_bits(seen, averages if "validate" in swap else live)
    assert_bits(model.get_weights(), probe.at_epoch_end[-1][0])
    standalone = model.evaluate(X, Y, verbose=0, callbacks=[callback])  # not "validate"
    assert (standalone == model.evaluate(X, Y, verbose=0)) == ("evaluate" not in swap)


class Counter(keras.layers.Layer):
    """Counts its training calls in an int32 weight (not trainable)."""

    def build(self, input_shape: Any) -> None:
        self.count = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False)

    def call(self, x: Any, training: bool = False) -> Any:
        if training:
            self.count.assign(self.count + 1)
        return x


def test_integer_weights_are_copied() -> None:
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4,)), Counter(), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    callback = EMACallback(Config(schedule=0.9))  # buffers "average": floats averaged
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, shuffle=False, callbacks=[callback])
    averages = callback.average_weights()
    assert averages[0].dtype == np.int32 and int(averages[0]) == BATCHES
    assert int(model.get_weights()[0]) == BATCHES


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"decay": 0.9, "config": Config()}, TypeError, "at most one of decay, schedule or config"),
        ({"config": {"decay": 0.9}}, TypeError, "config must be an ema_core.Config"),
        ({"decay": 1.5}, ValueError, "decay"),
        ({"buffers": "keep"}, ValueError, "buffers"),
        ({"swap": ("evaluate", "train")}, ValueError, r"swap names must be among .*'train'"),
        ({"swap": 3}, TypeError, "swap must be a tuple"),
        ({"swap": ("predict", None)}, TypeError, "swap must hold str names"),
        ({"filepath": 3}, TypeError, "filepath must be a str, an os.PathLike or None"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        EMACallback(**kwargs)


@pytest.mark.parametrize("momentum", [0.9, 0.99])
def test_the_keras_preset_matches_keras_use_ema_on_a_batchnorm_model(momentum: float) -> None:
    """``EMACallback(config=presets.keras(m))`` against the optimizer's own ``use_ema=True``
    (whose ``fit`` ends by writing its averages into the model): Keras averages the trainable
    variables only, so BatchNorm's moving statistics must be the live ones, bit for bit."""
    theirs = make_model()
    theirs.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9, use_ema=True, ema_momentum=momentum),
        loss="mse",
    )
    theirs.fit(X, Y, batch_size=16, epochs=3, verbose=0, shuffle=False)
    mine, callback = make_model(), EMACallback(config=ema.presets.keras(momentum))
    mine.fit(X, Y, batch_size=16, epochs=3, verbose=0, shuffle=False, callbacks=[callback])
    averaged = callback.average_weights()
    for variable, want, got in zip(theirs.weights, theirs.get_weights(), averaged, strict=True):
        if variable.trainable:  # Keras blends in its own op order: float32 roundings apart
            np.testing.assert_allclose(got, want, rtol=0, atol=4 * np.spacing(np.abs(want).max()))
        else:
            assert got.tobytes() == want.tobytes(), variable.path
