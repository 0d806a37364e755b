"""The Lightning ``EMACallback`` with the real Lightning ``Trainer`` on the CPU, tiny models.

Every comparison is bit for bit: the callback's averages against a hand-run ``EMA`` updated at
the optimizer steps a recorder saw, the weights validation/predict/test saw against those
averages, and the live weights after every swap against the ones before it.
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
pytestmark = [
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


def test_one_update_per_optimizer_step_bit_for_bit(tmp_path: Path) -> None:
    _, callback, recorder = fit(tmp_path, accumulate_grad_batches=2)
    assert callback.ema is not None
    assert recorder.steps == [1, 2, 3, 4, 5, 6, 7, 8]  # 16 batches, 2 per optimizer step
    assert callback.ema.step == 8
    expected = hand_run(recorder.start, recorder, schedule=SCHEDULE)
    assert_same(callback.ema.average, expected.average)


def test_validation_sees_the_averages_and_gives_the_live_weights_back(tmp_path: Path) -> None:
    model, callback, recorder = fit(tmp_path, num_sanity_val_steps=0)
    assert callback.ema is not None
    averages = callback.ema.average
    assert_same(model.seen["validate"][-1], averages)  # the last validation: after every update
    assert differ(averages, recorder.live[-1])
    assert_same(model.weights(), recorder.live[-1])  # live weights back after validation


def test_the_sanity_check_before_any_update_runs_on_the_live_weights(tmp_path: Path) -> None:
    config = ema.Config(schedule=SCHEDULE, init="zeros")  # its average is 0/0 before an update
    model = Net()
    start = model.weights()
    callback = EMACallback(config)
    trainer(tmp_path, [callback], max_epochs=1).fit(model, loader(), loader(2))
    assert_same(model.seen["validate"][0], start)  # the sanity check: no average swapped in
    assert_same(model.seen["validate"][-1], callback.ema.average)  # type: ignore[union-attr]


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_last_ckpt_holds_live_weights_and_resume_is_bit_exact(tmp_path: Path) -> None:
    whole, whole_callback, _ = fit(tmp_path / "whole", max_epochs=2)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    model, callback, recorder = Net(), EMACallback(schedule=SCHEDULE), Recorder()
    trainer(
        tmp_path, [callback, recorder, checkpoints], max_epochs=1, enable_checkpointing=True
    ).fit(model, loader(), loader(2))
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert_same(saved["state_dict"], recorder.live[-1])  # live weights, not the averages
    assert differ(saved["state_dict"], callback.ema.average)  # type: ignore[union-attr]
    assert_same(saved["callbacks"][callback.state_key]["shadow"], callback.ema.average)  # type: ignore[union-attr]

    resumed, resumed_callback = Net(), EMACallback(schedule=SCHEDULE)
    again = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, [resumed_callback, again], max_epochs=2, enable_checkpointing=True).fit(
        resumed, loader(), loader(2), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert resumed_callback.ema is not None and whole_callback.ema is not None
    assert resumed_callback.ema.step == whole_callback.ema.step == 16
    assert_same(resumed_callback.ema.average, whole_callback.ema.average)
    assert_same(resumed.weights(), whole.weights())


def test_a_checkpoint_written_during_validation_holds_the_live_weights(tmp_path: Path) -> None:
    path = tmp_path / "inside.ckpt"
    model = Net(save_to=path)  # saves in on_validation_epoch_end, with the averages swapped in
    callback, recorder = EMACallback(schedule=SCHEDULE), Recorder()
    trainer(tmp_path, [callback, recorder], max_epochs=1).fit(model, loader(), loader(2))
    assert callback.ema is not None
    saved = torch.load(path, weights_only=True)
    assert_same(saved["state_dict"], recorder.live[-1])
    assert_same(saved["callbacks"][callback.state_key]["shadow"], callback.ema.average)
    assert_same(model.seen["validate"][-1], callback.ema.average)  # swapped in again after
    assert_same(model.weights(), recorder.live[-1])


def test_predict_and_test_run_on_the_averages(tmp_path: Path) -> None:
    model, callback, recorder = fit(tmp_path)
    assert callback.ema is not None
    run = trainer(tmp_path, [callback])
    predicted = run.predict(model, loader(2))
    run.test(model, loader(2))
    for seen in [*predicted, *model.seen["test"]]:
        assert_same(seen, callback.ema.average)
    assert differ(callback.ema.average, recorder.live[-1])
    assert_same(model.weights(), recorder.live[-1])


def test_validate_from_a_checkpoint_runs_on_its_ema(tmp_path: Path) -> None:
    path = tmp_path / "inside.ckpt"
    model, callback, _ = fit(tmp_path, model=Net(save_to=path), max_epochs=1)
    assert callback.ema is not None
    fresh, fresh_callback = Net(), EMACallback(schedule=SCHEDULE)
    trainer(tmp_path, [fresh_callback]).validate(fresh, loader(2), ckpt_path=path)
    assert_same(fresh.seen["validate"][0], callback.ema.average)
    assert_same(fresh.weights(), model.weights())


@pytest.mark.parametrize("mode", ["keep-live", "swap-in"])
def test_on_fit_end(tmp_path: Path, mode: str) -> None:
    model, callback, recorder = fit(tmp_path, ema={"on_fit_end": mode})
    assert callback.ema is not None
    expected = recorder.live[-1] if mode == "keep-live" else callback.ema.average
    assert_same(model.weights(), expected)
    assert differ(callback.ema.average, recorder.live[-1])


def test_a_checkpoint_without_ema_warm_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain = Net()
    run = trainer(tmp_path, [], max_epochs=1)
    run.fit(plain, loader(), loader(2))
    run.save_checkpoint(tmp_path / "plain.ckpt")
    model, callback, recorder = Net(), EMACallback(schedule=SCHEDULE), Recorder()
    caplog.set_level(logging.INFO, logger="ema_core.integrations.lightning")
    trainer(tmp_path, [callback, recorder], max_epochs=2).fit(
        model, loader(), loader(2), ckpt_path=tmp_path / "plain.ckpt"
    )
    assert "holds no EMA state" in caplog.text and "warm start" in caplog.text
    assert_same(recorder.start, plain.weights())  # the restored live weights
    assert recorder.steps == [9, 10, 11, 12, 13, 14, 15, 16]
    expected = hand_run(recorder.start, recorder, schedule=SCHEDULE)
    assert_same(callback.ema.average, expected.average)  # type: ignore[union-attr]


def test_an_error_inside_validation_gives_the_live_weights_back(tmp_path: Path) -> None:
    model, callback, recorder = Net(fail_in_validation=True), EMACallback(decay=0.5), Recorder()
    with pytest.raises(RuntimeError, match="validation failed"):
        trainer(tmp_path, [callback, recorder]).fit(model, loader(), loader(2))
    assert callback.ema is not None
    assert differ(model.seen["validate"][-1], recorder.live[-1])  # it failed on the averages
    assert_same(model.seen["validate"][-1], callback.ema.average)
    assert_same(model.weights(), recorder.live[-1])


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"decay": 1.5}, ValueError, "decay"),
        ({"decay": 0.9, "schedule": SCHEDULE}, TypeError, "decay, schedule"),
        ({"config": "fast"}, TypeError, "config"),
        ({"swap": ("validate", "fit")}, ValueError, "swap"),
        ({"swap": 3}, TypeError, "swap"),
        ({"swap": ("test", 1)}, TypeError, "swap"),
        ({"on_fit_end": "swap"}, ValueError, "on_fit_end"),
        ({"on_fit_end": True}, TypeError, "on_fit_end"),
        ({"buffers": "mean"}, ValueError, "buffers"),
        ({"dtype": "float7"}, ValueError, "dtype"),
        ({"device": "tpu9"}, ValueError, "device"),
        ({"device": 3.0}, TypeError, "device"),
        ({"include": 3}, TypeError, "include"),
        ({"decya": 0.9}, TypeError, "decya"),
    ],
)
def test_bad_arguments_raise_when_the_callback_is_built(
    arguments: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        EMACallback(**arguments)


def test_two_callbacks_with_different_decays_keep_two_states(tmp_path: Path) -> None:
    slow, fast = EMACallback(decay=0.9), EMACallback(decay=0.5)
    assert slow.state_key != fast.state_key
    model = Net()
    run = trainer(tmp_path, [slow, fast], max_epochs=1)
    run.fit(model, loader(), loader(2))
    run.save_checkpoint(tmp_path / "two.ckpt")
    saved = torch.load(tmp_path / "two.ckpt", weights_only=True)["callbacks"]
    assert slow.ema is not None and fast.ema is not None
    assert_same(saved[slow.state_key]["shadow"], slow.ema.average)
    assert_same(saved[fast.state_key]["shadow"], fast.ema.average)
