"""The Lightning ``EMACallback`` and checkpoints, with the real ``Trainer`` on the CPU.

A checkpoint holds the live weights and the EMA state beside them (also when written during
validation, with the averages swapped in); resuming from it is bit for bit the run that never
stopped; a checkpoint without EMA state warm-starts; two callbacks keep two states.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from ema_core.integrations.lightning import EMACallback  # noqa: E402
from tests._lightning_helpers import (  # noqa: E402
    SCHEDULE,
    WARNINGS,
    Net,
    Recorder,
    assert_same,
    differ,
    fit,
    hand_run,
    loader,
    quiet,  # noqa: F401 (autouse fixture)
    trainer,
)

pytestmark = WARNINGS


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


def test_validate_from_a_checkpoint_runs_on_its_ema(tmp_path: Path) -> None:
    path = tmp_path / "inside.ckpt"
    model, callback, _ = fit(tmp_path, model=Net(save_to=path), max_epochs=1)
    assert callback.ema is not None
    fresh, fresh_callback = Net(), EMACallback(schedule=SCHEDULE)
    trainer(tmp_path, [fresh_callback]).validate(fresh, loader(2), ckpt_path=path)
    assert_same(fresh.seen["validate"][0], callback.ema.average)
    assert_same(fresh.weights(), model.weights())


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
