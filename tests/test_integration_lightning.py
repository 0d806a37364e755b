"""The Lightning ``EMACallback`` with the real Lightning ``Trainer`` on the CPU, tiny models.

Every comparison is bit for bit: the callback's averages against a hand-run ``EMA`` updated at
the optimizer steps a recorder saw, the weights validation/predict/test saw against those
averages, and the live weights after every swap against the ones before it. Checkpoints
(saving, resuming, warm starts): ``test_integration_lightning_checkpoints.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning.pytorch")

import ema_core as ema
from ema_core.integrations.lightning import EMACallback
from tests._lightning_helpers import (
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


@pytest.mark.parametrize("mode", ["keep-live", "swap-in"])
def test_on_fit_end(tmp_path: Path, mode: str) -> None:
    model, callback, recorder = fit(tmp_path, ema={"on_fit_end": mode})
    assert callback.ema is not None
    expected = recorder.live[-1] if mode == "keep-live" else callback.ema.average
    assert_same(model.weights(), expected)
    assert differ(callback.ema.average, recorder.live[-1])


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
