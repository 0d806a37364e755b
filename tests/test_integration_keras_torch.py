"""The Keras 3 ``EMACallback`` on the torch backend, in a subprocess.

Keras picks its backend once, at import, and the in-process tests run jax; this worker runs the
checks of ``test_integration_keras.py`` and ``test_integration_keras_resume.py`` (fit against a
hand run, evaluate, predict, save and load) and the gradient-accumulation check of
``test_integration_hostile_keras.py`` (one update per optimizer step, read from the optimizer's
counter) with ``KERAS_BACKEND=torch``, bit for bit.
"""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

from tests.keras_torch_worker import run_on_torch_backend

if importlib.util.find_spec("keras") is None:
    pytest.skip("keras is needed", allow_module_level=True)

# the mark every Keras test carries (Keras' Variable.numpy() under numpy 2)
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
TORCH_WORKER = textwrap.dedent(
    """
    import tempfile, pathlib
    import numpy as np, keras, torch
    import ema_core as ema
    from ema_core import Config, schedules
    from ema_core.integrations.keras import EMACallback

    assert keras.backend.backend() == "torch"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype("float32")
    y = (x @ rng.standard_normal((4, 1)) + 0.1).astype("float32")

    def build(optimizer):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.BatchNormalization(), keras.layers.Dense(1)])
        model.compile(optimizer=optimizer, loss="mse")
        return model

    model = build(keras.optimizers.SGD(0.05, momentum=0.9))
    seen = []
    recorder = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(model.get_weights()))
    config = Config(schedule=schedules.warmup(0.9), init="zeros")  # buffers averaged
    callback = EMACallback(config)
    initial = model.get_weights()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False,
              callbacks=[callback, recorder])
    names = [w.path for w in model.weights]

    def hand_run(initial, seen, config):
        state = ema.init({n: torch.from_numpy(a) for n, a in zip(names, initial)}, config)
        for weights in seen:
            update = {n: torch.from_numpy(a) for n, a in zip(names, weights)}
            state = ema.update(state, update, config)
        return [ema.average(state, config)[n].numpy() for n in names]

    want = hand_run(initial, seen, config)

    def same(got, want):
        assert all(g.dtype == w.dtype and g.tobytes() == w.tobytes() for g, w in zip(got, want))

    assert callback.step == len(seen) == 8
    same(callback.average_weights(), want)
    live = model.get_weights()
    twin = keras.models.clone_model(model)
    twin.compile(loss="mse")
    twin.set_weights(callback.average_weights())
    loss = model.evaluate(x, y, verbose=0, callbacks=[callback])
    same(model.get_weights(), live)
    assert loss == twin.evaluate(x, y, verbose=0) != model.evaluate(x, y, verbose=0)
    out = model.predict(x, verbose=0, callbacks=[callback])
    same(model.get_weights(), live)
    same([out], [twin.predict(x, verbose=0)])
    with tempfile.TemporaryDirectory() as folder:
        path = callback.save(pathlib.Path(folder) / "ema.safetensors")
        resumed = EMACallback(config)
        resumed.load(path, model)
    assert resumed.step == 8
    same(resumed.average_weights(), want)

    # gradient accumulation: 8 batches, 4 optimizer steps, one update per step
    model = build(keras.optimizers.SGD(0.05, gradient_accumulation_steps=2))
    stepped = []  # the weights after each batch that applied an optimizer step
    recorder = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: (
        stepped.append(model.get_weights())
        if int(model.optimizer.iterations) > len(stepped) else None))
    config = Config(schedule=schedules.constant(0.5), buffers="average")
    callback, initial = EMACallback(config), model.get_weights()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False,
              callbacks=[callback, recorder])
    assert callback.step == len(stepped) == int(model.optimizer.iterations) == 4
    same(callback.average_weights(), hand_run(initial, stepped, config))
    print("ok")
    """
)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_backend_in_a_subprocess() -> None:
    run_on_torch_backend(TORCH_WORKER, "ok")
