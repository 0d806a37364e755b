"""The Keras 3 ``EMACallback`` in real ``model.fit`` flows a user writes, jax and torch.

Each test compares the callback with ema-core's own ``init`` / ``update`` / ``average`` run by
hand on the weights a recording callback saw after each ``on_train_batch_end`` (the same
compiled update on the same float32 inputs: the bits must agree), and checks that weights
swapped in for validation, ``evaluate`` or ``predict`` come back bit for bit. Flows:
``steps_per_execution``, several ``fit`` calls, ``validation_data`` beside ``ModelCheckpoint``
and ``EarlyStopping``, ``model.save`` / ``load_model``, ``class_weight`` / ``sample_weight``,
a custom ``train_step``, a layer frozen mid-``fit`` (torch only: the JAX trainer itself
refuses it), and an ``evaluate`` of the EMA run from a user's callback inside ``fit``. The jax
backend runs in-process (as ``test_integration_keras.py``); the torch backend runs the same
flows in one subprocess (``steps_per_execution > 1`` is refused by Keras on torch).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("keras") is None or importlib.util.find_spec("jax") is None:
    pytest.skip("keras and jax are needed", allow_module_level=True)
if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "jax"

import jax
import jax.numpy as jnp
import keras

import ema_core as ema
from ema_core import Config, schedules
from ema_core.integrations.keras import EMACallback
from tests._keras_helpers import ARRAY_COPY_WARNING, BATCHES, X, Y, assert_bits, make_model

if keras.backend.backend() != "jax":
    pytest.skip("keras was imported with another backend", allow_module_level=True)

pytestmark = ARRAY_COPY_WARNING
FIT = {"batch_size": 16, "verbose": 0, "shuffle": False}


class Recorder(keras.callbacks.Callback):
    """The weights after every ``on_train_batch_end`` and where validation / epochs stand."""

    def __init__(self, ema_callback: EMACallback | None = None) -> None:
        super().__init__()
        self.ema = ema_callback
        self.seen: list[list[np.ndarray]] = []
        self.at_validation: list[list[np.ndarray]] = []
        self.at_epoch_end: list[list[np.ndarray]] = []
        self.averages_at_epoch_end: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.seen.append(self.model.get_weights())  # syncs the JAX state (Keras does it)

    def on_test_begin(self, logs: Any = None) -> None:
        self.at_validation.append(self.model.get_weights())

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.at_epoch_end.append(self.model.get_weights())
        if self.ema is not None:
            self.averages_at_epoch_end.append(self.ema.average_weights())


def hand_run(
    model: Any, initial: list, seen: list, config: Config, trainable: set[int] | None = None
) -> list[np.ndarray]:
    """The averages the default callback (``buffers="copy"``) must hold: trainable weights
    (by ``id``, default the model's now) averaged by ema-core over ``seen``, non-trainable
    ones the last values seen."""
    trainable = {id(w) for w in model.trainable_weights} if trainable is None else trainable
    pick = [i for i, w in enumerate(model.weights) if id(w) in trainable]
    state = ema.init({str(i): jnp.asarray(initial[i]) for i in pick}, config)
    for weights in seen:
        state = ema.update(state, {str(i): jnp.asarray(weights[i]) for i in pick}, config)
    average = ema.average(state, config)
    last = seen[-1] if seen else initial
    return [np.asarray(average[str(i)]) if i in pick else last[i] for i in range(len(last))]


def twin_of(model: Any, weights: list[np.ndarray]) -> Any:
    twin = keras.models.clone_model(model)
    twin.compile(loss="mse")
    twin.set_weights(weights)
    return twin


def test_steps_per_execution_updates_once_per_call_on_the_weights_of_that_call() -> None:
    """``steps_per_execution=n``: one update per ``on_train_batch_end`` call (per n batches,
    the last call of an epoch covering what is left), on the weights after that call."""
    model, every = make_model(), 3  # 4 batches an epoch: calls after 3 and after 1
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse", steps_per_execution=every
    )
    callback, recorder = EMACallback(decay=0.8), Recorder()
    initial = model.get_weights()
    model.fit(X, Y, epochs=2, callbacks=[callback, recorder], **FIT)
    calls = 2 * -(-BATCHES // every)
    assert callback.step == len(recorder.seen) == calls
    assert_bits(
        callback.average_weights(), hand_run(model, initial, recorder.seen, callback.config)
    )


def test_fits_in_a_row_with_evaluate_and_predict_between_are_one_ema_trained_live() -> None:
    """Three ``fit`` calls in a row (``initial_epoch`` continuing the epochs, the last one
    with no epoch left) are one EMA over every batch, started at the weights of the first
    ``fit``, ``step`` counting on; ``evaluate`` / ``predict`` on the EMA between them give
    the live weights back, so a run with them equals a run without them, bit for bit."""
    runs = []
    for between in (False, True):
        model, callback = make_model(), EMACallback(schedule=schedules.warmup(0.9))
        recorder, initial = Recorder(), model.get_weights()
        model.fit(X, Y, epochs=1, callbacks=[callback, recorder], **FIT)
        if between:
            live = model.get_weights()
            model.evaluate(X, Y, verbose=0, callbacks=[callback])
            model.predict(X, verbose=0, callbacks=[callback])
            assert_bits(model.get_weights(), live)
        model.fit(X, Y, epochs=3, initial_epoch=1, callbacks=[callback, recorder], **FIT)
        model.fit(X, Y, epochs=3, initial_epoch=3, callbacks=[callback, recorder], **FIT)
        assert callback.step == len(recorder.seen) == 3 * BATCHES
        want = hand_run(model, initial, recorder.seen, callback.config)
        assert_bits(callback.average_weights(), want)
        runs.append((model.get_weights(), want))
    assert_bits(runs[1][0], runs[0][0])
    assert_bits(runs[1][1], runs[0][1])


def test_validation_on_the_ema_beside_model_checkpoint_and_early_stopping(
    tmp_path: Path,
) -> None:
    """``swap=("validate",)`` beside ``ModelCheckpoint(save_weights_only=True)`` (every epoch
    and best-only) and ``EarlyStopping(restore_best_weights=True)``: validation sees the
    averages of that epoch and each ``val_loss`` is the loss of a model holding them; the
    checkpoints hold the live weights of their epoch; EarlyStopping puts back the live weights
    of the best epoch (never averages); the EMA is the hand run over every batch."""
    model, callback = make_model(), EMACallback(decay=0.99, swap=("validate",))
    recorder, initial = Recorder(callback), model.get_weights()
    every = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "e{epoch}.weights.h5"), save_weights_only=True
    )
    best = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.weights.h5"), save_weights_only=True, save_best_only=True
    )
    stop = keras.callbacks.EarlyStopping(patience=1, restore_best_weights=True, min_delta=1e9)
    history = model.fit(
        X,
        Y,
        epochs=5,
        validation_data=(X, Y),
        callbacks=[every, best, callback, recorder, stop],
        **FIT,
    )
    assert len(recorder.at_validation) == 2  # min_delta: no epoch after the first improves
    for epoch, averages in enumerate(recorder.averages_at_epoch_end):
        assert_bits(recorder.at_validation[epoch], averages)
        assert_bits(recorder.at_epoch_end[epoch], recorder.seen[(epoch + 1) * BATCHES - 1])
        loss = twin_of(model, averages).evaluate(X, Y, batch_size=16, verbose=0)
        assert history.history["val_loss"][epoch] == pytest.approx(loss, rel=1e-6)
        twin = keras.models.clone_model(model)
        twin.load_weights(tmp_path / f"e{epoch + 1}.weights.h5")
        assert_bits(twin.get_weights(), recorder.at_epoch_end[epoch])
    twin = keras.models.clone_model(model)  # ModelCheckpoint's best: any improvement
    twin.load_weights(tmp_path / "best.weights.h5")
    assert_bits(
        twin.get_weights(), recorder.at_epoch_end[int(np.argmin(history.history["val_loss"]))]
    )
    assert_bits(model.get_weights(), recorder.at_epoch_end[0])  # restored by EarlyStopping
    assert callback.step == 2 * BATCHES
    assert_bits(
        callback.average_weights(), hand_run(model, initial, recorder.seen, callback.config)
    )


def test_model_save_load_model_evaluates_the_ema_and_continues_from_its_file(
    tmp_path: Path,
) -> None:
    """``model.save("x.keras")`` then ``load_model``: the old callback evaluates the reloaded
    copy on the averages and gives its weights back; a new callback ``load``-ed from the EMA
    file continues bit for bit like the original model and callback."""
    model, callback = make_model(), EMACallback(decay=0.8)
    model.fit(X, Y, epochs=1, callbacks=[callback], **FIT)
    model.save(tmp_path / "x.keras")
    callback.save(tmp_path / "ema.safetensors")
    loaded = keras.models.load_model(tmp_path / "x.keras")
    live = loaded.get_weights()
    assert_bits(live, model.get_weights())
    got = loaded.evaluate(X, Y, verbose=0, callbacks=[callback])
    assert got == twin_of(model, callback.average_weights()).evaluate(X, Y, verbose=0)
    assert_bits(loaded.get_weights(), live)
    with pytest.raises(ValueError, match="copy"):
        loaded.fit(X, Y, epochs=1, callbacks=[callback], **FIT)
    assert_bits(loaded.get_weights(), live)

    resumed = EMACallback(decay=0.8)
    resumed.load(tmp_path / "ema.safetensors", loaded)
    loaded.fit(X, Y, epochs=2, initial_epoch=1, callbacks=[resumed], **FIT)
    model.fit(X, Y, epochs=2, initial_epoch=1, callbacks=[callback], **FIT)
    assert resumed.step == callback.step == 2 * BATCHES
    assert_bits(loaded.get_weights(), model.get_weights())
    assert_bits(resumed.average_weights(), callback.average_weights())


def test_class_weight_and_sample_weight_fits_match_a_hand_run() -> None:
    """``class_weight`` and ``sample_weight`` only change the steps: the EMA is still the hand
    run over the weights after each batch, and validation ``sample_weight`` is honoured."""
    labels = (np.median(Y) < Y).astype("float32")
    weights = np.linspace(0.5, 2.0, len(X)).astype("float32")
    for extra in ({"class_weight": {0: 1.0, 1: 3.0}}, {"sample_weight": weights}):
        model = make_model()
        model.compile(optimizer="sgd", loss="mse")
        callback = EMACallback(decay=0.7, swap=("validate",))
        recorder = Recorder(callback)
        initial = model.get_weights()
        history = model.fit(
            X,
            labels,
            epochs=1,
            validation_data=(X, labels, weights),
            callbacks=[callback, recorder],
            **extra,
            **FIT,
        )
        want = hand_run(model, initial, recorder.seen, callback.config)
        assert_bits(callback.average_weights(), want)
        twin = twin_of(model, want)
        loss = twin.evaluate(X, labels, sample_weight=weights, batch_size=16, verbose=0)
        assert history.history["val_loss"][0] == pytest.approx(loss, rel=1e-6)


class CustomStep(keras.Model):
    """A JAX ``train_step`` of the user's own: half the squared error, stateless."""

    def train_step(self, state: Any, data: Any) -> Any:
        trainable, non_trainable, optimizer_vars, metrics_vars = state
        x, y = data

        def loss_of(variables: Any) -> Any:
            pred, new_non_trainable = self.stateless_call(
                variables, non_trainable, x, training=True
            )
            return 0.5 * jnp.mean((pred - y) ** 2), new_non_trainable

        (loss, non_trainable), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
        trainable, optimizer_vars = self.optimizer.stateless_apply(optimizer_vars, grads, trainable)
        return {"loss": loss}, (trainable, non_trainable, optimizer_vars, metrics_vars)


def test_a_custom_train_step_is_averaged_and_evaluated_like_any_model() -> None:
    """A model with its own JAX ``train_step`` (BatchNorm statistics returned by hand): the
    EMA is the hand run, ``evaluate`` runs on it and the live weights come back."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(8, activation="relu")(inputs))
    model = CustomStep(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    callback, recorder = EMACallback(decay=0.8), Recorder()
    initial = model.get_weights()
    model.fit(X, Y, epochs=2, callbacks=[callback, recorder], **FIT)
    assert callback.step == len(recorder.seen) == 2 * BATCHES
    want = hand_run(model, initial, recorder.seen, callback.config)
    assert_bits(callback.average_weights(), want)
    live = model.get_weights()
    assert model.evaluate(X, Y, verbose=0, callbacks=[callback]) == twin_of(model, want).evaluate(
        X, Y, verbose=0
    )
    assert_bits(model.get_weights(), live)


class EvaluateTheEMA(keras.callbacks.Callback):
    """A user's callback that logs the EMA's loss at each epoch end, inside ``fit``."""

    def __init__(self, ema_callback: EMACallback) -> None:
        super().__init__()
        self.ema = ema_callback
        self.losses: list[float] = []

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.losses.append(self.model.evaluate(X, Y, verbose=0, callbacks=[self.ema]))


@pytest.mark.parametrize("swap", [("validate",), ("evaluate",)])
def test_an_evaluate_of_the_ema_from_a_callback_inside_fit_leaves_validation_as_asked(
    swap: tuple[str, ...],
) -> None:
    """An ``evaluate(callbacks=[ema])`` from a user's ``on_epoch_end`` inside ``fit`` (a call
    of its own) leaves the validation of the next epochs "validate": on the averages with
    ``swap=("validate",)``, on the live weights with ``swap=("evaluate",)``: the README tells
    a phase apart as ``evaluate()`` inside ``fit`` is "validate", a call of its own "evaluate"."""
    model, callback = make_model(), EMACallback(decay=0.8, swap=swap)
    recorder = Recorder(callback)
    model.fit(
        X,
        Y,
        epochs=2,
        validation_data=(X, Y),
        callbacks=[callback, recorder, EvaluateTheEMA(callback)],
        **FIT,
    )
    on_averages = "validate" in swap
    for epoch, averages in enumerate(recorder.averages_at_epoch_end):
        want = averages if on_averages else recorder.at_epoch_end[epoch]
        assert_bits(recorder.at_validation[epoch], want)
    assert_bits(model.get_weights(), recorder.at_epoch_end[-1])


TORCH_WORKER = textwrap.dedent(
    """
    import json, pathlib, sys, tempfile
    import numpy as np, keras, torch
    import ema_core as ema
    from ema_core.integrations.keras import EMACallback

    assert keras.backend.backend() == "torch"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype("float32")
    y = (x @ rng.standard_normal((4, 1)) + 0.1).astype("float32")
    fit = dict(batch_size=16, verbose=0, shuffle=False)
    checks = {}

    def build(cls=keras.Model):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, activation="relu")(inputs)
        model = cls(inputs, keras.layers.Dense(1)(keras.layers.BatchNormalization()(hidden)))
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        return model

    def same(got, want):
        return len(got) == len(want) and all(
            g.dtype == w.dtype and g.tobytes() == w.tobytes() for g, w in zip(got, want))

    class Recorder(keras.callbacks.Callback):
        def __init__(self, averager=None):
            super().__init__()
            self.ema, self.seen, self.val, self.end, self.avg = averager, [], [], [], []
        def on_train_batch_end(self, batch, logs=None):
            self.seen.append(self.model.get_weights())
        def on_test_begin(self, logs=None):
            self.val.append(self.model.get_weights())
        def on_epoch_end(self, epoch, logs=None):
            self.end.append(self.model.get_weights())
            if self.ema is not None:
                self.avg.append(self.ema.average_weights())

    def hand_run(model, initial, seen, config, trainable=None):
        trainable = trainable or {id(w) for w in model.trainable_weights}
        pick = [i for i, w in enumerate(model.weights) if id(w) in trainable]
        state = ema.init({str(i): torch.from_numpy(initial[i]) for i in pick}, config)
        for weights in seen:
            state = ema.update(state, {str(i): torch.from_numpy(weights[i]) for i in pick},
                               config)
        average = ema.average(state, config)
        return [average[str(i)].numpy() if i in pick else seen[-1][i]
                for i in range(len(initial))]

    def twin_loss(model, weights):
        twin = keras.models.clone_model(model)
        twin.compile(loss="mse")
        twin.set_weights(weights)
        return twin.evaluate(x, y, batch_size=16, verbose=0)

    # several fits, evaluate / predict between them, initial_epoch: one EMA, training live
    runs = []
    for between in (False, True):
        model, cb, rec = build(), EMACallback(decay=0.8), Recorder()
        initial = model.get_weights()
        model.fit(x, y, epochs=1, callbacks=[cb, rec], **fit)
        if between:
            live = model.get_weights()
            model.evaluate(x, y, verbose=0, callbacks=[cb])
            model.predict(x, verbose=0, callbacks=[cb])
            checks["between_fits_restored"] = same(model.get_weights(), live)
        model.fit(x, y, epochs=2, initial_epoch=1, callbacks=[cb, rec], **fit)
        runs.append((model.get_weights(), cb.average_weights(), cb.step))
    checks["between_fits_hand_run"] = cb.step == len(rec.seen) == 8 and same(
        cb.average_weights(), hand_run(model, initial, rec.seen, cb.config))
    checks["between_fits_same_run"] = (same(runs[0][0], runs[1][0])
                                       and same(runs[0][1], runs[1][1]))

    # validation on the EMA beside ModelCheckpoint(weights only) and EarlyStopping
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        model, cb = build(), EMACallback(decay=0.99, swap=("validate", "evaluate"))
        rec = Recorder(cb)
        keep = keras.callbacks.ModelCheckpoint(str(folder / "e{epoch}.weights.h5"),
                                               save_weights_only=True)
        stop = keras.callbacks.EarlyStopping(patience=1, restore_best_weights=True,
                                             min_delta=1e9)
        history = model.fit(x, y, epochs=5, validation_data=(x, y),
                            callbacks=[keep, cb, rec, stop], **fit)
        checks["validate_on_averages"] = len(rec.val) == 2 and all(
            same(v, a) for v, a in zip(rec.val, rec.avg))
        checks["validate_loss_is_twins"] = all(
            abs(loss - twin_loss(model, a)) <= 1e-6 * abs(loss)
            for loss, a in zip(history.history["val_loss"], rec.avg))
        checks["checkpoint_live"] = True
        for epoch in range(2):
            twin = keras.models.clone_model(model)
            twin.load_weights(folder / f"e{epoch + 1}.weights.h5")
            checks["checkpoint_live"] &= same(twin.get_weights(), rec.end[epoch])
        checks["early_stopping_live_best"] = same(model.get_weights(), rec.end[0])

        # model.save / load_model: the old callback evaluates the copy on the averages
        model.save(folder / "x.keras")
        loaded = keras.models.load_model(folder / "x.keras")
        live = loaded.get_weights()
        loss = loaded.evaluate(x, y, batch_size=16, verbose=0, callbacks=[cb])
        checks["reloaded_evaluate"] = loss == twin_loss(model, cb.average_weights())
        checks["reloaded_restored"] = same(loaded.get_weights(), live)

    # a custom train_step of the user's own
    class CustomStep(keras.Model):
        def train_step(self, data):
            inputs, target, weight = keras.utils.unpack_x_y_sample_weight(data)
            self.zero_grad()
            error = (self(inputs, training=True) - target) ** 2
            loss = 0.5 * (error[:, 0] * weight).mean()
            loss.backward()
            grads = [v.value.grad for v in self.trainable_weights]
            with torch.no_grad():
                self.optimizer.apply(grads, self.trainable_weights)
            return {"loss": loss}

    model, cb, rec = build(CustomStep), EMACallback(decay=0.8), Recorder()
    initial = model.get_weights()
    model.fit(x, y, epochs=2, sample_weight=np.linspace(0.5, 2, 64).astype("float32"),
              callbacks=[cb, rec], **fit)
    checks["custom_train_step"] = cb.step == len(rec.seen) == 8 and same(
        cb.average_weights(), hand_run(model, initial, rec.seen, cb.config))

    # a layer frozen mid-fit (torch trains on without a recompile)
    class FreezeFirst(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                self.model.layers[1].trainable = False

    model, cb, rec = build(), EMACallback(decay=0.8), Recorder()
    initial, trainable = model.get_weights(), {id(w) for w in model.trainable_weights}
    model.fit(x, y, epochs=2, callbacks=[cb, FreezeFirst(), rec], **fit)
    checks["frozen_mid_fit"] = same(cb.average_weights(),
                                    hand_run(model, initial, rec.seen, cb.config, trainable))

    # an evaluate of the EMA from a user's callback inside fit
    class EvaluateTheEMA(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.evaluate(x, y, verbose=0, callbacks=[inner])

    model, inner = build(), EMACallback(decay=0.8, swap=("validate",))
    rec = Recorder(inner)
    model.fit(x, y, epochs=2, validation_data=(x, y),
              callbacks=[inner, rec, EvaluateTheEMA()], **fit)
    checks["nested_evaluate_keeps_validate"] = all(
        same(v, a) for v, a in zip(rec.val, rec.avg))
    print(json.dumps(checks))
    """
)


@pytest.fixture(scope="module")
def torch_checks() -> dict[str, bool]:
    """The checks of ``TORCH_WORKER``, run once with ``KERAS_BACKEND=torch``."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    done = subprocess.run(
        [sys.executable, "-c", TORCH_WORKER],
        check=False,
        env={**os.environ, "KERAS_BACKEND": "torch"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "check",
    [
        "between_fits_restored",
        "between_fits_hand_run",
        "between_fits_same_run",
        "validate_on_averages",
        "validate_loss_is_twins",
        "checkpoint_live",
        "early_stopping_live_best",
        "reloaded_evaluate",
        "reloaded_restored",
        "custom_train_step",
        "frozen_mid_fit",
    ],
)
def test_torch_backend_fit_flows(torch_checks: dict[str, bool], check: str) -> None:
    """The flows above on the torch backend (one subprocess): several fits with evaluate /
    predict between, validation on the EMA beside ``ModelCheckpoint`` and ``EarlyStopping``,
    a reloaded copy evaluated on the averages, a custom ``train_step`` with
    ``sample_weight``, and a layer frozen mid-``fit`` (torch trains on without a recompile:
    the EMA keeps averaging that layer's weights, now constant)."""
    assert torch_checks[check] is True


def test_torch_backend_nested_evaluate_keeps_validation_on_the_ema(
    torch_checks: dict[str, bool],
) -> None:
    """Torch: an ``evaluate(callbacks=[ema])`` from a user's ``on_epoch_end`` inside ``fit``
    leaves the validation of the next epochs on the averages (``swap=("validate",)``)."""
    assert torch_checks["nested_evaluate_keeps_validate"] is True
