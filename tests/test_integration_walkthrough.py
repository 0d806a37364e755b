"""What a new user does with the trainer callbacks, and what broke: another model in one call.

A user keeps one callback and hands the trainer a second model (the best checkpoint reloaded,
a fresh model of a sweep). Lightning: a ``test`` / ``validate`` / ``predict`` of another
module runs on that module's live weights and keeps the EMA of the trained one (it was
dropped). Keras: ``evaluate`` / ``predict`` of another model of the same layout run on the
averages (they went into the trained model's variables, and the other model ran live), and
``fit`` of another model is refused before any update (it mixed two models in one EMA).

Keras runs its jax backend here, in-process; the fixture skips where that is not possible.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning.pytorch")

from tests._lightning_helpers import (
    WARNINGS,
    Net,
    assert_same,
    differ,
    fit,
    loader,
    quiet,  # noqa: F401 (autouse fixture)
    trainer,
)

pytestmark = [
    *WARNINGS,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]


def test_lightning_test_of_another_module_runs_live_and_keeps_the_ema(tmp_path: Path) -> None:
    model, callback, recorder = fit(tmp_path, max_epochs=1)
    assert callback.ema is not None
    averages = {k: v.clone() for k, v in callback.ema.average.items()}
    run = trainer(tmp_path, [callback])
    other = Net()
    live = other.weights()
    run.test(other, loader(2))
    run.validate(other, loader(2))
    assert other.seen["test"] and other.seen["validate"]
    for seen in [*other.seen["test"], *other.seen["validate"]]:
        assert_same(seen, live)  # the other module's own weights
    assert_same(other.weights(), live)
    assert callback.ema is not None and callback.ema.step == recorder.steps[-1]
    assert_same(callback.ema.average, averages)
    run.test(model, loader(2))  # the trained module: still its averages
    assert model.seen["test"] and differ(averages, recorder.live[-1])
    for seen in model.seen["test"]:
        assert_same(seen, averages)
    assert_same(model.weights(), recorder.live[-1])


@pytest.fixture(scope="module")
def keras_jax() -> Any:
    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("jax") is None:
        pytest.skip("keras and jax are needed")
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "jax"
    keras = importlib.import_module("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")
    return keras


def _keras_model(keras: Any) -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


@pytest.fixture(scope="module")
def keras_fitted(keras_jax: Any) -> tuple[Any, Any, Any, Any]:
    """A model fitted with an EMACallback (4 updates), the callback and the data: the tests
    below leave both as they are (each checks that)."""
    keras, module = keras_jax, importlib.import_module("ema_core.integrations.keras")
    x = np.random.default_rng(0).standard_normal((32, 4)).astype("float32")
    y = x.sum(1, keepdims=True)
    model, ema = _keras_model(keras), module.EMACallback(decay=0.9)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ema])
    return model, ema, x, y


def test_keras_evaluate_and_predict_of_a_copy_run_on_the_averages(
    keras_jax: Any, keras_fitted: tuple[Any, Any, Any, Any]
) -> None:
    model, ema, x, y = keras_fitted
    copy = _keras_model(keras_jax)  # as a reloaded checkpoint would be: its own variables
    live = model.get_weights()
    copy.set_weights(live)
    weight, bias = ema.average_weights()
    on_averages = x @ weight + bias
    predicted = copy.predict(x, verbose=0, callbacks=[ema])
    np.testing.assert_allclose(predicted, on_averages, rtol=1e-5)
    assert not np.allclose(predicted, x @ live[0] + live[1], rtol=1e-3)
    loss = copy.evaluate(x, y, verbose=0, callbacks=[ema])
    np.testing.assert_allclose(loss, np.mean((on_averages - y) ** 2), rtol=1e-5)
    for a, b, c in zip(copy.get_weights(), live, model.get_weights(), strict=True):
        assert a.tobytes() == b.tobytes() == c.tobytes()  # both hold the live weights after


def test_keras_evaluate_of_another_layout_is_refused(
    keras_jax: Any, keras_fitted: tuple[Any, Any, Any, Any]
) -> None:
    _, ema, x, y = keras_fitted
    keras_jax.utils.set_random_seed(0)
    wide = keras_jax.Sequential([keras_jax.Input((4,)), keras_jax.layers.Dense(2)])
    wide.compile(optimizer="sgd", loss="mse")
    before = wide.get_weights()
    with pytest.raises(ValueError, match="another model"):
        wide.evaluate(x, np.repeat(y, 2, 1), verbose=0, callbacks=[ema])
    for a, b in zip(wide.get_weights(), before, strict=True):
        assert a.tobytes() == b.tobytes()


def test_keras_fit_of_another_model_is_refused_before_any_update(
    keras_jax: Any, keras_fitted: tuple[Any, Any, Any, Any]
) -> None:
    _, ema, x, y = keras_fitted
    kept, step = ema.average_weights(), ema.step
    other = _keras_model(keras_jax)
    start = other.get_weights()
    with pytest.raises(ValueError, match=r"fit\(\) got another model .* new EMACallback"):
        other.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ema])
    assert ema.step == step
    for a, b in zip(ema.average_weights(), kept, strict=True):
        assert a.tobytes() == b.tobytes()
    for a, b in zip(other.get_weights(), start, strict=True):
        assert a.tobytes() == b.tobytes()  # refused in on_train_begin: no batch ran


def test_accelerate_says_how_to_load_with_strict_false(tmp_path: Path) -> None:
    accelerate = pytest.importorskip("accelerate")
    module = importlib.import_module("ema_core.integrations.accelerate")
    checkpoint = importlib.import_module("ema_core.checkpoint")
    ema_torch = importlib.import_module("ema_core.torch")
    torch = importlib.import_module("torch")

    def prepared(decay: float) -> tuple[Any, Any, Any]:
        accelerator = accelerate.Accelerator(cpu=True)
        torch.manual_seed(0)
        model = accelerator.prepare(torch.nn.Linear(3, 2))
        return accelerator, model, ema_torch.EMA(model, decay=decay)

    accelerator, _, saved = prepared(0.9)
    module.register(accelerator, saved)
    saved.update()
    accelerator.save_state(tmp_path)
    accelerator, _, other = prepared(0.99)
    hooks = module.register(accelerator, other)
    with pytest.raises(
        ValueError,
        match=r"\(load_state loaded no EMA\)\. load_state takes no strict=.*strict=False\)$",
    ) as caught:
        accelerator.load_state(tmp_path)
    assert "ema_path(folder, name='ema')" in str(caught.value) and other.step == 0
    hooks.remove()  # what the message says, and it works
    accelerator.load_state(tmp_path)
    checkpoint.load(module.ema_path(tmp_path), other, strict=False)
    assert other.step == 1 and torch.equal(other.average["weight"], saved.average["weight"])
