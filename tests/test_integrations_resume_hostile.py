"""The trainer integrations when a run dies and resumes: Lightning, Keras 3 and accelerate.

A run is cut by an exception or a ``KeyboardInterrupt`` mid-epoch, inside validation (with
the averages swapped in) or while a checkpoint is written, then resumed from its last
checkpoint. The EMA it ends with must be, bit for bit, the one of a run that saved at the same
point and resumed from there without the crash (README "In your trainer", "Checkpoints").
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
pytest.importorskip("jax")
if "keras" not in sys.modules:  # Keras picks its backend at import
    os.environ["KERAS_BACKEND"] = "jax"
keras = pytest.importorskip("keras")

from ema_core.integrations.keras import EMACallback as KerasEMA  # noqa: E402
from ema_core.integrations.lightning import EMACallback  # noqa: E402
from tests._keras_helpers import (  # noqa: E402 (skips unless keras runs on jax)
    ARRAY_COPY_WARNING,
    BATCHES,
    X,
    Y,
    assert_bits,
    make_model,
)
from tests._lightning_helpers import (  # noqa: E402
    SCHEDULE,
    WARNINGS,
    Net,
    Recorder,
    assert_same,
    differ,
    hand_run,
    loader,
    quiet,  # noqa: F401 (autouse fixture)
    trainer,
)

pytestmark = [
    *WARNINGS,
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
    pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before"),
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`, callbacks used"),
]


# -- Lightning -------------------------------------------------------------------------------


class Crashing(Net):
    """``Net`` that raises ``error`` once, in ``where``, when ``global_step`` reaches ``at``."""

    def __init__(self, at: int, where: str, error: type[BaseException] = RuntimeError) -> None:
        super().__init__()
        self.at, self.where, self.error, self.armed = at, where, error, True

    def _maybe_raise(self, where: str) -> None:
        if self.armed and where == self.where and self.trainer.global_step == self.at:
            self.armed = False
            raise self.error("crash")

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self._maybe_raise("train")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._maybe_raise("validate")


class RaiseAfterStep(pl.Callback):
    """A user callback that raises in ``on_train_batch_end`` once ``global_step`` is ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("crash after the step")


@pytest.fixture
def sigint() -> Iterator[None]:
    """Lightning ignores SIGINT after a KeyboardInterrupt (and exits): put the handler back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def _saving(folder: Path, **options: Any) -> Any:
    return pl.callbacks.ModelCheckpoint(dirpath=folder, save_top_k=-1, **options)


def _with_saving(root: Path, callbacks: list[Any], **options: Any) -> Any:
    """``trainer`` with checkpointing on (a ``ModelCheckpoint`` is among ``callbacks``)."""
    return trainer(root, callbacks, enable_checkpointing=True, **options)


def _ema_of(path: Path, callback: EMACallback) -> dict[str, Any]:
    saved = torch.load(path, weights_only=True)
    state: dict[str, Any] = saved["callbacks"][callback.state_key]
    return {"global_step": saved["global_step"], "state_dict": saved["state_dict"], **state}


def _resume(root: Path, path: Path, max_epochs: int = 2) -> tuple[Net, EMACallback]:
    """A fresh module and callback, resumed from ``path`` to ``max_epochs``."""
    model, callback = Net(), EMACallback(schedule=SCHEDULE)
    trainer(root, [callback], max_epochs=max_epochs).fit(model, loader(), loader(2), ckpt_path=path)
    return model, callback


def _assert_resumed_alike(a: tuple[Net, EMACallback], b: tuple[Net, EMACallback]) -> None:
    assert a[1].ema is not None and b[1].ema is not None
    assert a[1].ema.step == b[1].ema.step
    assert_same(a[1].ema.average, b[1].ema.average)
    assert_same(a[0].weights(), b[0].weights())


def _clean_run(root: Path, every: int) -> Path:
    """A run that saves every ``every`` optimizer steps and never crashes; its first file."""
    callback = EMACallback(schedule=SCHEDULE)
    _with_saving(root, [callback, _saving(root / "clean", every_n_train_steps=every)]).fit(
        Net(), loader(), loader(2)
    )
    return root / "clean" / f"epoch=0-step={every}.ckpt"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_crash_in_training_step_resumes_from_the_last_checkpoint(
    tmp_path: Path, error: type[BaseException], sigint: None
) -> None:
    """A crash two steps after a mid-epoch ``every_n_train_steps`` save: the checkpoint it left
    holds the EMA of its step, and resuming from ``last.ckpt`` ends as the run that saved
    there without crashing and resumed (a KeyboardInterrupt makes Lightning exit: SystemExit)."""
    callback = EMACallback(schedule=SCHEDULE)
    saving = _saving(tmp_path / "crash", every_n_train_steps=3, save_last=True)
    run = _with_saving(tmp_path, [callback, saving])
    with pytest.raises(SystemExit if error is KeyboardInterrupt else RuntimeError):
        run.fit(Crashing(at=5, where="train", error=error), loader(), loader(2))
    assert callback.ema is not None and callback.ema.step == 5
    clean = _clean_run(tmp_path, every=3)
    last = tmp_path / "crash" / "last.ckpt"
    crashed, reference = _ema_of(last, callback), _ema_of(clean, callback)
    assert crashed["global_step"] == crashed["step"] == 3
    assert_same(crashed["shadow"], reference["shadow"])
    assert_same(crashed["state_dict"], reference["state_dict"])
    _assert_resumed_alike(_resume(tmp_path, last), _resume(tmp_path, clean))


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_save_on_exception_inside_validation_holds_the_live_weights_and_the_ema(
    tmp_path: Path, error: type[BaseException], sigint: None
) -> None:
    """``ModelCheckpoint(save_on_exception=True)`` and a crash inside ``validation_step``, with
    the averages swapped in: the model gets its live weights back, the checkpoint written on
    the exception holds them and the EMA of that step, and resumes as a clean save there."""
    model, recorder = Crashing(at=8, where="validate", error=error), Recorder()
    callback = EMACallback(schedule=SCHEDULE)
    saving = _saving(tmp_path / "crash", save_on_exception=True, save_on_train_epoch_end=False)
    with pytest.raises(SystemExit if error is KeyboardInterrupt else RuntimeError):
        _with_saving(tmp_path, [callback, recorder, saving]).fit(model, loader(), loader(2))
    assert callback.ema is not None and callback.ema.step == 8
    assert_same(model.seen["validate"][-1], callback.ema.average)  # it crashed on the averages
    assert_same(model.weights(), recorder.live[-1])
    [path] = (tmp_path / "crash").glob("*.ckpt")
    _assert_saved_at_8_resumes_alike(tmp_path, path, callback, recorder)


def _assert_saved_at_8_resumes_alike(
    tmp_path: Path, path: Path, callback: EMACallback, recorder: Recorder
) -> None:
    """The file at ``path`` holds step 8's live weights and EMA, and resuming from it ends as
    resuming from a clean save at step 8."""
    assert callback.ema is not None
    saved = _ema_of(path, callback)
    assert saved["global_step"] == saved["step"] == 8
    assert_same(saved["state_dict"], recorder.live[-1])
    assert_same(saved["shadow"], callback.ema.average)
    clean = _clean_run(tmp_path, every=8)
    _assert_resumed_alike(_resume(tmp_path, path, 3), _resume(tmp_path, clean, 3))


def test_a_checkpoint_saved_after_validation_raised_resumes(tmp_path: Path) -> None:
    """A user who saves by hand in ``except`` after validation raised inside ``fit`` gets the
    live weights and the EMA in the file, and resuming from it matches a clean save there."""
    callback, recorder = EMACallback(schedule=SCHEDULE), Recorder()
    run = trainer(tmp_path, [callback, recorder])
    path = tmp_path / "rescue.ckpt"
    try:
        run.fit(Crashing(at=8, where="validate"), loader(), loader(2))
    except RuntimeError:
        run.save_checkpoint(path)
    assert callback.ema is not None
    _assert_saved_at_8_resumes_alike(tmp_path, path, callback, recorder)


class SaveInto(Net):
    """Saves a checkpoint at the end of validation, to a path that may not take a file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def on_validation_epoch_end(self) -> None:
        if self.trainer.global_step > 0:
            self.trainer.save_checkpoint(self.path)


def test_a_checkpoint_write_that_fails_inside_validation_gives_the_live_weights_back(
    tmp_path: Path,
) -> None:
    """``trainer.save_checkpoint`` inside validation under a "folder" that is a file raises
    while the averages are in: the live weights come back and the EMA is the steps' own."""
    (tmp_path / "taken").write_text("not a folder")
    path = tmp_path / "taken" / "inside.ckpt"
    model, callback, recorder = SaveInto(path), EMACallback(decay=0.5), Recorder()
    with pytest.raises(OSError):
        trainer(tmp_path, [callback, recorder]).fit(model, loader(), loader(2))
    assert callback.ema is not None and callback.ema.step == 8
    assert_same(model.weights(), recorder.live[-1])
    assert_same(callback.ema.average, hand_run(recorder.start, recorder, decay=0.5).average)
    assert differ(callback.ema.average, recorder.live[-1])
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_a_crash_in_a_user_callback_after_the_step_saves_a_consistent_ema(
    tmp_path: Path,
) -> None:
    """A user callback listed before the EMA callback raises in ``on_train_batch_end`` after
    optimizer step 5, and ``save_on_exception`` writes the weights of step 5: the EMA saved
    beside them must be the EMA of step 5 too, else the resumed EMA never takes that update."""
    callback = EMACallback(schedule=SCHEDULE)
    saving = _saving(tmp_path / "crash", save_on_exception=True)
    with pytest.raises(RuntimeError, match="after the step"):
        _with_saving(tmp_path, [RaiseAfterStep(5), callback, saving]).fit(
            Net(), loader(), loader(2)
        )
    [path] = (tmp_path / "crash").glob("*.ckpt")
    saved = _ema_of(path, callback)
    clean = _ema_of(_clean_run(tmp_path, every=5), callback)
    assert_same(saved["state_dict"], clean["state_dict"])  # the live weights of step 5
    assert saved["global_step"] == 5
    assert saved["step"] == 5
    assert_same(saved["shadow"], clean["shadow"])


def test_resuming_under_another_config_warns_and_warm_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint of a ``decay=0.9`` callback resumed by a ``decay=0.5`` one: Lightning warns
    that the saved callback state is missing, and the EMA starts from the restored live weights
    at the restored step (README: another config is not loaded, the EMA warm-starts)."""
    first = EMACallback(decay=0.9)
    saving = _saving(tmp_path / "first", every_n_train_steps=3)
    _with_saving(tmp_path, [first, saving], max_epochs=1).fit(Net(), loader(), loader(2))
    path = tmp_path / "first" / "epoch=0-step=3.ckpt"
    callback, recorder = EMACallback(decay=0.5), Recorder()
    caplog.set_level(logging.INFO, logger="ema_core.integrations.lightning")
    with pytest.warns(UserWarning, match="callbacks used to create the checkpoint"):
        trainer(tmp_path, [callback, recorder], max_epochs=1).fit(
            Net(), loader(), loader(2), ckpt_path=path
        )
    assert "warm start" in caplog.text
    assert_same(recorder.start, torch.load(path, weights_only=True)["state_dict"])
    assert recorder.steps[0] == 4 and callback.ema is not None
    assert callback.ema.step == recorder.steps[-1]
    assert_same(callback.ema.average, hand_run(recorder.start, recorder, decay=0.5).average)


# -- Keras 3 ---------------------------------------------------------------------------------


class Interrupt(keras.callbacks.Callback):  # type: ignore[misc]
    """Raises ``error`` once, at the end of training batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int, error: type[BaseException]) -> None:
        super().__init__()
        self.at, self.error, self.epoch, self.armed = (epoch, batch), error, -1, True

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self.armed and (self.epoch, batch) == self.at:
            self.armed = False
            raise self.error("crash")


class FailEvaluate(keras.callbacks.Callback):  # type: ignore[misc]
    """Raises inside the first ``evaluate`` batch (validation inside ``fit`` included)."""

    def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
        raise RuntimeError("evaluate failed")


def _keras_fit(model: Any, callbacks: list[Any], epochs: int, initial_epoch: int = 0) -> None:
    model.fit(
        X,
        Y,
        batch_size=16,
        epochs=epochs,
        initial_epoch=initial_epoch,
        verbose=0,
        shuffle=False,
        callbacks=callbacks,
    )


@pytest.fixture(scope="module")
def straight() -> dict[int, tuple[list[Any], list[Any]]]:
    """Runs that never crash, of 2 and 3 epochs: their weights and EMA averages."""
    runs = {}
    for epochs in (2, 3):
        model, ema = make_model(), KerasEMA(decay=0.8)
        _keras_fit(model, [ema], epochs=epochs)
        assert ema.step == epochs * BATCHES
        runs[epochs] = (model.get_weights(), ema.average_weights())
    return runs


def _assert_as_straight(model: Any, ema: Any, run: tuple[list[Any], list[Any]]) -> None:
    assert_bits(model.get_weights(), run[0])
    assert_bits(ema.average_weights(), run[1])


@ARRAY_COPY_WARNING
def test_keras_interrupt_after_the_ema_callback_resumes_from_the_epoch_files(
    tmp_path: Path, straight: dict[int, tuple[list[Any], list[Any]]]
) -> None:
    """A KeyboardInterrupt from a user callback after ``EMACallback`` mid-epoch 2 (the EMA
    took 2 of its batches in memory): ``last.keras`` and the EMA file still hold epoch 1, and
    the README's resume from them ends as the run that never stopped."""
    ema = KerasEMA(decay=0.8, filepath=tmp_path / "ema.safetensors")
    saving = keras.callbacks.ModelCheckpoint(tmp_path / "last.keras")
    crash = Interrupt(1, 1, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt, match="crash"):
        _keras_fit(make_model(), [ema, crash, saving], epochs=3)
    assert ema.step == BATCHES + 2
    model = keras.models.load_model(tmp_path / "last.keras")
    resumed = KerasEMA(decay=0.8)
    resumed.load(tmp_path / "ema.safetensors", model)
    assert resumed.step == BATCHES
    _keras_fit(model, [resumed], epochs=3, initial_epoch=1)
    assert resumed.step == 3 * BATCHES
    _assert_as_straight(model, resumed, straight[3])


@ARRAY_COPY_WARNING
def test_keras_backup_and_restore_retry_with_the_ema_file(
    tmp_path: Path, straight: dict[int, tuple[list[Any], list[Any]]]
) -> None:
    """``BackupAndRestore`` retried in the same process after a crash mid-epoch 2, the EMA
    loaded from its epoch-end file first: model and EMA end as the run that never crashed
    (without the ``load`` the callback would keep the crashed epoch's updates)."""
    model, path = make_model(), tmp_path / "ema.safetensors"
    ema, backup = KerasEMA(decay=0.8, filepath=path), keras.callbacks.BackupAndRestore(tmp_path)
    with pytest.raises(RuntimeError, match="crash"):
        _keras_fit(model, [ema, backup, Interrupt(1, 2, RuntimeError)], epochs=3)
    assert ema.step == BATCHES + 3
    ema.load(path, model)
    _keras_fit(model, [ema, backup], epochs=3)
    assert ema.step == 3 * BATCHES
    _assert_as_straight(model, ema, straight[3])


@ARRAY_COPY_WARNING
@pytest.mark.parametrize("where", ["evaluate", "validate"])
def test_keras_training_goes_on_from_the_live_weights_after_an_evaluation_raised(
    where: str, straight: dict[int, tuple[list[Any], list[Any]]]
) -> None:
    """An ``evaluate()`` (or the validation inside ``fit``) that raises with the averages in:
    the next ``fit`` trains the live weights, so model and EMA end as if it never ran."""
    model, ema = make_model(), KerasEMA(decay=0.8, swap=("evaluate", "validate"))
    with pytest.raises(RuntimeError, match="evaluate failed"):
        if where == "evaluate":
            _keras_fit(model, [ema], epochs=1)
            model.evaluate(X, Y, verbose=0, callbacks=[ema, FailEvaluate()])
        else:
            model.fit(
                X,
                Y,
                batch_size=16,
                epochs=1,
                verbose=0,
                shuffle=False,
                validation_data=(X, Y),
                callbacks=[ema, FailEvaluate()],
            )
    assert ema.step == BATCHES
    _keras_fit(model, [ema], epochs=2, initial_epoch=1)
    assert ema.step == 2 * BATCHES
    _assert_as_straight(model, ema, straight[2])


# -- accelerate ------------------------------------------------------------------------------

accelerate = pytest.importorskip("accelerate")
from ema_core.integrations.accelerate import register  # noqa: E402
from ema_core.torch import EMA  # noqa: E402


def _prepared(seed: int) -> tuple[Any, Any, Any, Any, EMA]:
    """A fresh CPU accelerator, and the model, optimizer, loader and EMA it runs."""
    accelerate.state.AcceleratorState._reset_state(True)
    accelerate.state.GradientState._reset_state()
    torch.manual_seed(seed)
    accelerator = accelerate.Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(48, 3, generator=g), torch.randn(48, 1, generator=g)
    )
    batches = torch.utils.data.DataLoader(data, batch_size=4)
    model, opt, batches = accelerator.prepare(model, opt, batches)
    averager = EMA(model, schedule=SCHEDULE)
    register(accelerator, averager)
    return accelerator, model, opt, batches, averager


def _step(model: Any, opt: Any, averager: EMA, x: Any, y: Any) -> None:
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    averager.update()


def _bits(averager: EMA, model: Any) -> dict[str, Any]:
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {**{f"ema/{k}": v.clone() for k, v in averager.average.items()}, **weights}


@pytest.fixture
def fresh_accelerate_state() -> Iterator[None]:
    """accelerate's process-wide singletons, clean after the test."""
    yield
    accelerate.state.AcceleratorState._reset_state(True)
    accelerate.state.GradientState._reset_state()


def test_accelerate_mid_epoch_crash_resumes_with_skip_first_batches(
    tmp_path: Path, fresh_accelerate_state: None
) -> None:
    """``save_state`` after 5 batches, a KeyboardInterrupt at batch 9; a fresh process loads
    the folder, skips the 5 batches it ran (``skip_first_batches``) and ends the epoch: the EMA
    and the model are the ones of the epoch run straight through."""
    _, model, opt, batches, straight = _prepared(0)
    for x, y in batches:
        _step(model, opt, straight, x, y)
    expected, expected_step = _bits(straight, model), straight.step

    accelerator, model, opt, batches, averager = _prepared(0)
    with pytest.raises(KeyboardInterrupt):
        for i, (x, y) in enumerate(batches):
            if i == 5:
                accelerator.save_state(str(tmp_path))
            if i == 9:
                raise KeyboardInterrupt
            _step(model, opt, averager, x, y)
    assert averager.step == 9

    accelerator, model, opt, batches, resumed = _prepared(3)  # other initial weights
    accelerator.load_state(str(tmp_path))
    assert resumed.step == 5
    for x, y in accelerator.skip_first_batches(batches, 5):
        _step(model, opt, resumed, x, y)
    assert resumed.step == expected_step == 12
    assert_same(_bits(resumed, model), expected)


def test_accelerate_a_folder_saved_before_register_changes_nothing(
    tmp_path: Path, fresh_accelerate_state: None
) -> None:
    """``load_state`` of a folder saved before the EMA was registered (a run that added the EMA
    on resume): a ``FileNotFoundError`` naming the file, and neither the EMA nor the model
    changed (the EMA's hook refuses before accelerate loads the model)."""
    accelerator, model, opt, batches, averager = _prepared(0)
    for x, y in batches:
        _step(model, opt, averager, x, y)
    accelerate.state.AcceleratorState._reset_state(True)
    accelerate.state.GradientState._reset_state()
    plain = accelerate.Accelerator(cpu=True)
    plain.prepare(model)
    plain.save_state(str(tmp_path))
    accelerator, model, opt, batches, averager = _prepared(3)
    _step(model, opt, averager, *next(iter(batches)))
    before = _bits(averager, model)
    with pytest.raises(FileNotFoundError, match=r"ema\.safetensors does not exist"):
        accelerator.load_state(str(tmp_path))
    assert averager.step == 1
    assert_same(_bits(averager, model), before)


def test_accelerate_load_state_twice_is_load_state_once(
    tmp_path: Path, fresh_accelerate_state: None
) -> None:
    """Two ``load_state`` calls of one folder (a retry after a failed start) leave the EMA as
    one does, and training on from there gives the same bits."""
    accelerator, model, opt, batches, averager = _prepared(0)
    for i, (x, y) in enumerate(batches):
        if i == 6:
            accelerator.save_state(str(tmp_path))
        _step(model, opt, averager, x, y)
    straight, runs = _bits(averager, model), []
    for loads in (1, 2):
        accelerator, model, opt, batches, resumed = _prepared(3)
        for _ in range(loads):
            accelerator.load_state(str(tmp_path))
        assert resumed.step == 6
        for x, y in accelerator.skip_first_batches(batches, 6):
            _step(model, opt, resumed, x, y)
        runs.append(_bits(resumed, model))
    assert_same(runs[0], straight)
    assert_same(runs[1], straight)
