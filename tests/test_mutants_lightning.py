"""Tests that the fourth mutation audit (ema_core.integrations.lightning and _lightning_args)
showed missing: each pins one behaviour of the Lightning ``EMACallback`` that a hand-made
mutant changed without any test failing. Real ``Trainer`` on the CPU, tiny models, few steps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning.pytorch")

import ema_core as ema  # noqa: E402
from ema_core.integrations.lightning import EMACallback  # noqa: E402
from tests._lightning_helpers import (  # noqa: E402
    SCHEDULE,
    WARNINGS,
    Net,
    Recorder,
    assert_same,
    fit,
    hand_run,
    loader,
    quiet,  # noqa: F401 (autouse fixture)
    trainer,
)

pytestmark = WARNINGS


class Watcher(Net):
    """``Net`` that records, in each test step, the weights of another module it watches."""

    def __init__(self, watched: Net) -> None:
        super().__init__()
        self.watched = [watched]  # a list: not registered as a submodule
        self.watched_seen: list[dict[str, Any]] = []

    def test_step(self, batch: Any, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self.watched_seen.append(self.watched[0].weights())


def test_swap_refuses_a_mapping_of_stage_names() -> None:
    """A dict is iterable over its keys, but ``swap={"validate": True}`` reads as a setting
    per stage, not a list of them: the callback refuses it when built, with a TypeError."""
    with pytest.raises(TypeError, match="swap must be a stage name or an iterable"):
        EMACallback(decay=0.5, swap={"validate": True})


def test_a_second_fit_with_a_fresh_trainer_starts_a_new_ema(tmp_path: Path) -> None:
    """The callback reused for a second ``fit`` of the same module by a new trainer (its
    global step back at 0, below the EMA's 8): the EMA is built again on the module's weights
    and takes one update per optimizer step of the new fit, as a plain loop would."""
    model, callback, _ = fit(tmp_path, max_epochs=1)
    assert callback.ema is not None and callback.ema.step == 8
    recorder = Recorder()
    trainer(tmp_path, [callback, recorder], max_epochs=1).fit(model, loader(), loader(2))
    assert recorder.steps == [1, 2, 3, 4, 5, 6, 7, 8]
    assert callback.ema is not None and callback.ema.step == 8
    expected = hand_run(recorder.start, recorder, schedule=SCHEDULE)
    assert_same(callback.ema.average, expected.average)


def test_a_test_of_another_module_leaves_the_trained_module_live(tmp_path: Path) -> None:
    """``test`` of another module runs that module live and leaves the trained module (whose
    EMA the callback keeps) with its live weights while it runs: the averages are not
    swapped into a module the trainer is not running."""
    model, callback, recorder = fit(tmp_path, max_epochs=1)
    other = Watcher(model)
    trainer(tmp_path, [callback]).test(other, loader(2))
    assert other.watched_seen
    for seen in other.watched_seen:
        assert_same(seen, recorder.live[-1])


def test_a_loaded_state_is_handed_back_until_the_ema_is_built() -> None:
    """``load_state_dict`` keeps its own copy of the state: ``state_dict`` hands it back
    before the EMA exists (a checkpoint saved then keeps it), also when the caller's dict
    is changed afterwards."""
    state = {"step": 3, "shadow": {"w": torch.ones(2)}}
    callback = EMACallback(decay=0.5)
    callback.load_state_dict(state)
    state.clear()
    saved = callback.state_dict()
    assert saved.keys() == {"step", "shadow"}
    assert saved["step"] == 3 and torch.equal(saved["shadow"]["w"], torch.ones(2))


def test_swap_in_with_no_update_leaves_the_model_unchanged(tmp_path: Path) -> None:
    """``on_fit_end="swap-in"`` after a fit that took no optimizer step: with ``init="zeros"``
    there is no average yet (0/0), so the model keeps its live weights."""
    config = ema.Config(schedule=SCHEDULE, init="zeros")
    model = Net()
    start = model.weights()
    callback = EMACallback(config, on_fit_end="swap-in")
    trainer(tmp_path, [callback], max_epochs=1, limit_train_batches=0).fit(
        model, loader(), loader(2)
    )
    assert callback.ema is not None and callback.ema.step == 0
    assert_same(model.weights(), start)


def _fitted(root: Path) -> tuple[Net, EMACallback, Any, Recorder]:
    """A module fitted one epoch, its callback, the trainer and the recorded live weights."""
    model, callback, recorder = Net(), EMACallback(schedule=SCHEDULE), Recorder()
    run = trainer(root, [callback, recorder], max_epochs=1)
    run.fit(model, loader(), loader(2))
    return model, callback, run, recorder


def test_a_second_start_hook_before_the_end_swaps_once(tmp_path: Path) -> None:
    """A stage's start hook called again before its end hook (a nested stage) does not swap
    the averages in a second time: one end hook gives the live weights back."""
    model, callback, run, recorder = _fitted(tmp_path)
    callback.on_test_start(run, model)
    callback.on_predict_start(run, model)
    assert callback.ema is not None
    assert_same(model.weights(), callback.ema.average)
    callback.on_test_end(run, model)
    assert_same(model.weights(), recorder.live[-1])


@pytest.mark.parametrize("hook", ["teardown", "on_fit_end"])
def test_teardown_and_fit_end_give_the_live_weights_back(tmp_path: Path, hook: str) -> None:
    """``teardown`` and ``on_fit_end`` (``"keep-live"``) leave a swap still open (a stage whose
    end hook never ran): the module gets its live weights back, bit for bit."""
    model, callback, run, recorder = _fitted(tmp_path)
    callback.on_validation_start(run, model)
    assert callback.ema is not None
    assert_same(model.weights(), callback.ema.average)
    if hook == "teardown":
        callback.teardown(run, model, "validate")
    else:
        callback.on_fit_end(run, model)
    assert_same(model.weights(), recorder.live[-1])


def test_a_second_fit_of_another_module_on_one_trainer_averages_that_module(
    tmp_path: Path,
) -> None:
    """One trainer fits a second module after the first (its step count goes on): the EMA is
    built again on the second module and follows it, as a plain loop would."""
    _, callback, run, _ = _fitted(tmp_path)
    other, recorder = Net(), Recorder()
    with torch.no_grad():
        other.layer.weight.add_(1.0)
    run.callbacks.append(recorder)
    run.fit_loop.max_epochs = 2
    run.fit(other, loader(), loader(2))
    assert recorder.steps == [9, 10, 11, 12, 13, 14, 15, 16]
    assert callback.ema is not None
    expected = hand_run(recorder.start, recorder, schedule=SCHEDULE)
    assert_same(callback.ema.average, expected.average)


def _validate_from_a_plain_checkpoint(root: Path) -> tuple[Net, EMACallback, Net]:
    """A module fitted with the callback, then validated from a checkpoint of another run
    that holds no EMA state; returns the module, the callback and the checkpoint's module."""
    plain = Net()
    with torch.no_grad():
        plain.layer.weight.add_(1.0)
    run = trainer(root, [], max_epochs=1)
    run.fit(plain, loader(), loader(2))
    run.save_checkpoint(root / "plain.ckpt")
    model, callback, run, _ = _fitted(root)
    run.validate(model, loader(2), ckpt_path=root / "plain.ckpt")
    return model, callback, plain


def test_validate_from_a_checkpoint_without_ema_state_runs_live(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``validate`` with a checkpoint that holds no EMA state (saved without the callback):
    the EMA of the earlier fit does not match the restored weights, so it is dropped and the
    stage runs on the checkpoint's live weights (and says so)."""
    caplog.set_level(logging.INFO, logger="ema_core.integrations.lightning")
    model, callback, plain = _validate_from_a_plain_checkpoint(tmp_path)
    assert "holds no EMA state" in caplog.text and "runs on the live weights" in caplog.text
    assert callback.ema is None
    assert_same(model.seen["validate"][-1], plain.weights())


def test_the_warm_start_message_names_the_stage_as_lightning_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log line for a checkpoint without EMA state names the stage by its value
    (``"validate"``), as the docs and Lightning's own messages do."""
    caplog.set_level(logging.INFO, logger="ema_core.integrations.lightning")
    _validate_from_a_plain_checkpoint(tmp_path)
    assert "; validate runs on the live weights" in caplog.text


def test_a_checkpoint_with_ema_state_is_not_reported_as_lacking_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``validate`` from a checkpoint that holds the EMA state loads it, and logs nothing
    about a missing state."""
    _, callback, run, _ = _fitted(tmp_path)
    run.save_checkpoint(tmp_path / "with.ckpt")
    fresh, fresh_callback = Net(), EMACallback(schedule=SCHEDULE)
    caplog.set_level(logging.INFO, logger="ema_core.integrations.lightning")
    trainer(tmp_path, [fresh_callback]).validate(fresh, loader(2), ckpt_path=tmp_path / "with.ckpt")
    assert "holds no EMA state" not in caplog.text
    assert callback.ema is not None
    assert_same(fresh.seen["validate"][0], callback.ema.average)


def test_patterns_give_one_state_key_in_a_tuple_or_a_list() -> None:
    """``include`` patterns are read into a list: a tuple and a list of the same patterns
    give one state key, so a checkpoint resumes whichever way the patterns were written."""
    as_tuple = EMACallback(decay=0.5, include=("layer.*",), exclude=("layer.bias",))
    as_list = EMACallback(decay=0.5, include=["layer.*"], exclude=["layer.bias"])
    assert as_tuple.state_key == as_list.state_key
    assert as_tuple.state_key.endswith(", 'include': ['layer.*'], 'exclude': ['layer.bias']}")
