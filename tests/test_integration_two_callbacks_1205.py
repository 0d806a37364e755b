"""Two ``EMACallback``s on one model (two decays, README "Lightning" and "Keras 3"): each swap
backed up what the model held, the end hooks ran in list order, and the last restore wrote the
first callback's averages into the model, for training to go on from (a hunt of 2026-12-05).
The first callback to swap now holds the model until it restores; the other waits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests._lightning_helpers import WARNINGS, Net, loader, quiet, trainer

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
from ema_core.integrations.lightning import EMACallback  # noqa: E402

pytestmark = WARNINGS
__all__ = ["quiet"]  # the autouse fixture


def _fit(root: Path, callbacks: list[Any]) -> Net:
    model = Net()
    trainer(root, callbacks).fit(model, loader(), loader(2))
    return model


def test_lightning_two_callbacks_leave_training_as_without_them(tmp_path: Path) -> None:
    plain = _fit(tmp_path / "a", [])
    fast, slow = EMACallback(decay=0.5), EMACallback(decay=0.99)
    both = _fit(tmp_path / "b", [fast, slow])
    for name, value in plain.state_dict().items():
        assert torch.equal(both.state_dict()[name], value), name
    # validation ran on the first callback's averages (the model holds one set at a time)
    last = both.seen["validate"][-1]
    assert fast.ema is not None
    for name, value in last.items():
        assert torch.equal(value, fast.ema.average[name]), name


def test_keras_two_callbacks_give_the_live_weights_back_after_evaluate() -> None:
    pytest.importorskip("keras")
    import subprocess
    import sys

    script = """
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
import warnings; warnings.filterwarnings("ignore")
import numpy as np, keras
from ema_core.integrations.keras import EMACallback
rng = np.random.default_rng(0)
X = rng.standard_normal((64, 4)).astype("float32")
Y = (X @ rng.standard_normal((4, 1))).astype("float32")
keras.utils.set_random_seed(1)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
fast, slow = EMACallback(decay=0.5), EMACallback(decay=0.99)
model.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[fast, slow])
live = model.get_weights()
model.evaluate(X, Y, verbose=0, callbacks=[fast, slow])
after = model.get_weights()
print(all(np.array_equal(a, b) for a, b in zip(live, after)))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True"


def test_lightning_fp16_step_the_grad_scaler_skips_takes_no_update(tmp_path: Path) -> None:
    """Lightning counts a step the ``GradScaler`` skipped (inf gradients) in ``global_step``:
    the EMA blended the unchanged weights in as an update. ``precision="16-mixed"`` on CUDA,
    here with the CPU's scaler; the EMA is checked against a float64 EMA of the steps that
    moved the weights."""
    from lightning.pytorch.plugins import MixedPrecision

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return torch.nn.functional.mse_loss(self.net(batch[0]).float(), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class Record(pl.Callback):
        def on_train_start(self, trainer: Any, module: Any) -> None:
            self.lives = [module.net.weight.detach().double().clone()]

        def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
            self.lives.append(module.net.weight.detach().double().clone())

    torch.manual_seed(1)
    x = torch.randn(48, 4)
    y = x.sum(1, keepdim=True)
    y[24:32] = 1e6  # batch 4 overflows in float16: the scaler skips that step
    average, record = EMACallback(decay=0.5), Record()
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=16.0))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer(tmp_path, [average, record], plugins=[plugin], max_epochs=1).fit(Model(), data)
    shadow, moved = record.lives[0], 0
    for before, live in zip(record.lives, record.lives[1:], strict=False):
        if torch.equal(before, live):
            continue
        moved += 1
        shadow = shadow + 0.5 * (live - shadow)
    assert moved == 5
    assert average.ema is not None
    torch.testing.assert_close(
        average.ema.average["net.weight"].double(), shadow, rtol=1e-6, atol=1e-7
    )


def test_lightning_ema_starts_at_on_train_start_even_after_a_sanity_check(tmp_path: Path) -> None:
    """README: "The EMA is built at ``on_train_start``". The sanity check's validation built it
    earlier, on the weights from before a callback listed first set them."""

    class SetWeights(pl.Callback):
        def on_train_start(self, trainer: Any, module: Any) -> None:
            with torch.no_grad():
                module.layer.weight.fill_(5.0)

    average = EMACallback(decay=0.9999)
    fit = trainer(tmp_path, [SetWeights(), average], num_sanity_val_steps=2, max_epochs=1)
    fit.fit(Net(), loader(), loader(2))
    assert average.ema is not None
    got = average.ema.average["layer.weight"]
    assert bool(((got - 5.0).abs() < 0.05).all()), got


def test_lightning_fp16_two_optimizers_one_skipped_still_updates(tmp_path: Path) -> None:
    """Manual optimization with two optimizers: the scaler skipped the second one's step, the
    first one's went through; the batch's update was dropped (only the last step's skip was
    seen). One update per batch whose weights moved."""
    from lightning.pytorch.plugins import MixedPrecision

    class Two(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            torch.manual_seed(0)
            self.a, self.b = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            for layer, opt, scale in zip(
                (self.a, self.b),
                self.optimizers(),
                (1.0, 1e6 if batch_idx == 2 else 1.0),
                strict=True,
            ):
                opt.zero_grad()
                self.manual_backward(torch.nn.functional.mse_loss(layer(x).float(), y * scale))
                opt.step()

        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(m.parameters(), lr=0.05) for m in (self.a, self.b)]

    torch.manual_seed(1)
    x = torch.randn(48, 4)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8
    )

    class Record(pl.Callback):
        def on_train_start(self, trainer: Any, module: Any) -> None:
            self.lives = [module.a.weight.detach().double().clone()]

        def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
            self.lives.append(module.a.weight.detach().double().clone())

    average, record = EMACallback(decay=0.5), Record()
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=16.0))
    trainer(tmp_path, [average, record], plugins=[plugin], max_epochs=1).fit(Two(), data)
    assert average.ema is not None
    shadow = record.lives[0]
    for before, live in zip(record.lives, record.lives[1:], strict=False):
        assert not torch.equal(before, live)  # a's step went through in every batch
        shadow = shadow + 0.5 * (live - shadow)
    torch.testing.assert_close(
        average.ema.average["a.weight"].double(), shadow, rtol=1e-6, atol=1e-7
    )
