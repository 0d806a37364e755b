"""The demo's torch run: a small CNN on the digits, trained by Lightning with ``EMACallback``.

The callback keeps the EMA of the weights (one update per optimizer step) and swaps the
averages in for every validation, so ``validation_step`` below measures the EMA weights with no
code of its own for it. The raw (live) weights are measured by ``Recorder`` just before each
validation, from the same model.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable

import _demo_data as data
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ema_core.integrations.lightning import EMACallback

Curves = dict[str, list[float]]


def quiet_lightning() -> None:
    """Keep Lightning's known notices out of the output: its INFO lines, two exact warnings."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # "GPU available: ..."
    # the digits sit in memory: no need for DataLoader worker processes
    warnings.filterwarnings("ignore", r"The '\w+' does not have many workers", PossibleUserWarning)
    # lightning 2.6 on torch >= 2.10 warns about torch's LeafSpec from its own code
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)`", FutureWarning)


def cnn() -> nn.Module:
    """8x8x1 -> conv 3x3 (16) -> conv 3x3 stride 2 (32) -> 10 logits; 9,930 weights."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


class DigitsCNN(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch  # the EMA weights are in the model here: EMACallback swapped them in
        self.log("test_acc", accuracy(self, x, y), batch_size=len(y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=data.LR)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((model(x).argmax(1) == y).float().mean())


class Recorder(pl.Callback):
    """Test accuracy of the live weights before each validation, of the EMA after it."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, tick: Callable[[], None]) -> None:
        self.x, self.y, self.tick = x, y, tick
        self.curves: Curves = {"step": [], "raw": [], "ema": []}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object
    ) -> None:
        self.tick()
        if trainer.global_step % data.EVAL_EVERY == 0:  # a validation follows this batch
            self.curves["step"].append(trainer.global_step)
            self.curves["raw"].append(accuracy(pl_module, self.x, self.y))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.curves["ema"].append(float(trainer.callback_metrics["test_acc"]))


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def train(digits: data.Digits, tick: Callable[[], None]) -> Curves:
    """Fit the CNN with the EMA callback; return the raw and EMA test-accuracy curves."""
    quiet_lightning()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and shares the cores best
    torch.manual_seed(data.SEED)
    x_test, y_test = nchw(digits.x_test), torch.from_numpy(digits.y_test)
    train_set = TensorDataset(nchw(digits.x_train), torch.from_numpy(digits.y_train))
    # the same minibatches as the JAX run, in the same order
    train_loader = DataLoader(train_set, batch_sampler=digits.batches().tolist())
    test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=len(y_test))
    recorder = Recorder(x_test, y_test, tick)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            max_steps=data.STEPS,
            val_check_interval=data.EVAL_EVERY,
            num_sanity_val_steps=0,
            callbacks=[EMACallback(data.CONFIG), recorder],
            accelerator="cpu",
            devices=1,
            default_root_dir=root,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
        )
        trainer.fit(DigitsCNN(), train_loader, test_loader)
    return recorder.curves
