"""The trainer integrations under mixed precision: Lightning's ``bf16-mixed`` / ``bf16-true``,
Keras 3's ``mixed_bfloat16`` / ``mixed_float16`` policies (jax backend, in-process) and
accelerate's ``mixed_precision="bf16"``, all on the CPU with the real frameworks.

What a user expects: the EMA of a mixed-precision run is the EMA of the float32 (or bf16) live
weights the optimizer wrote (float32 shadows), evaluation under the EMA gives what a manual
evaluation of the same averages under the same autocast gives, the live weights come back bit
for bit, and checkpoints resume bit for bit. Inside one autocast region torch caches the
low-precision casts of the weights by tensor object: a swap in or out inside that region must
not leave a forward reading the casts of the weights it replaced.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from ema_core.integrations.lightning import EMACallback  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests._lightning_helpers import (  # noqa: E402
    SCHEDULE,
    WARNINGS,
    Net,
    Recorder,
    assert_same,
    fit,
    loader,
    quiet,  # noqa: F401 (autouse fixture)
    trainer,
)
from tests.keras_pieces import KERAS_ARRAY_WARNING  # noqa: E402

pytestmark = [*WARNINGS, KERAS_ARRAY_WARNING]


def _bf16() -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16)


class Outputs(Net):
    """``Net`` that also keeps its validation outputs and casts each batch to its weights'
    dtype (so the module may be cast to bf16 mid-run)."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[Any] = []

    def _cast(self, batch: Any) -> Any:
        return [t.to(self.layer.weight.dtype) for t in batch]

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return super().training_step(self._cast(batch), batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.outputs.append(self.layer(self._cast(batch)[0]).detach().clone())
        super().validation_step(batch, batch_idx)


def _hand_run(start: dict[str, Any], recorder: Recorder) -> EMA:
    """The EMA a plain loop keeps over the recorded live weights, casting its model to the
    dtype the live weights were recorded in (as a mid-run ``.to(dtype)`` did)."""
    model = Net()
    model.load_state_dict(start)
    averaged = EMA(model, schedule=SCHEDULE)
    for step, live in zip(recorder.steps, recorder.live, strict=True):
        model.to(live["layer.weight"].dtype)
        model.load_state_dict(live)
        averaged.update(step)
    return averaged


# ---- Lightning ----


def test_lightning_bf16_mixed_validation_runs_on_the_averages_under_autocast(
    tmp_path: Path,
) -> None:
    """``precision="bf16-mixed"``: the EMA equals a plain loop's over the float32 live weights
    (float32 shadows), the validation inside ``fit`` runs under autocast (bf16 outputs) on the
    averages and gives what ``with ema.swap()`` under the same autocast gives by hand; the live
    weights are back after."""
    model, callback, recorder = fit(tmp_path, Outputs(), precision="bf16-mixed", max_epochs=1)
    assert callback.ema is not None and callback.ema.step == 8
    assert all(s.dtype == torch.float32 for s in callback.ema.average.values())
    assert_same(callback.ema.average, _hand_run(recorder.start, recorder).average)
    assert_same(model.weights(), recorder.live[-1])
    validated = model.outputs[-2:]  # the sanity check ran the first two on the live weights
    assert all(out.dtype == torch.bfloat16 for out in validated)
    model.eval()
    with torch.no_grad(), _bf16(), callback.ema.swap():
        by_hand = [model.layer(x) for x, _ in loader(2)]
    for got, want in zip(validated, by_hand, strict=True):
        assert torch.equal(got, want)


def test_lightning_validate_inside_a_users_autocast_region_leaves_no_stale_casts(
    tmp_path: Path,
) -> None:
    """A ``trainer.validate`` called inside the user's own bf16 autocast region, between two
    forwards: validation reads the averages (not the casts of the live weights made by the
    first forward) and the forward after it reads the live weights again (not the casts of the
    averages): torch's autocast cache is keyed by tensor object, which the swap keeps."""
    model, callback, _ = fit(tmp_path, Outputs(), max_epochs=1)
    assert callback.ema is not None
    x = loader(2).dataset.tensors[0][:4]
    with torch.no_grad(), _bf16(), callback.ema.swap():
        want_ema = model.layer(x)
    with _bf16():  # grad mode on: autocast caches the casts of the weights
        before = model.layer(x)
        run = trainer(tmp_path, [callback], precision="bf16-mixed")
        run.validate(model, loader(2), verbose=False)
        after = model.layer(x)
    assert torch.equal(model.outputs[-2], want_ema)
    assert torch.equal(before, after)
    assert not torch.equal(before, want_ema)


def test_lightning_bf16_mixed_resume_is_bit_for_bit(tmp_path: Path) -> None:
    """Stopping after one epoch under ``bf16-mixed`` and resuming from the checkpoint gives the
    EMA (shadows, step) and live weights of an uninterrupted two-epoch run, bit for bit."""
    whole, whole_callback, _ = fit(tmp_path / "whole", precision="bf16-mixed", max_epochs=2)
    first = EMACallback(schedule=SCHEDULE)
    run = trainer(tmp_path / "first", [first], precision="bf16-mixed", max_epochs=1)
    run.fit(Net(), loader(), loader(2))
    run.save_checkpoint(tmp_path / "one.ckpt")
    resumed, model = EMACallback(schedule=SCHEDULE), Net()
    run = trainer(tmp_path / "second", [resumed], precision="bf16-mixed", max_epochs=2)
    run.fit(model, loader(), loader(2), ckpt_path=tmp_path / "one.ckpt")
    assert whole_callback.ema is not None and resumed.ema is not None
    assert resumed.ema.step == whole_callback.ema.step == 16
    assert_same(resumed.ema.state_dict()["shadow"], whole_callback.ema.state_dict()["shadow"])
    assert_same(model.weights(), whole.weights())


def test_lightning_bf16_true_keeps_float32_shadows_and_saves_them(tmp_path: Path) -> None:
    """``precision="bf16-true"`` casts the module to bf16 before training starts: the EMA
    (built after that) keeps float32 shadows equal to a plain loop's, validation sees the
    averages rounded to bf16, the checkpoint holds the float32 shadows and a resume from it
    continues them bit for bit."""
    model, callback, recorder = fit(tmp_path, Outputs(), precision="bf16-true", max_epochs=1)
    assert callback.ema is not None
    assert model.layer.weight.dtype == torch.bfloat16
    assert all(s.dtype == torch.float32 for s in callback.ema.average.values())
    assert_same(callback.ema.average, _hand_run(recorder.start, recorder).average)
    rounded = {n: a.to(torch.bfloat16) for n, a in callback.ema.average.items()}
    assert_same(model.seen["validate"][-1], rounded)
    run = trainer(tmp_path, [callback], precision="bf16-true", max_epochs=1)
    run.strategy.connect(model)
    run.save_checkpoint(tmp_path / "true.ckpt")
    saved = torch.load(tmp_path / "true.ckpt", weights_only=True)
    assert_same(saved["callbacks"][callback.state_key]["shadow"], callback.ema.average)


def test_lightning_16_mixed_on_cpu_falls_back_to_bf16_and_the_ema_follows(
    tmp_path: Path,
) -> None:
    """``precision="16-mixed"`` on the CPU: Lightning warns and runs ``bf16-mixed`` instead
    (fp16 AMP needs CUDA; the fp16 GradScaler route is not reachable here), and the EMA of
    that run is the one a ``bf16-mixed`` run keeps, bit for bit."""
    with pytest.warns(UserWarning, match="AMP with fp16 is not supported on CPU"):
        _, asked, _ = fit(tmp_path / "fp16", precision="16-mixed", max_epochs=1)
    _, bf16, _ = fit(tmp_path / "bf16", precision="bf16-mixed", max_epochs=1)
    assert asked.ema is not None and bf16.ema is not None
    assert_same(dict(asked.ema.average), dict(bf16.ema.average))


class CastAtEpochEnd(pl.Callback):
    """Casts the module to bf16 when the first epoch ends (``model.to(dtype)`` mid-run)."""

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == 0:
            pl_module.to(torch.bfloat16)


def test_lightning_module_cast_to_bf16_mid_run_is_followed(tmp_path: Path) -> None:
    """A LightningModule cast to bf16 after the first epoch: the callback's EMA follows the
    cast tensors, keeps its float32 shadows and equals a plain loop that casts at the same
    step; the validation after the cast sees the averages rounded to bf16."""
    model, recorder = Outputs(), Recorder()
    callback = EMACallback(schedule=SCHEDULE)
    run = trainer(tmp_path, [callback, recorder, CastAtEpochEnd()], max_epochs=2)
    run.fit(model, loader(), loader(2))
    assert callback.ema is not None and callback.ema.step == 16
    assert recorder.live[7]["layer.weight"].dtype == torch.float32
    assert recorder.live[8]["layer.weight"].dtype == torch.bfloat16
    assert all(s.dtype == torch.float32 for s in callback.ema.average.values())
    assert_same(callback.ema.average, _hand_run(recorder.start, recorder).average)
    rounded = {n: a.to(torch.bfloat16) for n, a in callback.ema.average.items()}
    assert_same(model.seen["validate"][-1], rounded)
    assert_same(model.weights(), recorder.live[-1])


def test_lightning_swap_in_at_fit_end_under_bf16_mixed(tmp_path: Path) -> None:
    """``on_fit_end="swap-in"`` under ``bf16-mixed``: the model keeps the float32 averages,
    and a forward under autocast right after it (one region) reads them."""
    model, callback, _ = fit(
        tmp_path, Outputs(), precision="bf16-mixed", max_epochs=1, ema={"on_fit_end": "swap-in"}
    )
    assert callback.ema is not None
    assert_same(model.weights(), dict(callback.ema.average))


# ---- Keras 3 (jax backend, in-process) ----


@pytest.fixture
def keras_policy() -> Iterator[Any]:
    """keras (jax backend, or a skip); the global dtype policy is restored after the test."""
    pytest.importorskip("tests._keras_helpers")  # sets KERAS_BACKEND=jax when first
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")
    policy = keras.mixed_precision.global_policy()
    yield keras
    keras.mixed_precision.set_global_policy(policy)


def _keras_model(keras: Any, optimizer: Any) -> Any:
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model


def test_keras_mixed_bfloat16_averages_float32_and_evaluates_like_a_twin(
    keras_policy: Any, tmp_path: Path
) -> None:
    """``mixed_bfloat16``: the variables and the averages stay float32 (the EMA of the live
    weights, a plain ``ema_core`` run over the recorded weights), ``evaluate`` with the
    callback gives what a twin holding ``average_weights()`` gives, the live weights come back
    bit for bit, and ``save`` / ``load`` restores the averages bit for bit."""
    import jax.numpy as jnp

    import ema_core as ema
    from ema_core.integrations.keras import EMACallback
    from tests._keras_helpers import X, Y, assert_bits
    from tests.test_integration_keras import Recorder

    keras = keras_policy
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = _keras_model(keras, keras.optimizers.SGD(0.05))
    callback, initial = EMACallback(decay=0.8), model.get_weights()
    record = Recorder()
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, shuffle=False, callbacks=[record, callback])
    live, averages = model.get_weights(), callback.average_weights()
    assert callback.step == len(record.seen) == 4
    assert [a.dtype for a in averages] == [np.dtype("float32")] * 4
    state = ema.init([jnp.asarray(w) for w in initial], callback.config)
    for weights in record.seen:
        state = ema.update(state, [jnp.asarray(w) for w in weights], callback.config)
    assert_bits(averages, [np.asarray(a) for a in ema.average(state, callback.config)])
    twin = keras.models.clone_model(model)
    twin.compile(loss="mse")
    twin.set_weights(averages)
    got = model.evaluate(X, Y, verbose=0, callbacks=[callback])
    assert got == twin.evaluate(X, Y, verbose=0)
    assert_bits(model.get_weights(), live)
    callback.save(tmp_path / "ema.safetensors")
    loaded = EMACallback(decay=0.8)
    loaded.load(tmp_path / "ema.safetensors", model)
    assert loaded.step == 4
    assert_bits(loaded.average_weights(), averages)


def test_keras_mixed_float16_skipped_loss_scale_steps_update_nothing(keras_policy: Any) -> None:
    """``mixed_float16`` wraps the optimizer in a ``LossScaleOptimizer``, which skips the step
    (weights unchanged, scale halved) when the scaled gradients overflow. The README: "one
    update per ``on_train_batch_end`` call that stepped the optimizer, ``step`` counts them",
    and the torch integrations update nothing for a skipped step. Large targets make every
    step of the first epoch overflow here: the optimizer takes no step, so neither may the
    EMA."""
    from ema_core.integrations.keras import EMACallback
    from tests._keras_helpers import X, Y

    keras = keras_policy
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = _keras_model(keras, keras.optimizers.SGD(1e-6))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    callback, initial = EMACallback(decay=0.8), model.get_weights()
    model.fit(X * 100, Y * 1e4, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    stepped = int(np.asarray(model.optimizer.iterations.value))
    assert stepped < 4  # the scale 2**15 overflows float16 on the first steps
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), initial, strict=True))
    assert callback.step == stepped


# ---- accelerate ----


@pytest.fixture
def bf16_accelerator(fresh_accelerate: None) -> Any:
    """A CPU ``Accelerator(mixed_precision="bf16")`` (clean accelerate state around it)."""
    accelerate = pytest.importorskip("accelerate")
    return accelerate.Accelerator(cpu=True, mixed_precision="bf16")


def _prepared(accelerator: Any) -> tuple[Any, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return accelerator.prepare(model, opt)


def _steps(
    accelerator: Any, model: Any, opt: Any, averager: EMA, seed: int, n: int, *also: EMA
) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
        loss = torch.nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
        for each in (averager, *also):
            each.update()


def test_accelerate_bf16_ema_of_the_prepared_model_and_resume(
    bf16_accelerator: Any, tmp_path: Path
) -> None:
    """``mixed_precision="bf16"``: the prepared model's forward runs under autocast (bf16
    inside, float32 outputs), the EMA built on it has the model's own names and float32
    shadows equal to an EMA of the unwrapped model, and ``save_state`` / ``load_state`` with
    ``register`` restore it bit for bit."""
    from ema_core.integrations.accelerate import register

    accelerator = bf16_accelerator
    model, opt = _prepared(accelerator)
    averager = EMA(model, decay=0.75)
    twin = EMA(accelerator.unwrap_model(model), decay=0.75)
    register(accelerator, averager)
    _steps(accelerator, model, opt, averager, 1, 3, twin)
    assert list(averager.names) == list(twin.names) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert_same(dict(averager.average), dict(twin.average))
    assert all(s.dtype == torch.float32 for s in averager.average.values())
    assert model(torch.ones(2, 3)).dtype == torch.float32
    saved = {n: a.clone() for n, a in averager.average.items()}
    accelerator.save_state(str(tmp_path))
    _steps(accelerator, model, opt, averager, 2, 2)
    accelerator.load_state(str(tmp_path))
    assert averager.step == 3
    assert_same(dict(averager.average), saved)


def test_accelerate_autocast_region_around_train_and_eval_reads_the_right_weights(
    bf16_accelerator: Any,
) -> None:
    """One ``accelerator.autocast()`` region around a training forward, an evaluation under
    ``swap()`` and another forward: the evaluation gives what the averages give in a fresh
    region, and the forward after it what the live weights gave before it."""
    accelerator = bf16_accelerator
    model, opt = _prepared(accelerator)
    averager = EMA(model, decay=0.5)
    _steps(accelerator, model, opt, averager, 1, 3)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), accelerator.autocast(), averager.swap():
        want = model(x)
    with accelerator.autocast():
        before = model(x)
        with torch.no_grad(), averager.swap():
            got = model(x)
        after = model(x)
    assert torch.equal(got, want)
    assert torch.equal(before, after)
    assert not torch.equal(before, want)


def test_accelerate_model_cast_to_bf16_mid_run_resumes(
    bf16_accelerator: Any, tmp_path: Path
) -> None:
    """The prepared model cast to bf16 mid-run: the EMA follows (float32 shadows kept), a
    ``save_state`` after the cast and a ``load_state`` into the bf16 model restore the EMA bit
    for bit, and ``swap()`` puts the averages rounded to bf16 in."""
    from ema_core.integrations.accelerate import register

    accelerator = bf16_accelerator
    model, opt = _prepared(accelerator)
    averager = EMA(model, decay=0.75)
    register(accelerator, averager)
    _steps(accelerator, model, opt, averager, 1, 2)
    model.to(torch.bfloat16)
    _steps(accelerator, model, opt, averager, 2, 2)
    assert all(s.dtype == torch.float32 for s in averager.average.values())
    saved = {n: a.clone() for n, a in averager.average.items()}
    accelerator.save_state(str(tmp_path))
    _steps(accelerator, model, opt, averager, 3, 1)
    accelerator.load_state(str(tmp_path))
    assert averager.step == 4
    assert_same(dict(averager.average), saved)
    with averager.swap():
        inside = {n: t.detach().clone() for n, t in model.state_dict().items()}
    assert_same(inside, {n: a.to(torch.bfloat16) for n, a in saved.items()})
