"""The Keras ``EMACallback`` on the torch backend with bf16 tensors (a bf16 dtype policy, or
bf16 shadows): ``average_weights()`` raised torch's "unsupported ScalarType BFloat16" where
README promises a list in ``model.get_weights()`` order and dtypes. Run in a subprocess: Keras
picks its backend at import, and the in-process tests run JAX."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

from tests.keras_torch_worker import run_on_torch_backend

if importlib.util.find_spec("keras") is None:
    pytest.skip("keras is needed", allow_module_level=True)

WORKER = textwrap.dedent(
    """
    import numpy as np, keras
    from ema_core import Config
    from ema_core.integrations.keras import EMACallback

    assert keras.backend.backend() == "torch"
    x = np.random.default_rng(0).random((32, 4)).astype("float32")
    y = x.sum(1, keepdims=True)
    cases = [("bfloat16", dict(decay=0.9, buffers=b)) for b in ("copy", "skip", "average")]
    cases.append(("float32", dict(config=Config(0.9, dtype="bfloat16"))))
    for policy, kwargs in cases:
        keras.config.set_dtype_policy(policy)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                                  keras.layers.BatchNormalization(), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        ema = EMACallback(**kwargs)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ema])
        averages = ema.average_weights()
        live = model.get_weights()
        assert [a.dtype for a in averages] == [w.dtype for w in live], policy
        assert [a.shape for a in averages] == [w.shape for w in live], policy
        model.set_weights(averages)
        for got, want in zip(model.get_weights(), averages):
            assert np.array_equal(got.astype("float32"), want.astype("float32"))
        moved = [not np.array_equal(a, w) for a, w in zip(averages, live)]
        assert any(moved), policy  # the averages are not the live weights
    print("OK")
    """
)


def test_average_weights_with_bf16_tensors_on_the_torch_backend() -> None:
    pytest.importorskip("torch")
    run_on_torch_backend(WORKER, "OK", PYTHONWARNINGS="ignore")
