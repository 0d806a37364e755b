"""Hostile probe of the Lightning ``EMACallback`` in real ``Trainer`` flows on the CPU.

Two fits in a row, stages before and after ``fit``, validation inside an epoch or every few
epochs, limited and accumulated batches, manual optimization with one and two optimizers,
``ModelCheckpoint`` / ``EarlyStopping`` on ``val_loss`` beside the EMA, ``ckpt_path="last"``,
a module built in ``configure_model`` and frozen sub-modules. The reference is a plain EMA of
the live weights recorded after each optimizer step (bit for bit through ``EMA.update``, and a
float64 loop of the update rule for the numbers), and a run without the callback for the
training itself: the callback must change no bit of what the optimizer sees.
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
    assert_same,
    differ,
    loader,
    quiet,  # noqa: F401 (autouse fixture)
    trainer,
)

pytestmark = [
    *WARNINGS,
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
    # a fresh trainer that validates or tests from a file ModelCheckpoint wrote:
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`"),
]

DECAY = 0.5


class TwoLayer(pl.LightningModule):
    """Two linear layers trained by SGD; records what each stage sees.

    ``manual``: 0 (automatic optimization), 1 (one optimizer stepped by hand every batch), 2
    (two optimizers, one per layer, both stepped each batch). ``lazy``: the layers are built
    in ``configure_model``. ``freeze_first``: ``first`` is frozen in
    ``on_train_epoch_start`` of that epoch. ``step_every``: manual steps only every n-th
    batch. ``skip_odd``: automatic ``training_step`` returns ``None`` on odd batches.
    """

    def __init__(
        self,
        manual: int = 0,
        lazy: bool = False,
        freeze_first: int = -1,
        step_every: int = 1,
        skip_odd: bool = False,
    ) -> None:
        super().__init__()
        self.manual, self.freeze_first = manual, freeze_first
        self.step_every, self.skip_odd = step_every, skip_odd
        self.automatic_optimization = manual == 0
        self.first: Any = None
        self.second: Any = None
        if not lazy:
            self.configure_model()
        self.seen: dict[str, list[tuple[int, dict[str, Any]]]] = {"validate": [], "test": []}

    def configure_model(self) -> None:
        if self.first is not None:
            return
        torch.manual_seed(0)
        self.first, self.second = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)

    def weights(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def forward(self, x: Any) -> Any:
        return self.second(torch.tanh(self.first(x)))

    def loss(self, batch: Any) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.loss(batch)
        if self.manual == 0:
            return None if self.skip_odd and batch_idx % 2 else loss
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(loss)
        if batch_idx % self.step_every == self.step_every - 1:
            for optimizer in optimizers:
                optimizer.step()
        return None

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == self.freeze_first:
            self.first.requires_grad_(False)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.seen["validate"].append((self.trainer.global_step, self.weights()))
        self.log("val_loss", self.loss(batch))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.seen["test"].append((self.trainer.global_step, self.weights()))

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        return self.weights()

    def configure_optimizers(self) -> Any:
        if self.manual == 2:
            return [
                torch.optim.SGD(self.first.parameters(), lr=0.1),
                torch.optim.SGD(self.second.parameters(), lr=0.1),
            ]
        return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.1)


class Steps(pl.Callback):
    """The live weights at the start of each ``fit`` and after each optimizer step."""

    def __init__(self) -> None:
        self.start: dict[str, Any] = {}
        self.steps: list[int] = []
        self.live: list[dict[str, Any]] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not self.start:
            self.start = pl_module.weights()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_step > (self.steps[-1] if self.steps else 0):
            self.steps.append(trainer.global_step)
            self.live.append(pl_module.weights())


def averages_by_step(start: dict[str, Any], steps: Steps, **options: Any) -> dict[int, Any]:
    """The average a plain ``EMA`` holds after each recorded step (bit for bit reference)."""
    model = TwoLayer()
    model.load_state_dict(start)
    averaged = EMA(model, **options)
    out = {}
    for step, live in zip(steps.steps, steps.live, strict=True):
        model.load_state_dict(live)
        averaged.update(step)
        out[step] = {k: v.clone() for k, v in averaged.average.items()}
    return out


def float64_ema(start: dict[str, Any], lives: list[dict[str, Any]]) -> dict[str, Any]:
    """The update rule with a constant ``DECAY``, written out in float64."""
    shadow = {k: v.double() for k, v in start.items()}
    for live in lives:
        shadow = {k: s + (1 - DECAY) * (live[k].double() - s) for k, s in shadow.items()}
    return shadow


def run_fit(root: Path, model: TwoLayer, callbacks: list[Any], **options: Any) -> Any:
    run = trainer(root, callbacks, **options)
    run.fit(model, loader(), loader(2))
    return run


def assert_validations_saw(model: TwoLayer, start: dict[str, Any], by_step: dict) -> None:
    """Each validation ran on the average of its step, or on the live weights before any."""
    assert model.seen["validate"]
    for step, weights in model.seen["validate"]:
        assert_same(weights, by_step[step] if step > 0 else start)


FLOWS = {
    "val_check_interval=0.5": {"val_check_interval": 0.5},
    "val_check_interval=3 batches": {"val_check_interval": 3},
    "val_check_interval=10 across epochs": {
        "val_check_interval": 10,
        "check_val_every_n_epoch": None,
    },
    "check_val_every_n_epoch=2": {"check_val_every_n_epoch": 2, "max_epochs": 2},
    "limit_train_batches=3": {"limit_train_batches": 3, "num_sanity_val_steps": 2},
    "accumulate_grad_batches=3": {"accumulate_grad_batches": 3},
    "sanity=-1": {"num_sanity_val_steps": -1},
}


@pytest.mark.parametrize("options", FLOWS.values(), ids=FLOWS.keys())
def test_the_loop_options_keep_one_update_per_step_and_change_no_training_bit(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    """Under each loop option: the EMA is the plain EMA of the live weights after each
    optimizer step, every validation (sanity check included) ran on the average of its step
    (or live before any update), and the training itself is bit for bit the run without the
    callback (the swaps give every live bit back)."""
    model, callback, steps = TwoLayer(), EMACallback(schedule=SCHEDULE), Steps()
    run_fit(tmp_path, model, [callback, steps], **options)
    plain = TwoLayer()
    run_fit(tmp_path / "plain", plain, [], **options)
    assert_same(model.weights(), plain.weights())
    by_step = averages_by_step(steps.start, steps, schedule=SCHEDULE)
    assert callback.ema is not None and callback.ema.step == steps.steps[-1]
    assert_same(callback.ema.average, by_step[steps.steps[-1]])
    assert_validations_saw(model, steps.start, by_step)


def test_accumulation_with_a_short_last_window_steps_at_the_epoch_end(tmp_path: Path) -> None:
    """8 batches accumulated by 3: Lightning steps after batches 3, 6 and 8 (the epoch's last
    window is short); the EMA takes exactly those 3 updates per epoch."""
    model, callback, steps = TwoLayer(), EMACallback(decay=DECAY), Steps()
    run_fit(tmp_path, model, [callback, steps], accumulate_grad_batches=3)
    assert steps.steps == [1, 2, 3, 4, 5, 6]
    assert callback.ema is not None and callback.ema.step == 6


def test_the_numbers_are_the_update_rule_on_the_live_weights(tmp_path: Path) -> None:
    """A constant decay: the callback's average equals the update rule run in float64 on the
    weights after each optimizer step, to float32 rounding."""
    model, callback, steps = TwoLayer(), EMACallback(decay=DECAY), Steps()
    run_fit(tmp_path, model, [callback, steps], max_epochs=1)
    assert callback.ema is not None
    expected = float64_ema(steps.start, steps.live)
    for name, value in callback.ema.average.items():
        torch.testing.assert_close(value.double(), expected[name], atol=1e-6, rtol=1e-6)


def test_a_second_fit_with_more_epochs_continues_the_same_ema(tmp_path: Path) -> None:
    """``fit`` again on the same trainer and module with ``max_epochs`` raised: the EMA goes
    on (16 updates in all, not rebuilt at step 8) and equals both the plain EMA over the 16
    steps and the EMA of one uninterrupted 2-epoch fit."""
    model, callback, steps = TwoLayer(), EMACallback(schedule=SCHEDULE), Steps()
    run = run_fit(tmp_path, model, [callback, steps], max_epochs=1)
    first_ema = callback.ema
    run.fit_loop.max_epochs = 2
    run.fit(model, loader(), loader(2))
    assert callback.ema is first_ema and steps.steps == list(range(1, 17))
    whole, whole_callback = TwoLayer(), EMACallback(schedule=SCHEDULE)
    run_fit(tmp_path / "whole", whole, [whole_callback], max_epochs=2)
    assert callback.ema is not None and whole_callback.ema is not None
    by_step = averages_by_step(steps.start, steps, schedule=SCHEDULE)
    assert_same(callback.ema.average, by_step[16])
    assert_same(callback.ema.average, whole_callback.ema.average)
    assert_same(model.weights(), whole.weights())
    assert_validations_saw(model, steps.start, by_step)


def test_validate_between_two_fits_keeps_the_ema(tmp_path: Path) -> None:
    """``fit`` -> ``validate`` -> ``test`` -> ``fit`` (more epochs) on one trainer: the
    stages run on the averages, hand the live weights back, and the second fit continues the
    EMA as if nothing had run between."""
    model, callback, steps = TwoLayer(), EMACallback(schedule=SCHEDULE), Steps()
    run = run_fit(tmp_path, model, [callback, steps], max_epochs=1, num_sanity_val_steps=0)
    assert callback.ema is not None
    after_first = callback.ema.average
    run.validate(model, loader(2), verbose=False)
    run.test(model, loader(2), verbose=False)
    assert_same(model.seen["validate"][-1][1], after_first)
    assert_same(model.seen["test"][-1][1], after_first)
    assert_same(model.weights(), steps.live[-1])
    run.fit_loop.max_epochs = 2
    run.fit(model, loader(), loader(2))
    whole, whole_callback = TwoLayer(), EMACallback(schedule=SCHEDULE)
    run_fit(tmp_path / "whole", whole, [whole_callback], max_epochs=2)
    assert whole_callback.ema is not None
    assert_same(callback.ema.average, whole_callback.ema.average)
    assert_same(model.weights(), whole.weights())


def test_stages_before_fit_run_live_and_after_fit_on_the_averages(tmp_path: Path) -> None:
    """``validate`` / ``test`` / ``predict`` before any ``fit`` build no EMA and run on the
    live weights; the same trainer's stages after ``fit`` run on the averages, and the module
    keeps its live weights."""
    model, callback, steps = TwoLayer(), EMACallback(decay=DECAY), Steps()
    start = model.weights()
    run = trainer(tmp_path, [callback, steps], max_epochs=1)
    run.validate(model, loader(2), verbose=False)
    run.test(model, loader(2), verbose=False)
    [predicted, *_] = run.predict(model, loader(2))
    assert callback.ema is None
    assert_same(model.seen["validate"][0][1], start)
    assert_same(model.seen["test"][0][1], start)
    assert_same(predicted, start)
    run.fit(model, loader(), loader(2))
    assert callback.ema is not None and callback.ema.step == 8
    run.validate(model, loader(2), verbose=False)
    run.test(model, loader(2), verbose=False)
    [predicted, *_] = run.predict(model, loader(2))
    for seen in (model.seen["validate"][-1][1], model.seen["test"][-1][1], predicted):
        assert_same(seen, callback.ema.average)
    assert_same(model.weights(), steps.live[-1])
    assert_same(steps.start, start)


class ValidateAtFitEnd(pl.Callback):
    """Runs ``trainer.validate`` and ``trainer.test`` from a callback's ``on_fit_end``."""

    def __init__(self, model: TwoLayer) -> None:
        self.model = model

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        trainer.test(self.model, loader(2), verbose=False)


def test_a_stage_run_from_a_callback_after_training_sees_the_averages(tmp_path: Path) -> None:
    """``trainer.test`` started from another callback's ``on_fit_end`` (after the EMA
    callback's own) runs on the averages and gives the live weights back."""
    model, callback, steps = TwoLayer(), EMACallback(decay=DECAY), Steps()
    run_fit(tmp_path, model, [callback, steps, ValidateAtFitEnd(model)], max_epochs=1)
    assert callback.ema is not None
    assert_same(model.seen["test"][-1][1], callback.ema.average)
    assert_same(model.weights(), steps.live[-1])


@pytest.mark.parametrize("every", [1, 3])
def test_manual_optimization_one_optimizer(tmp_path: Path, every: int) -> None:
    """Manual optimization, one optimizer stepped in ``training_step`` every ``every``-th
    batch: one update per batch that stepped (``global_step`` counts ``optimizer.step``),
    none for the others, the plain EMA bit for bit."""
    model = TwoLayer(manual=1, step_every=every)
    callback, steps = EMACallback(schedule=SCHEDULE), Steps()
    run_fit(tmp_path, model, [callback, steps], max_epochs=2)
    total = 2 * (8 // every)
    assert steps.steps == list(range(1, total + 1))
    assert callback.ema is not None and callback.ema.step == total
    by_step = averages_by_step(steps.start, steps, schedule=SCHEDULE)
    assert_same(callback.ema.average, by_step[total])
    assert_validations_saw(model, steps.start, by_step)


def test_manual_optimization_two_optimizers_is_one_update_per_batch(tmp_path: Path) -> None:
    """Two optimizers stepped per batch: ``global_step`` goes 2, 4, ...; one update per batch
    with ``step=global_step`` (README: the schedule advances by 2), the plain EMA bit for bit;
    validation on the averages, training bit for bit the run without the callback."""
    model, callback, steps = TwoLayer(manual=2), EMACallback(schedule=SCHEDULE), Steps()
    run_fit(tmp_path, model, [callback, steps], max_epochs=1, val_check_interval=0.5)
    assert steps.steps == list(range(2, 17, 2))
    assert callback.ema is not None and callback.ema.step == 16
    by_step = averages_by_step(steps.start, steps, schedule=SCHEDULE)
    assert_same(callback.ema.average, by_step[16])
    assert_validations_saw(model, steps.start, by_step)
    plain = TwoLayer(manual=2)
    run_fit(tmp_path / "plain", plain, [], max_epochs=1, val_check_interval=0.5)
    assert_same(model.weights(), plain.weights())


def ema_val_loss(averages: dict[str, Any]) -> Any:
    """The mean over the 2 validation batches of the loss of a model holding ``averages``."""
    model = TwoLayer()
    model.load_state_dict(averages)
    with torch.no_grad():
        return torch.stack([model.loss(batch) for batch in loader(2)]).mean()


def test_model_checkpoint_and_early_stopping_on_val_loss_of_the_averages(tmp_path: Path) -> None:
    """``ModelCheckpoint(monitor="val_loss", save_top_k=1)`` and ``EarlyStopping`` beside the
    callback: ``val_loss`` is the loss of the averages (validation runs on them), the best
    file holds the live weights of its step and the EMA of that step, and
    ``test(ckpt_path="best")`` (a fresh trainer, or the one that fitted) runs on that EMA."""
    checkpoints = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1, save_last=True
    )
    stop = pl.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=1e9)
    model, callback, steps = TwoLayer(), EMACallback(decay=DECAY), Steps()
    run = trainer(
        tmp_path, [callback, steps, checkpoints, stop], max_epochs=5, enable_checkpointing=True
    )
    run.fit(model, loader(), loader(2))
    assert stop.stopped_epoch == 1 and steps.steps[-1] == 16  # stopped at the 2nd of 5 epochs
    assert callback.ema is not None and callback.ema.step == 16
    assert_same(model.weights(), steps.live[-1])
    best = torch.load(checkpoints.best_model_path, weights_only=True)
    step = best["global_step"]
    by_step = averages_by_step(steps.start, steps, decay=DECAY)
    live_then = steps.live[steps.steps.index(step)]
    assert_same(best["state_dict"], live_then)
    assert_same(best["callbacks"][callback.state_key]["shadow"], by_step[step])
    torch.testing.assert_close(checkpoints.best_model_score, ema_val_loss(by_step[step]))
    assert differ(by_step[step], live_then)
    fresh, fresh_callback = TwoLayer(), EMACallback(decay=DECAY)
    trainer(tmp_path, [fresh_callback]).test(
        fresh, loader(2), ckpt_path=checkpoints.best_model_path
    )
    assert_same(fresh.seen["test"][0][1], by_step[step])
    assert_same(fresh.weights(), live_then)
    run.test(model, loader(2), ckpt_path="best", verbose=False)  # the same trainer
    assert_same(model.seen["test"][-1][1], by_step[step])
    assert_same(model.weights(), live_then)  # Lightning loaded the best file's weights
    run.validate(model, loader(2), verbose=False)  # no file: the EMA loaded from it goes on
    assert_same(model.seen["validate"][-1][1], by_step[step])


def test_resume_from_last_is_the_uninterrupted_run_bit_for_bit(tmp_path: Path) -> None:
    """``ckpt_path="last"`` (the ``ModelCheckpoint``'s ``last.ckpt``) after 1 of 2 epochs,
    with validation twice an epoch and accumulation whose last window is short: the resumed
    EMA, its step, the live weights and what each later validation saw are the uninterrupted
    run's, bit for bit."""
    options = {"val_check_interval": 0.5, "accumulate_grad_batches": 3, "num_sanity_val_steps": 1}
    whole, whole_callback = TwoLayer(), EMACallback(schedule=SCHEDULE)
    run_fit(tmp_path / "whole", whole, [whole_callback], max_epochs=2, **options)

    def checkpoints() -> Any:
        return pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)

    first, first_callback = TwoLayer(), EMACallback(schedule=SCHEDULE)
    common = {"enable_checkpointing": True, **options}
    run_fit(tmp_path, first, [first_callback, checkpoints()], max_epochs=1, **common)
    assert first_callback.ema is not None
    saved_average = first_callback.ema.average
    resumed, callback = TwoLayer(), EMACallback(schedule=SCHEDULE)
    trainer(tmp_path, [callback, checkpoints()], max_epochs=2, **common).fit(
        resumed, loader(), loader(2), ckpt_path="last"
    )
    assert callback.ema is not None and whole_callback.ema is not None
    assert callback.ema.step == whole_callback.ema.step == 6
    assert_same(callback.ema.average, whole_callback.ema.average)
    assert_same(resumed.weights(), whole.weights())
    resumed_seen = resumed.seen["validate"]
    assert [step for step, _ in resumed_seen] == [4, 4, 6, 6]  # no sanity check on a restart
    for (step, seen), (whole_step, whole_seen) in zip(
        resumed_seen, whole.seen["validate"][-4:], strict=True
    ):
        assert step == whole_step
        assert_same(seen, whole_seen)
    assert differ(resumed_seen[0][1], saved_average)


def test_a_module_built_in_configure_model_is_averaged(tmp_path: Path) -> None:
    """Layers built in ``configure_model`` (none at ``__init__``): the EMA is built after
    them, holds every one of their tensors, and is the plain EMA bit for bit; a second fit
    (``configure_model`` called again, a no-op) continues it."""
    model, callback, steps = TwoLayer(lazy=True), EMACallback(schedule=SCHEDULE), Steps()
    assert not list(model.parameters())
    run = run_fit(tmp_path, model, [callback, steps], max_epochs=1)
    assert callback.ema is not None
    assert callback.ema.average.keys() == TwoLayer().state_dict().keys()
    run.fit_loop.max_epochs = 2
    run.fit(model, loader(), loader(2))
    by_step = averages_by_step(steps.start, steps, schedule=SCHEDULE)
    assert callback.ema.step == 16
    assert_same(callback.ema.average, by_step[16])


@pytest.mark.parametrize("epoch", [0, 1])
def test_a_sub_module_frozen_at_an_epoch_start_is_still_averaged(
    tmp_path: Path, epoch: int
) -> None:
    """``first.requires_grad_(False)`` in ``on_train_epoch_start``: its weights stop moving,
    the EMA keeps averaging them (the plain EMA bit for bit); frozen from the start, its
    average is its weights exactly (a constant is a fixed point)."""
    model = TwoLayer(freeze_first=epoch)
    callback, steps = EMACallback(schedule=SCHEDULE), Steps()
    run_fit(tmp_path, model, [callback, steps], max_epochs=2)
    assert callback.ema is not None and callback.ema.step == 16
    by_step = averages_by_step(steps.start, steps, schedule=SCHEDULE)
    assert_same(callback.ema.average, by_step[16])
    if epoch == 0:
        for name in ("first.weight", "first.bias"):
            assert torch.equal(callback.ema.average[name], steps.start[name])


def test_resume_from_a_checkpoint_without_the_callback_then_from_its_own(
    tmp_path: Path,
) -> None:
    """A plain 1-epoch run's checkpoint resumed with the callback (warm start at step 8),
    saved at epoch 2, then resumed again to epoch 3: bit for bit the run that warm-started
    once and went to epoch 3 without a stop."""
    plain = TwoLayer()
    run = run_fit(tmp_path, plain, [], max_epochs=1)
    run.save_checkpoint(tmp_path / "plain.ckpt")
    whole, whole_callback = TwoLayer(), EMACallback(schedule=SCHEDULE)
    trainer(tmp_path, [whole_callback], max_epochs=3).fit(
        whole, loader(), loader(2), ckpt_path=tmp_path / "plain.ckpt"
    )
    part, part_callback = TwoLayer(), EMACallback(schedule=SCHEDULE)
    run = trainer(tmp_path, [part_callback], max_epochs=2)
    run.fit(part, loader(), loader(2), ckpt_path=tmp_path / "plain.ckpt")
    run.save_checkpoint(tmp_path / "part.ckpt")
    resumed, callback = TwoLayer(), EMACallback(schedule=SCHEDULE)
    trainer(tmp_path, [callback], max_epochs=3).fit(
        resumed, loader(), loader(2), ckpt_path=tmp_path / "part.ckpt"
    )
    assert callback.ema is not None and whole_callback.ema is not None
    assert callback.ema.step == whole_callback.ema.step == 24
    assert_same(callback.ema.average, whole_callback.ema.average)
    assert_same(resumed.weights(), whole.weights())


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`")
def test_a_training_step_returning_none_is_followed_like_a_plain_loop(tmp_path: Path) -> None:
    """Automatic optimization with ``training_step`` returning ``None`` on odd batches (no
    backward; Lightning still calls ``optimizer.step`` and advances ``global_step``): the EMA
    takes one update per ``global_step`` advance, the plain EMA of the live weights then, and
    the training is bit for bit the run without the callback."""
    model, callback, steps = TwoLayer(skip_odd=True), EMACallback(decay=DECAY), Steps()
    run_fit(tmp_path, model, [callback, steps], max_epochs=1)
    assert steps.steps == list(range(1, 9))  # Lightning still counts the skipped batches
    plain = TwoLayer(skip_odd=True)
    run_fit(tmp_path / "plain", plain, [], max_epochs=1)
    assert_same(model.weights(), plain.weights())
    assert callback.ema is not None and callback.ema.step == steps.steps[-1]
    by_step = averages_by_step(steps.start, steps, decay=DECAY)
    assert_same(callback.ema.average, by_step[steps.steps[-1]])


def test_a_step_checkpoint_mid_epoch_pairs_the_live_weights_with_their_ema(
    tmp_path: Path,
) -> None:
    """``ModelCheckpoint(every_n_train_steps=3)`` saves in ``on_train_batch_end`` after the
    EMA callback's update: each file holds the live weights of its step and the EMA of the
    same step, and ``validate(ckpt_path=...)`` of it runs on that EMA."""
    checkpoints = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1, filename="{step}"
    )
    model, callback, steps = TwoLayer(), EMACallback(schedule=SCHEDULE), Steps()
    run_fit(
        tmp_path, model, [callback, steps, checkpoints], max_epochs=1, enable_checkpointing=True
    )
    by_step = averages_by_step(steps.start, steps, schedule=SCHEDULE)
    for step in (3, 6):
        saved = torch.load(tmp_path / "ckpt" / f"step={step}.ckpt", weights_only=True)
        assert saved["global_step"] == step
        assert_same(saved["state_dict"], steps.live[step - 1])
        assert saved["callbacks"][callback.state_key]["step"] == step
        assert_same(saved["callbacks"][callback.state_key]["shadow"], by_step[step])
    fresh, fresh_callback = TwoLayer(), EMACallback(schedule=SCHEDULE)
    trainer(tmp_path, [fresh_callback]).validate(
        fresh, loader(2), ckpt_path=tmp_path / "ckpt" / "step=3.ckpt", verbose=False
    )
    assert_same(fresh.seen["validate"][0][1], by_step[3])


class LazyFirst(TwoLayer):
    """``first`` is an ``nn.LazyLinear`` built in ``configure_model``; ``dry_run``: a forward
    of one dummy batch there materializes it."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        super().__init__(lazy=True)

    def configure_model(self) -> None:
        if self.first is not None:
            return
        torch.manual_seed(0)
        self.first, self.second = torch.nn.LazyLinear(3), torch.nn.Linear(3, 2)
        if self.dry_run:
            self(torch.zeros(1, 4))


@pytest.mark.filterwarnings("ignore:Lazy modules are a new feature")
def test_a_lazy_layer_not_materialized_when_training_starts_is_a_clear_error(
    tmp_path: Path,
) -> None:
    """An ``nn.LazyLinear`` still unmaterialized when ``fit`` starts (the EMA is built in
    ``on_train_start``, before the first forward): a ``ValueError`` naming the parameter,
    before any optimizer step. Materialized by a dry forward in ``configure_model``, the
    same module is averaged like any other."""
    model, callback, steps = LazyFirst(dry_run=False), EMACallback(decay=DECAY), Steps()
    with pytest.raises(ValueError, match=r"'first\.weight'\] is not materialized"):
        run_fit(tmp_path, model, [callback, steps], max_epochs=1, num_sanity_val_steps=0)
    assert steps.steps == []
    model, callback, steps = LazyFirst(dry_run=True), EMACallback(decay=DECAY), Steps()
    run_fit(tmp_path / "dry", model, [callback, steps], max_epochs=1)
    assert callback.ema is not None and callback.ema.step == 8
    by_step = averages_by_step(steps.start, steps, decay=DECAY)
    assert_same(callback.ema.average, by_step[8])


def test_continuing_with_ckpt_path_last_on_the_same_trainer(tmp_path: Path) -> None:
    """The "train more" idiom: the same trainer and callback ``fit`` again with
    ``max_epochs`` raised and ``ckpt_path="last"``: the EMA is loaded from the file (not
    kept from memory) and the run is bit for bit the uninterrupted one."""
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    model, callback = TwoLayer(), EMACallback(schedule=SCHEDULE)
    run = run_fit(tmp_path, model, [callback, checkpoints], max_epochs=1, enable_checkpointing=True)
    in_memory = callback.ema
    run.fit_loop.max_epochs = 2
    run.fit(model, loader(), loader(2), ckpt_path="last")
    whole, whole_callback = TwoLayer(), EMACallback(schedule=SCHEDULE)
    run_fit(tmp_path / "whole", whole, [whole_callback], max_epochs=2)
    assert callback.ema is not None and whole_callback.ema is not None
    assert callback.ema is not in_memory and callback.ema.step == 16
    assert_same(callback.ema.average, whole_callback.ema.average)
    assert_same(model.weights(), whole.weights())


class Normed(TwoLayer):
    """``TwoLayer`` with a ``BatchNorm1d`` between the layers (float running statistics and
    an integer ``num_batches_tracked``)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(3)

    def forward(self, x: Any) -> Any:
        return self.second(torch.tanh(self.norm(self.first(x))))


@pytest.mark.parametrize("buffers", ["copy", "average"])
def test_batch_norm_buffers_are_given_back_bit_for_bit_after_each_validation(
    tmp_path: Path, buffers: str
) -> None:
    """A BatchNorm model validated twice an epoch: validation sees the EMA's buffers (the
    running statistics averaged or copied, the counter copied), and the training, buffers
    included, is bit for bit the run without the callback."""
    model, callback, steps = Normed(), EMACallback(decay=DECAY, buffers=buffers), Steps()
    run_fit(tmp_path, model, [callback, steps], max_epochs=1, val_check_interval=0.5)
    plain = Normed()
    run_fit(tmp_path / "plain", plain, [], max_epochs=1, val_check_interval=0.5)
    assert_same(model.weights(), plain.weights())
    assert callback.ema is not None
    step, seen = model.seen["validate"][-1]
    assert step == 8
    assert_same(seen, callback.ema.average)
    assert torch.equal(seen["norm.num_batches_tracked"], steps.live[-1]["norm.num_batches_tracked"])
    running = seen["norm.running_mean"], steps.live[-1]["norm.running_mean"]
    assert torch.equal(*running) == (buffers == "copy")


class SaveAtStep(pl.Callback):
    """Saves a checkpoint from ``on_train_batch_end`` at one ``global_step``; listed before
    the EMA callback, its hook runs before the EMA's update for that step."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


class SavesInTrainingStep(TwoLayer):
    """Manual optimization that saves a checkpoint in ``training_step`` right after the
    optimizer stepped to ``save_step``."""

    def __init__(self, path: Path, save_step: int) -> None:
        super().__init__(manual=1)
        self.path, self.save_step = path, save_step

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        super().training_step(batch, batch_idx)
        if self.trainer.global_step == self.save_step:
            self.trainer.save_checkpoint(self.path)
        return None


@pytest.mark.parametrize("where", ["callback listed before", "manual training_step"])
def test_a_save_between_the_step_and_the_ema_update_pairs_the_weights_with_their_ema(
    tmp_path: Path, where: str
) -> None:
    """A checkpoint written after the 8th optimizer step but before the EMA callback's
    ``on_train_batch_end`` (from a callback listed before it, or from ``training_step`` under
    manual optimization) holds the EMA of the same step as its weights, as the exception
    path does (README: "the checkpoint pairs the weights with their EMA"); resumed at the
    epoch's end, the run is bit for bit the one that never stopped."""
    path = tmp_path / "eight.ckpt"
    manual = where == "manual training_step"
    model = SavesInTrainingStep(path, 8) if manual else TwoLayer()
    callback, steps = EMACallback(schedule=SCHEDULE), Steps()
    extra = [] if manual else [SaveAtStep(path, 8)]
    run_fit(tmp_path, model, [*extra, callback, steps], max_epochs=1)
    saved = torch.load(path, weights_only=True)
    assert saved["global_step"] == 8
    assert_same(saved["state_dict"], steps.live[7])
    by_step = averages_by_step(steps.start, steps, schedule=SCHEDULE)
    assert saved["callbacks"][callback.state_key]["step"] == 8
    assert_same(saved["callbacks"][callback.state_key]["shadow"], by_step[8])
    if manual:  # Lightning replays the batch that saved mid-step: no bit-exact resume
        return
    whole, whole_callback = TwoLayer(), EMACallback(schedule=SCHEDULE)
    run_fit(tmp_path / "whole", whole, [whole_callback], max_epochs=2)
    resumed, resumed_callback = TwoLayer(), EMACallback(schedule=SCHEDULE)
    trainer(tmp_path, [resumed_callback], max_epochs=2).fit(
        resumed, loader(), loader(2), ckpt_path=path
    )
    assert_same(resumed.weights(), whole.weights())
    assert resumed_callback.ema is not None and whole_callback.ema is not None
    assert_same(resumed_callback.ema.average, whole_callback.ema.average)
