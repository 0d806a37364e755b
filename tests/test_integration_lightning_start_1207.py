"""The Lightning ``EMACallback``'s EMA starts from the weights the first batch trains on.

Lightning calls every callback's ``on_train_start`` in list order and then the module's own:
weights set there by a callback listed after ``EMACallback`` or by the module (pretrained
weights loaded, layers re-initialised) were missed, and the EMA stayed anchored to the weights
before them. An EMA with no update and no loaded state now starts from the weights at the
fit's first batch (README, Lightning); a loaded EMA and one kept from an earlier fit go on as
they are. The reference is a plain ``EMA`` built on the weights the first batch saw and updated
with the live weights recorded after each optimizer step (bit for bit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from ema_core.integrations.lightning import EMACallback  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests._lightning_helpers import (  # noqa: E402
    SCHEDULE,
    WARNINGS,
    Net,
    assert_same,
    differ,
    hand_run,
    loader,
    quiet,  # noqa: F401 (autouse fixture)
    trainer,
)

pytestmark = [*WARNINGS, pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")]


def pattern(module: Any) -> None:
    """Set ``module.layer`` to weights no seed gives (as loading pretrained ones would)."""
    with torch.no_grad():
        module.layer.weight.copy_(torch.linspace(-1.0, 1.0, 8).reshape(2, 4))
        module.layer.bias.fill_(0.25)


class Reinit(Net):
    """``Net`` whose own ``on_train_start`` sets its weights (``pattern``)."""

    def on_train_start(self) -> None:
        pattern(self)


class SetWeights(pl.Callback):
    """A callback whose ``on_train_start`` sets the weights (``pattern``)."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        pattern(pl_module)


class FirstBatch(pl.Callback):
    """Listed last: the live weights the first batch trains on and the live weights after
    each optimizer step (``hand_run``'s input), the EMA each callback held in
    ``on_train_start`` and its state when the first batch starts."""

    def __init__(self, *callbacks: EMACallback) -> None:
        self.callbacks = callbacks
        self.start: dict[str, Any] = {}
        self.steps: list[int] = []
        self.live: list[dict[str, Any]] = []
        self.held: list[EMA | None] = []
        self.states: list[dict[str, Any]] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.held = [callback.ema for callback in self.callbacks]
        self.memory = [_addresses(c.ema) for c in self.callbacks if c.ema]

    def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if not self.start:
            self.start = pl_module.weights()
            self.states = [_cloned(c.ema.state_dict()) for c in self.callbacks if c.ema]
            self.memory_then = [_addresses(c.ema) for c in self.callbacks if c.ema]

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_step > (self.steps[-1] if self.steps else 0):
            self.steps.append(trainer.global_step)
            self.live.append(pl_module.weights())


def _addresses(ema: EMA) -> list[int]:
    """Where the EMA's shadows live (a restart in place keeps them there)."""
    return [shadow.data_ptr() for shadow in ema._bound.shadows]


def _cloned(state: dict[str, Any]) -> dict[str, Any]:
    shadow = {k: v.detach().clone() for k, v in state["shadow"].items()}
    return {**state, "shadow": shadow}


def patterned() -> dict[str, Any]:
    model = Net()
    pattern(model)
    return model.weights()


def test_a_callback_listed_after_the_ema_callback_that_sets_the_weights_is_seen(
    tmp_path: Path,
) -> None:
    """``[EMACallback, SetWeights]``: the EMA (built by the sanity check, before any
    ``on_train_start``) starts from the weights ``SetWeights`` set. The sanity check ran on
    the live weights of before, and the EMA object is the one the callbacks saw in
    ``on_train_start``."""
    model, callback = Net(), EMACallback(schedule=SCHEDULE)
    before, first = model.weights(), FirstBatch(callback)
    run = trainer(tmp_path, [callback, SetWeights(), first], max_epochs=1)
    run.fit(model, loader(), loader(2))
    assert_same(model.seen["validate"][0], before)  # the sanity check: the live weights
    assert_same(first.start, patterned())
    assert callback.ema is not None and first.held == [callback.ema]
    assert first.memory == first.memory_then  # set in place: no second copy of the shadows
    assert callback.ema.step == 8
    assert_same(callback.ema.average, hand_run(first.start, first, schedule=SCHEDULE).average)


def test_the_modules_own_on_train_start_that_sets_the_weights_is_seen(tmp_path: Path) -> None:
    """The module's ``on_train_start`` (run after every callback's) sets the weights: the EMA
    starts from them, under a constant decay near 1 as under a schedule."""
    model, callback = Reinit(), EMACallback(decay=0.999)
    first = FirstBatch(callback)
    trainer(tmp_path, [callback, first], max_epochs=1, num_sanity_val_steps=0).fit(
        model, loader(), loader(2)
    )
    assert_same(first.start, patterned())
    assert callback.ema is not None and callback.ema.step == 8
    assert_same(callback.ema.average, hand_run(first.start, first, decay=0.999).average)


def test_two_ema_callbacks_both_start_from_the_weights_set_after_them(tmp_path: Path) -> None:
    slow, fast = EMACallback(decay=0.9), EMACallback(decay=0.5, include="layer.weight")
    model, first = Net(), FirstBatch(slow, fast)
    trainer(tmp_path, [slow, fast, SetWeights(), first], max_epochs=1).fit(
        model, loader(), loader(2)
    )
    assert slow.ema is not None and fast.ema is not None
    assert_same(slow.ema.average, hand_run(patterned(), first, decay=0.9).average)
    fast_reference = hand_run(patterned(), first, decay=0.5, include="layer.weight")
    assert_same(fast.ema.average, fast_reference.average)


def test_a_compiled_module_whose_on_train_start_sets_the_weights(tmp_path: Path) -> None:
    """``trainer.fit(torch.compile(model))``: Lightning trains the module inside it, whose
    ``on_train_start`` sets the weights; the EMA starts from them."""
    model, callback = Reinit(), EMACallback(decay=0.9)
    first = FirstBatch(callback)
    compiled = torch.compile(model, backend="eager")
    trainer(tmp_path, [callback, first], max_epochs=1).fit(compiled, loader(), loader(2))
    assert_same(first.start, patterned())
    assert callback.ema is not None and callback.ema.step == 8
    assert_same(callback.ema.average, hand_run(first.start, first, decay=0.9).average)


def test_a_warm_start_starts_from_the_weights_set_after_the_restore(tmp_path: Path) -> None:
    """A checkpoint without EMA state (saved without the callback): the EMA warm-starts from
    the weights the first batch trains on, here the module's own ``on_train_start``'s, and
    the schedule continues from the restored ``global_step``."""
    path = tmp_path / "plain.ckpt"
    plain = trainer(tmp_path / "plain", [], max_epochs=1, num_sanity_val_steps=0)
    plain.fit(Net(), loader(), loader(2))
    plain.save_checkpoint(path)
    model, callback = Reinit(), EMACallback(schedule=SCHEDULE)
    first = FirstBatch(callback)
    resumed = trainer(tmp_path / "resumed", [callback, first], num_sanity_val_steps=0)
    resumed.fit(model, loader(), loader(2), ckpt_path=path)
    assert_same(first.start, patterned())
    assert callback.ema is not None and callback.ema.step == 16 and first.steps[0] == 9
    assert_same(callback.ema.average, hand_run(first.start, first, schedule=SCHEDULE).average)


def test_a_resumed_fit_keeps_its_loaded_ema_bit_for_bit(tmp_path: Path) -> None:
    """``ckpt_path=`` with the callback's state: the first batch finds the EMA as saved (no
    restart to the live weights, which differ from the averages), and the run ends as the
    uninterrupted one."""
    path = tmp_path / "half.ckpt"
    half, half_callback = Net(), EMACallback(schedule=SCHEDULE)
    run = trainer(tmp_path / "half", [half_callback], max_epochs=1, num_sanity_val_steps=0)
    run.fit(half, loader(), loader(2))
    run.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["callbacks"][half_callback.state_key]
    assert differ(saved["shadow"], half.weights())
    model, callback = Net(), EMACallback(schedule=SCHEDULE)
    first = FirstBatch(callback)
    resumed = trainer(tmp_path / "resumed", [callback, first], num_sanity_val_steps=0)
    resumed.fit(model, loader(), loader(2), ckpt_path=path)
    [state] = first.states
    assert state["step"] == saved["step"] == 8
    assert_same(state["shadow"], saved["shadow"])
    whole, whole_callback = Net(), EMACallback(schedule=SCHEDULE)
    trainer(tmp_path / "whole", [whole_callback], num_sanity_val_steps=0).fit(
        whole, loader(), loader(2)
    )
    assert callback.ema is not None and whole_callback.ema is not None
    assert_same(callback.ema.average, whole_callback.ema.average)


def test_a_second_fit_on_the_same_trainer_keeps_its_updated_ema(tmp_path: Path) -> None:
    """The same trainer and callback fit again (``max_epochs`` raised) while ``SetWeights``
    sets the weights at each ``on_train_start``: the EMA of the first fit, updated, goes on
    (the same object, its shadows as the first fit left them)."""
    model, callback = Net(), EMACallback(decay=0.9)
    first = FirstBatch(callback)
    run = trainer(tmp_path, [callback, SetWeights(), first], max_epochs=1)
    run.fit(model, loader(), loader(2))
    assert callback.ema is not None
    ema, after_first = callback.ema, _cloned(callback.ema.state_dict())
    first.start = {}
    run.fit_loop.max_epochs = 2
    run.fit(model, loader(), loader(2))
    assert callback.ema is ema and callback.ema.step == 16
    [state] = first.states
    assert state["step"] == 8
    assert_same(state["shadow"], after_first["shadow"])
    assert differ(state["shadow"], patterned())


class Widened(Net):
    """``Net`` whose ``on_train_start`` replaces its layer by a wider one (ones): the EMA
    built before cannot follow the new shape."""

    def on_train_start(self) -> None:
        self.layer = torch.nn.Linear(4, 3)
        with torch.no_grad():
            self.layer.weight.fill_(1.0)
            self.layer.bias.fill_(1.0)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return self.layer(batch[0]).pow(2).mean()


def test_a_layer_replaced_by_another_shape_in_on_train_start_gets_a_new_ema(
    tmp_path: Path,
) -> None:
    """Instead of a ``ValueError`` (a tracked tensor reshaped) at the first update, the
    callback builds its EMA on the new layer (the old optimizer keeps the old one: the new
    layer does not move)."""
    model, callback = Widened(), EMACallback(decay=0.9)
    trainer(tmp_path, [callback], max_epochs=1, num_sanity_val_steps=0).fit(
        model, loader(), loader(2)
    )
    assert callback.ema is not None and callback.ema.step == 8
    ones = {"layer.weight": torch.ones(3, 4), "layer.bias": torch.ones(3)}
    assert_same(callback.ema.average, ones)


class Grown(Net):
    """``Net`` whose ``on_train_start`` attaches a head (ones) the EMA built before lacks."""

    def on_train_start(self) -> None:
        self.head = torch.nn.Linear(2, 1)
        with torch.no_grad():
            self.head.weight.fill_(1.0)
            self.head.bias.fill_(1.0)


def test_a_tensor_added_in_on_train_start_is_tracked_from_the_first_batch(tmp_path: Path) -> None:
    """The restart in place kept the EMA of the tensors it had: a head attached in
    ``on_train_start`` was never averaged, swapped in or saved. The EMA is built again on
    the module as the first batch finds it."""
    model, callback = Grown(), EMACallback(decay=0.9)
    trainer(tmp_path, [callback], max_epochs=1, num_sanity_val_steps=0).fit(
        model, loader(), loader(2)
    )
    assert callback.ema is not None and callback.ema.step == 8
    assert set(callback.ema.names) == {"layer.weight", "layer.bias", "head.weight", "head.bias"}
    assert torch.equal(callback.ema.average["head.weight"], torch.ones(1, 2))  # not trained
