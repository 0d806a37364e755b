"""Tests that the third mutation-testing audit (the Keras, Lightning and accelerate
integrations and their argument, swap and weight helpers) found missing: each kills a small
plausible bug that the rest of the suite let through. They run the real frameworks; Keras on
its jax backend, as the other in-process Keras tests (``tests._keras_helpers`` sets it)."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.keras_pieces import KERAS_ARRAY_WARNING


def _keras() -> ModuleType:
    """The shared Keras test pieces (skips where Keras, jax or the jax backend is missing)."""
    return pytest.importorskip("tests._keras_helpers")


def test_keras_swap_reads_one_name_as_that_stage() -> None:
    """``swap="predict"`` names one stage, not the letters of a word."""
    helpers = _keras()
    assert helpers.EMACallback(decay=0.9, swap="predict").swap == frozenset({"predict"})


def test_keras_save_and_load_name_a_missing_path() -> None:
    """``save(None)`` / ``load(None)`` are refused by the callback's own check, which names
    the argument, before anything is read or written."""
    callback = _keras().EMACallback(decay=0.9)
    for call in (callback.save, callback.load):
        with pytest.raises(TypeError, match=r"path must be a str, an os\.PathLike, got NoneType"):
            call(None)


@KERAS_ARRAY_WARNING
def test_keras_predict_leaves_skipped_buffers_live() -> None:
    """Under ``buffers="skip"`` the BatchNorm statistics have no average: ``predict`` runs on
    the averaged trainable weights beside the live statistics, which is what
    ``average_weights()`` describes."""
    helpers = _keras()
    model = helpers.make_model()
    callback = helpers.EMACallback(decay=0.8, buffers="skip")
    model.fit(helpers.X, helpers.Y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    live = model.get_weights()
    got = model.predict(helpers.X, verbose=0, callbacks=[callback])
    helpers.assert_bits(model.get_weights(), live)
    model.set_weights(callback.average_weights())
    helpers.assert_bits([got], [model.predict(helpers.X, verbose=0)])


@KERAS_ARRAY_WARNING
def test_keras_evaluate_of_another_model_is_refused() -> None:
    """The averages of one model cannot stand in for the weights of a model of other shapes:
    ``evaluate`` with the callback on it is refused, and its weights are left alone."""
    helpers = _keras()
    keras = pytest.importorskip("keras")
    _, callback = helpers.fitted()
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    other.compile(optimizer="sgd", loss="mse")
    before = other.get_weights()
    with pytest.raises(ValueError, match="holds an EMA of another model"):
        other.evaluate(helpers.X, helpers.Y, verbose=0, callbacks=[callback])
    helpers.assert_bits(other.get_weights(), before)


@KERAS_ARRAY_WARNING
def test_keras_fit_of_a_second_model_of_the_same_shapes_is_refused() -> None:
    """One EMA follows one model: ``fit`` of another model with the same weights' names and
    shapes (a fresh copy) would mix the two into one average, so it is refused."""
    helpers = _keras()
    _, callback = helpers.fitted()
    step = callback.step
    with pytest.raises(ValueError, match="fit\\(\\) got another model"):
        helpers.make_model().fit(helpers.X, helpers.Y, epochs=1, verbose=0, callbacks=[callback])
    assert callback.step == step
