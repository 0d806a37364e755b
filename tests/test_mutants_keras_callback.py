"""Tests that the mutation audit of the Keras ``EMACallback`` (``ema_core.integrations.keras``
and its argument and swap helpers, ``_keras_args`` and ``_keras_swap``) found missing: each
pins one behaviour that a hand-made mutant changed without any test failing. Keras runs its
jax backend in-process (``tests._keras_helpers`` sets it, or skips)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ema_core import Config
from tests.keras_pieces import KERAS_ARRAY_WARNING, helpers_and_keras

pytestmark = KERAS_ARRAY_WARNING


def _fit(helpers: ModuleType, model: Any, callbacks: Any, epochs: int = 1) -> None:
    model.fit(
        helpers.X,
        helpers.Y,
        batch_size=16,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=callbacks,
    )


def _boom(keras: ModuleType) -> Any:
    """A callback whose first test batch raises: Keras then calls no ``on_test_end``."""

    class Boom(keras.callbacks.Callback):  # type: ignore[name-defined,misc]
        def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
            raise KeyError("boom")

    return Boom()


def test_fit_after_an_evaluate_that_raised_holds_no_stale_live_weights() -> None:
    """An ``evaluate`` that raised leaves the averages in the model with the live weights held
    aside; the next ``fit`` lets go of them, so that a later ``predict`` does not write those
    old weights over the ones the ``fit`` trained."""
    helpers, keras = helpers_and_keras()
    model, callback = helpers.fitted(swap=("evaluate",))
    with pytest.raises(KeyError, match="boom"):
        model.evaluate(helpers.X, helpers.Y, verbose=0, callbacks=[callback, _boom(keras)])
    _fit(helpers, model, [callback])
    trained = model.get_weights()
    model.predict(helpers.X, verbose=0, callbacks=[callback])
    helpers.assert_bits(model.get_weights(), trained)


def test_fit_after_an_evaluate_that_raised_trains_from_the_live_weights() -> None:
    """An ``evaluate`` that raised leaves the averages in the model (Keras calls no
    ``on_test_end``); the next ``fit`` puts the live weights back before it trains from them.
    Failed before the fix: on JAX ``on_train_begin`` read ``self.model`` after restoring, and
    that read synced the raised evaluate's trainer state (the averages) back over them."""
    helpers, keras = helpers_and_keras()

    class First(keras.callbacks.Callback):  # type: ignore[name-defined,misc]
        """The weights the first training batch starts from."""

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[Any] = []

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.seen = self.seen or self.model.get_weights()

    model, callback = helpers.fitted(swap=("evaluate",))
    live, first = model.get_weights(), First()
    with pytest.raises(KeyError, match="boom"):
        model.evaluate(helpers.X, helpers.Y, verbose=0, callbacks=[callback, _boom(keras)])
    _fit(helpers, model, [callback, first])
    helpers.assert_bits(first.seen, live)


def test_a_fit_of_no_epochs_after_an_evaluate_that_raised_leaves_the_live_weights() -> None:
    """The same with ``fit(epochs=0)``: no batch runs, and Keras' own sync at the end of the
    fit writes back the weights ``on_train_begin`` restored, the live ones."""
    helpers, keras = helpers_and_keras()
    model, callback = helpers.fitted(swap=("evaluate",))
    live = model.get_weights()
    with pytest.raises(KeyError, match="boom"):
        model.evaluate(helpers.X, helpers.Y, verbose=0, callbacks=[callback, _boom(keras)])
    _fit(helpers, model, [callback], epochs=0)
    helpers.assert_bits(model.get_weights(), live)


def test_evaluate_after_a_fit_through_one_callback_list_is_not_validation() -> None:
    """Keras uses a ``CallbackList`` it is given as it is (no new ``set_model``): an
    ``evaluate`` through the list of a ``fit`` that ended is a call of ``evaluate()``, and
    under ``swap=("evaluate",)`` runs on the averages."""
    helpers, keras = helpers_and_keras()
    model, callback = helpers.make_model(), helpers.EMACallback(decay=0.8, swap=("evaluate",))
    callbacks = keras.callbacks.CallbackList([callback], add_history=True, model=model)
    _fit(helpers, model, callbacks)
    twin = keras.models.clone_model(model)
    twin.compile(loss="mse")
    twin.set_weights(callback.average_weights())
    loss = model.evaluate(helpers.X, helpers.Y, verbose=0, callbacks=callbacks)
    assert loss == twin.evaluate(helpers.X, helpers.Y, verbose=0)


def test_evaluate_before_the_first_update_runs_live_under_zeros_init() -> None:
    """Under ``init="zeros"`` the EMA before its first update is zeros, not a model: an
    ``evaluate`` after a ``fit`` that took no step runs on the live weights."""
    helpers, _ = helpers_and_keras()
    model = helpers.make_model()
    callback = helpers.EMACallback(Config(schedule=0.9, init="zeros"))
    _fit(helpers, model, [callback], epochs=0)
    assert callback.step == 0
    live = model.get_weights()
    loss = model.evaluate(helpers.X, helpers.Y, verbose=0, callbacks=[callback])
    assert loss == model.evaluate(helpers.X, helpers.Y, verbose=0)
    helpers.assert_bits(model.get_weights(), live)


def test_load_into_a_fresh_model_brings_the_copied_buffers(tmp_path: Path) -> None:
    """Under ``buffers="copy"`` the BatchNorm statistics saved with the EMA come back from the
    file on ``load``, not from the model it is loaded for (here a fresh one, at its initial
    statistics), and a ``fit`` of that model continues the loaded EMA."""
    helpers, _ = helpers_and_keras()
    _, callback = helpers.fitted()
    path = callback.save(tmp_path / "ema.safetensors")
    model, resumed = helpers.make_model(seed=2), helpers.EMACallback(decay=0.8)
    resumed.load(path, model)
    assert resumed.step == callback.step
    helpers.assert_bits(resumed.average_weights(), callback.average_weights())
    _fit(helpers, model, [resumed])
    assert resumed.step == callback.step + helpers.BATCHES


def test_an_ema_saved_before_its_first_update_loads(tmp_path: Path) -> None:
    """``save`` after a ``fit`` that took no step writes the copied buffers too (the weights
    at the start of ``fit``): the file loads for the same model, at step 0."""
    helpers, _ = helpers_and_keras()
    model, callback = helpers.make_model(), helpers.EMACallback(decay=0.8)
    _fit(helpers, model, [callback], epochs=0)
    path = callback.save(tmp_path / "ema.safetensors")
    resumed = helpers.EMACallback(decay=0.8)
    resumed.load(path, model)
    assert resumed.step == 0
    helpers.assert_bits(resumed.average_weights(), model.get_weights())


@pytest.mark.parametrize("kind", [list, set, frozenset])
def test_swap_takes_a_list_or_a_set_of_names(kind: type) -> None:
    """``swap`` is read from a tuple, a list or a set of names alike."""
    helpers, _ = helpers_and_keras()
    callback = helpers.EMACallback(decay=0.9, swap=kind(["predict", "validate"]))
    assert callback.swap == frozenset({"predict", "validate"})


def test_filepath_whose_last_part_is_a_parent_is_refused(tmp_path: Path) -> None:
    """``missing/..`` cannot name a file even where ``missing`` does not exist (and so is no
    folder): it is refused when the callback is built."""
    helpers, _ = helpers_and_keras()
    bad = tmp_path / "missing" / ".."
    with pytest.raises(ValueError, match=r"filepath must name a file.*names none"):
        helpers.EMACallback(decay=0.9, filepath=bad)


@pytest.mark.parametrize("bad", ["", "."])
def test_filepath_empty_or_dot_is_said_to_name_none(bad: str) -> None:
    """``""`` and ``"."`` name no file: the message says so, not that the current folder (what
    ``Path`` reads them as) is a directory."""
    helpers, _ = helpers_and_keras()
    with pytest.raises(ValueError, match=rf"got {bad!r} \(names none\)"):
        helpers.EMACallback(decay=0.9, filepath=bad)


def test_filepath_whose_path_is_bytes_is_refused_by_name() -> None:
    """An ``os.PathLike`` whose ``__fspath__`` gives bytes is refused naming ``filepath`` (it
    was pathlib's own TypeError, naming neither the argument nor the value)."""
    helpers, _ = helpers_and_keras()

    class BytesPath:
        def __fspath__(self) -> bytes:
            return b"ema.safetensors"

    with pytest.raises(TypeError, match=r"filepath must be a path of str, got a BytesPath of"):
        helpers.EMACallback(decay=0.9, filepath=BytesPath())
