"""Shared pieces of the Lightning ``EMACallback`` tests: a tiny model, a recorder, a trainer.

``hand_run`` is the EMA a plain loop keeps; ``assert_same`` compares bit for bit. The test
modules import ``quiet`` (an autouse fixture) and set ``pytestmark = WARNINGS``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

import ema_core as ema  # noqa: E402
from ema_core.integrations.lightning import EMACallback  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

SCHEDULE = ema.schedules.warmup(0.99)
WARNINGS = [
    pytest.mark.filterwarnings("ignore:The '\\w+_dataloader' does not have many workers"),
    # lightning 2.6 with torch >= 2.10 (torch.utils._pytree.LeafSpec):
    pytest.mark.filterwarnings(
        "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"
    ),
]


class Net(pl.LightningModule):
    """A linear layer trained by SGD; records the weights each stage sees."""

    def __init__(self, fail_in_validation: bool = False, save_to: Path | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 2)
        self.fail_in_validation, self.save_to = fail_in_validation, save_to
        self.seen: dict[str, list[dict[str, Any]]] = {"validate": [], "test": []}

    def weights(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.seen["validate"].append(self.weights())
        if self.fail_in_validation and self.trainer.global_step > 0:
            raise RuntimeError("validation failed")

    def on_validation_epoch_end(self) -> None:
        if self.save_to is not None and self.trainer.global_step > 0:
            self.trainer.save_checkpoint(self.save_to)
            self.seen["validate"].append(self.weights())  # after the save: still the averages

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.seen["test"].append(self.weights())

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        return self.weights()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recorder(pl.Callback):
    """The live weights at the start of training and after each optimizer step."""

    def __init__(self) -> None:
        self.start: dict[str, Any] = {}
        self.steps: list[int] = []
        self.live: list[dict[str, Any]] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = pl_module.weights()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_step > (self.steps[-1] if self.steps else 0):
            self.steps.append(trainer.global_step)
            self.live.append(pl_module.weights())


def loader(batches: int = 8) -> Any:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4 * batches, 4, generator=generator)
    y = torch.randn(4 * batches, 2, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def trainer(root: Path, callbacks: list[Any], **options: Any) -> Any:
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "max_epochs": 2,
        "log_every_n_steps": 1,
        "default_root_dir": root,
        "callbacks": callbacks,
    }
    return pl.Trainer(**{**settings, **options})


def hand_run(start: dict[str, Any], recorder: Recorder, **options: Any) -> EMA:
    """The EMA a plain loop keeps: built on ``start``, updated at the recorded steps."""
    model = Net()
    model.load_state_dict(start)
    averaged = EMA(model, **options)
    for step, live in zip(recorder.steps, recorder.live, strict=True):
        model.load_state_dict(live)
        averaged.update(step)
    return averaged


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def differ(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return any(not torch.equal(a[n], b[n]) for n in a)


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


def fit(tmp_path: Path, model: Any = None, **options: Any) -> tuple[Any, EMACallback, Recorder]:
    model = Net() if model is None else model
    callback = EMACallback(schedule=SCHEDULE, **options.pop("ema", {}))
    recorder = Recorder()
    run = trainer(tmp_path, [callback, recorder], **options)
    run.fit(model, loader(), loader(2))
    return model, callback, recorder
