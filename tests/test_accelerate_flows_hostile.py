"""accelerate training scripts as users write them (single process, CPU): ``prepare`` before or
after the EMA, ``accumulate`` with ``sync_gradients`` gating the update, ``clip_grad_norm_``,
skipped fp16 steps, ``save_state`` / ``load_state`` resumes with ``skip_first_batches``,
``save_model`` inside ``swap()``, and the diffusers ``EMAModel`` replacement. The averages are
checked against a float64 EMA of the weights recorded after each real optimizer step."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")
safetensors_torch = pytest.importorskip("safetensors.torch")

import ema_core as ema  # noqa: E402
from ema_core import presets  # noqa: E402
from ema_core.integrations.accelerate import ema_path, register  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # conftest: a clean accelerate

NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]


def _fresh(**options: Any) -> Any:
    """A new CPU accelerator, as a new process would make it (accelerate's singletons reset)."""
    accelerate.state.AcceleratorState._reset_state(True)
    accelerate.state.GradientState._reset_state()
    return accelerate.Accelerator(cpu=True, **options)


def _net(seed: int) -> Any:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def _loader(batches: int) -> Any:
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(4 * batches, 3, generator=g), torch.randn(4 * batches, 1, generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=4)


def _weights(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _averages(averager: EMA) -> dict[str, Any]:
    return {k: v.clone() for k, v in averager.average.items()}


def _assert_bits(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert list(got) == list(want)
    for name, value in got.items():
        assert value.dtype == want[name].dtype, name
        assert torch.equal(value, want[name]), name


def _epoch(
    accelerator: Any,
    model: Any,
    opt: Any,
    batches: Any,
    emas: tuple[EMA, ...],
    *,
    clip: float | None = None,
    gate_skips: bool = False,
    seen: list[dict[str, Any]] | None = None,
    each_step: Callable[[], None] | None = None,
    each_batch: Callable[[], None] | None = None,
) -> None:
    """One epoch of the README's loop: the EMAs update once per synced optimizer step (and not
    on a skipped one with ``gate_skips``); ``seen`` gets the weights after each update,
    ``each_step`` runs after each update and ``each_batch`` after every batch."""
    model.train()
    for x, y in batches:
        with accelerator.accumulate(model):
            accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
            if clip is not None and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            opt.zero_grad()
        if each_batch is not None:
            each_batch()
        if not accelerator.sync_gradients:
            continue
        if gate_skips and accelerator.optimizer_step_was_skipped:
            continue
        for each in emas:
            each.update()
        if seen is not None:
            seen.append(_weights(model))
        if each_step is not None:
            each_step()


def _reference(start: dict[str, Any], seen: list[dict[str, Any]], decays: list[float]) -> Any:
    """A float64 EMA by hand: ``s <- d * s + (1 - d) * p`` over the recorded weights."""
    shadow = {k: v.double() for k, v in start.items()}
    for weights, d in zip(seen, decays, strict=True):
        shadow = {k: d * s + (1 - d) * weights[k].double() for k, s in shadow.items()}
    return shadow


def _assert_close(averager: EMA, want: dict[str, Any]) -> None:
    got = averager.average
    assert list(got) == list(want)
    for name, value in got.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value.double(), want[name], rtol=1e-6, atol=1e-6)


def test_ema_before_prepare_after_prepare_and_on_unwrap_model_agree() -> None:
    """An EMA built on the bare model before ``prepare(model, opt, loader)``, one on the prepared
    model and one on ``unwrap_model`` of it: the same names and, over two epochs with
    accumulation under bf16 autocast, the same bits (prepare keeps the parameters)."""
    accelerator = _fresh(gradient_accumulation_steps=2, mixed_precision="bf16")
    model = _net(0)
    early = EMA(model, decay=0.8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt, batches = accelerator.prepare(model, opt, _loader(5))
    late = EMA(model, decay=0.8)
    unwrapped = EMA(accelerator.unwrap_model(model), decay=0.8)
    # the early EMA was built on the initial weights, the others too: prepare changed none
    _assert_bits(_averages(early), _averages(late))
    for _ in range(2):
        _epoch(accelerator, model, opt, batches, (early, late, unwrapped))
    assert early.step == late.step == unwrapped.step == 6  # ceil(5 / 2) synced steps per epoch
    assert list(early.names) == list(late.names) == list(unwrapped.names) == NAMES
    _assert_bits(_averages(early), _averages(late))
    _assert_bits(_averages(unwrapped), _averages(late))


@pytest.mark.parametrize("accumulate", [1, 3])
def test_accumulation_updates_once_per_optimizer_step_as_a_hand_ema(accumulate: int) -> None:
    """``gradient_accumulation_steps`` 1 or 3 over an epoch of 7 batches (accelerate syncs the
    last, partial group at the end of the loader), with ``clip_grad_norm_`` on synced steps:
    one update per real optimizer step, and the averages of a float64 EMA of the weights
    recorded after each of them; the weights change only on those steps."""
    accelerator = _fresh(gradient_accumulation_steps=accumulate)
    model = _net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    model, opt, batches = accelerator.prepare(model, opt, _loader(7))
    averager = EMA(model, decay=0.7)
    start = _weights(model)
    seen: list[dict[str, Any]] = []
    after_batch = [start]
    for _ in range(2):
        _epoch(
            accelerator,
            model,
            opt,
            batches,
            (averager,),
            clip=0.05,
            seen=seen,
            each_batch=lambda: after_batch.append(_weights(model)),
        )
    steps = 2 * -(-7 // accumulate)
    assert averager.step == len(seen) == steps
    changed = [
        not torch.equal(a["0.weight"], b["0.weight"]) for a, b in itertools.pairwise(after_batch)
    ]
    assert sum(changed) == steps
    _assert_close(averager, _reference(start, seen, [0.7] * steps))


def test_diffusers_preset_under_accumulation_follows_diffusers_decays() -> None:
    """The README's ``EMAModel`` replacement: ``presets.diffusers(decay, use_ema_warmup=True,
    update_after_step=2, ...)`` updated under ``sync_gradients`` uses diffusers' ``get_decay``
    at each optimization step (0 up to ``update_after_step + 1``, then the warm-up ramp capped
    at ``decay``); ``averager.step`` is diffusers' ``optimization_step``."""
    accelerator = _fresh(gradient_accumulation_steps=2)
    model = _net(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt, batches = accelerator.prepare(model, opt, _loader(8))
    config = presets.diffusers(decay=0.6, update_after_step=2, use_ema_warmup=True, power=0.75)
    averager = EMA(model, config=config)
    start = _weights(model)
    seen: list[dict[str, Any]] = []
    for _ in range(2):
        _epoch(accelerator, model, opt, batches, (averager,), seen=seen)
    assert averager.step == 8

    def get_decay(optimization_step: int) -> float:  # diffusers 0.x EMAModel.get_decay
        step = max(0, optimization_step - 2 - 1)
        if step <= 0:
            return 0.0
        return min(1 - (1 + step / 1.0) ** -0.75, 0.6)

    decays = [get_decay(t) for t in range(1, 9)]
    assert decays[:3] == [0.0, 0.0, 0.0] and decays[-1] == 0.6
    _assert_close(averager, _reference(start, seen, decays))


@pytest.mark.parametrize("how", ["register", "register_for_checkpointing"])
def test_resume_with_skip_first_batches_under_accumulation_is_bit_for_bit(
    tmp_path: Path, how: str
) -> None:
    """A ``save_state`` after batch 4 of 9 (a synced step with accumulation 2), a crash at
    batch 7; a fresh accelerator with other initial weights loads the folder, skips the 4
    batches (``skip_first_batches``), ends the epoch and runs one more: the EMA, its step and
    the model equal the run straight through, bit for bit."""

    def setup(seed: int) -> tuple[Any, Any, Any, Any, EMA]:
        accelerator = _fresh(gradient_accumulation_steps=2)
        model = _net(seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model, opt, batches = accelerator.prepare(model, opt, _loader(9))
        averager = EMA(model, schedule=ema.schedules.warmup(0.9))
        if how == "register":
            register(accelerator, averager)
        else:
            accelerator.register_for_checkpointing(averager)
        return accelerator, model, opt, batches, averager

    accelerator, model, opt, batches, straight = setup(0)
    for _ in range(2):
        _epoch(accelerator, model, opt, batches, (straight,))
    want, want_model = _averages(straight), _weights(model)
    assert straight.step == 10

    accelerator, model, opt, batches, averager = setup(0)

    class Crash(Exception):
        pass

    def crash_after_save() -> None:
        if averager.step == 2:
            accelerator.save_state(str(tmp_path))
        if averager.step == 3:
            raise Crash

    with pytest.raises(Crash):
        _epoch(accelerator, model, opt, batches, (averager,), each_step=crash_after_save)

    accelerator, model, opt, batches, resumed = setup(5)
    accelerator.load_state(str(tmp_path))
    assert resumed.step == 2
    _epoch(accelerator, model, opt, accelerator.skip_first_batches(batches, 4), (resumed,))
    _epoch(accelerator, model, opt, batches, (resumed,))
    assert resumed.step == 10
    _assert_bits(_averages(resumed), want)
    _assert_bits(_weights(model), want_model)


@pytest.mark.parametrize("copy", [True, False])
def test_save_model_inside_swap_writes_the_averages(tmp_path: Path, copy: bool) -> None:
    """``accelerator.save_model(model, dir)`` inside ``averager.swap()`` (copying, or zero-copy
    with ``copy=False``: the parameters point at separate shadows, so accelerate's dropping of
    aliased tensors keeps them all) writes the averages as ``model.safetensors``; outside, the
    live weights; the live weights are back after the block, bit for bit."""
    accelerator = _fresh(mixed_precision="bf16")
    model = _net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt, batches = accelerator.prepare(model, opt, _loader(4))
    averager = EMA(model, decay=0.6)
    _epoch(accelerator, model, opt, batches, (averager,))
    live = _weights(model)
    with averager.swap(copy=copy):
        accelerator.save_model(model, str(tmp_path / "ema"))
    accelerator.save_model(model, str(tmp_path / "live"))
    _assert_bits(_weights(model), live)
    saved = safetensors_torch.load_file(str(tmp_path / "ema" / "model.safetensors"))
    _assert_bits({k: saved[k] for k in NAMES}, _averages(averager))
    saved = safetensors_torch.load_file(str(tmp_path / "live" / "model.safetensors"))
    _assert_bits({k: saved[k] for k in NAMES}, live)


def test_validation_under_swap_each_batch_changes_no_training_bits() -> None:
    """The diffusers ``store`` / ``copy_to`` / validate / ``restore`` replaced by ``with
    averager.swap():`` after every batch, also in the middle of an accumulation group with
    gradients pending (eval mode, no grad, a BatchNorm in the model): the training run, the
    EMA and the BatchNorm statistics end as in a run without validation, bit for bit, and
    each validation read the averages."""

    def run(validate: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        accelerator = _fresh(gradient_accumulation_steps=2)
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1)
        )
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model, opt, batches = accelerator.prepare(model, opt, _loader(6))
        averager = EMA(model, config=presets.diffusers(decay=0.9, use_ema_warmup=True))
        probe = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))

        def validation() -> None:
            model.eval()
            with torch.no_grad(), averager.swap():
                inside = _weights(model)
                model(probe)
            model.train()
            averages = _averages(averager)
            for name, value in inside.items():
                assert torch.equal(value, averages.get(name, value)), name

        for _ in range(2):
            _epoch(
                accelerator,
                model,
                opt,
                batches,
                (averager,),
                each_batch=validation if validate else None,
            )
        return _averages(averager), _weights(model)

    plain, validated = run(False), run(True)
    _assert_bits(validated[0], plain[0])
    _assert_bits(validated[1], plain[1])


def test_copy_to_unwrapped_model_at_the_end_gives_the_averages_to_save() -> None:
    """diffusers ends with ``ema_unet.copy_to(unet.parameters())`` before ``save_pretrained``:
    ``averager.copy_to(accelerator.unwrap_model(model))`` puts the averages into the model,
    and ``accelerator.get_state_dict(model)`` then hands them out."""
    accelerator = _fresh(gradient_accumulation_steps=2)
    model = _net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt, batches = accelerator.prepare(model, opt, _loader(6))
    averager = EMA(model, config=presets.diffusers(decay=0.9))
    _epoch(accelerator, model, opt, batches, (averager,))
    assert averager.step == 3
    averager.copy_to(accelerator.unwrap_model(model))
    state = accelerator.get_state_dict(model)
    _assert_bits({k: state[k].detach() for k in NAMES}, _averages(averager))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_skipped_fp16_step_is_left_out_by_the_readmes_gate(accumulate: int) -> None:
    """fp16 on a GPU: the gradient scaler skips a step whose gradients overflowed (here a CPU
    ``GradScaler`` given to the accelerator before ``prepare``, and one batch that overflows).
    ``if sync_gradients and not optimizer_step_was_skipped`` leaves the EMA where it was for
    that step (with accumulation 2: the group holding that batch): the averages are a hand EMA
    of the weights after the steps that ran."""
    accelerator = _fresh(gradient_accumulation_steps=accumulate)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=1000)
    model = _net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)) for _ in range(6)]
    batches[2] = (batches[2][0] * float("inf"), batches[2][1])  # NaN gradients: skipped
    model, opt = accelerator.prepare(model, opt)
    averager = EMA(model, decay=0.5)
    start = _weights(model)
    seen: list[dict[str, Any]] = []
    _epoch(accelerator, model, opt, batches, (averager,), gate_skips=True, seen=seen)
    ran = 5 if accumulate == 1 else 2  # 6 steps, or groups (0, 1), (2, 3), (4, 5); one skipped
    assert averager.step == len(seen) == ran
    assert all(torch.isfinite(v).all() for v in averager.average.values())
    _assert_close(averager, _reference(start, seen, [0.5] * ran))


def test_automatic_checkpoint_naming_keeps_the_ema_with_each_kept_folder(tmp_path: Path) -> None:
    """``ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=2)``: each
    ``save_state()`` folder holds its ``ema.safetensors``, the pruned one goes with its file,
    and ``load_state()`` with no folder restores the EMA of the latest save, bit for bit."""
    config = accelerate.utils.ProjectConfiguration(
        project_dir=str(tmp_path), automatic_checkpoint_naming=True, total_limit=2
    )
    accelerator = _fresh(project_config=config)
    model = _net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt, batches = accelerator.prepare(model, opt, _loader(3))
    averager = EMA(model, decay=0.9)
    register(accelerator, averager)
    for _ in range(3):
        _epoch(accelerator, model, opt, batches, (averager,))
        accelerator.save_state()
    saved = _averages(averager)
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert folders == ["checkpoint_1", "checkpoint_2"]
    assert all(ema_path(tmp_path / "checkpoints" / f).is_file() for f in folders)
    _epoch(accelerator, model, opt, batches, (averager,))
    accelerator.load_state()
    assert averager.step == 9
    _assert_bits(_averages(averager), saved)


@pytest.mark.parametrize("how", ["register", "register_for_checkpointing"])
def test_save_state_inside_swap_saves_the_ema_not_the_swapped_weights(
    tmp_path: Path, how: str
) -> None:
    """A ``save_state`` called during validation inside ``swap()``: the EMA's file
    (``ema.safetensors``, or accelerate's pickle of ``state_dict()``) holds the EMA's own
    averages and step, and loads into a fresh EMA with the same bits."""
    accelerator = _fresh()
    model = _net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt, batches = accelerator.prepare(model, opt, _loader(3))
    averager = EMA(model, decay=0.5)
    if how == "register":
        register(accelerator, averager)
    else:
        accelerator.register_for_checkpointing(averager)
    _epoch(accelerator, model, opt, batches, (averager,))
    _epoch(accelerator, model, opt, batches, (averager,))
    want = _averages(averager)
    with averager.swap():
        accelerator.save_state(str(tmp_path))
    other = EMA(_net(4), decay=0.5)
    if how == "register":
        ema.checkpoint.load(ema_path(tmp_path), other)
    else:
        pickled = tmp_path / "custom_checkpoint_0.pkl"
        other.load_state_dict(torch.load(pickled, weights_only=True))
    assert other.step == 6
    _assert_bits(_averages(other), want)


def test_load_state_inside_swap_is_refused_before_anything_loads(tmp_path: Path) -> None:
    """``load_state`` called inside ``swap()`` (a resume from within validation): the EMA's
    pre-hook refuses with a ``RuntimeError`` naming the ``swap()`` block before accelerate
    loads the model, so the EMA and, after the block, the live weights are as they were."""
    accelerator = _fresh()
    model = _net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt, batches = accelerator.prepare(model, opt, _loader(3))
    averager = EMA(model, decay=0.5)
    register(accelerator, averager)
    _epoch(accelerator, model, opt, batches, (averager,))
    accelerator.save_state(str(tmp_path))
    _epoch(accelerator, model, opt, batches, (averager,))
    want, live = _averages(averager), _weights(model)
    with pytest.raises(RuntimeError, match=r"swap\(\)"), averager.swap():
        accelerator.load_state(str(tmp_path))
    assert averager.step == 6
    _assert_bits(_averages(averager), want)
    _assert_bits(_weights(model), live)


def test_a_bf16_model_with_bf16_shadows_resumes_bit_for_bit(tmp_path: Path) -> None:
    """A model cast to bf16 before ``prepare`` and an ``EMA(dtype="same")`` (bf16 shadows):
    ``register``'s file keeps bf16, and a resume with other initial weights continues as the
    run straight through, bit for bit."""

    def setup(seed: int) -> tuple[Any, Any, Any, Any, EMA]:
        accelerator = _fresh(gradient_accumulation_steps=2)
        model = _net(seed).to(torch.bfloat16)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(1)
        data = [
            (torch.randn(4, 3, generator=g).bfloat16(), torch.randn(4, 1, generator=g).bfloat16())
            for _ in range(8)
        ]
        model, opt = accelerator.prepare(model, opt)
        averager = EMA(model, decay=0.75, dtype="same")
        register(accelerator, averager)
        return accelerator, model, opt, data, averager

    accelerator, model, opt, data, straight = setup(0)
    _epoch(accelerator, model, opt, data[:4], (straight,))
    accelerator.save_state(str(tmp_path))
    _epoch(accelerator, model, opt, data[4:], (straight,))
    assert straight.step == 4
    assert all(v.dtype == torch.bfloat16 for v in straight.average.values())
    accelerator, model2, opt, data, resumed = setup(5)
    accelerator.load_state(str(tmp_path))
    assert resumed.step == 2
    _epoch(accelerator, model2, opt, data[4:], (resumed,))
    _assert_bits(_averages(resumed), _averages(straight))
    _assert_bits(_weights(model2), _weights(model))


def test_the_readmes_elsewhere_recipe_needs_the_ema_config_of_the_run(tmp_path: Path) -> None:
    """Reading a ``save_state`` folder's EMA elsewhere (``checkpoint.load(ema_path(folder),
    EMA(model))``) for a run under ``presets.diffusers``: an EMA built with the run's config
    loads the averages and step bit for bit and ``copy_to`` hands them to a plain model; a
    bare ``EMA(model)`` (another config) is a ``ValueError`` offering ``strict=False`` that
    leaves it unchanged, and ``strict=False`` then loads the averages."""
    config = presets.diffusers(decay=0.99, use_ema_warmup=True)
    accelerator = _fresh(gradient_accumulation_steps=2)
    model = _net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt, batches = accelerator.prepare(model, opt, _loader(6))
    averager = EMA(model, config=config)
    register(accelerator, averager)
    _epoch(accelerator, model, opt, batches, (averager,))
    accelerator.save_state(str(tmp_path))
    want = _averages(averager)

    same = EMA(_net(3), config=config)
    ema.checkpoint.load(ema_path(tmp_path), same)
    assert same.step == 3
    _assert_bits(_averages(same), want)
    plain = _net(4)
    same.copy_to(plain)
    _assert_bits(_weights(plain), want)

    bare = EMA(_net(3))
    before = _averages(bare)
    with pytest.raises(ValueError, match="strict=False"):
        ema.checkpoint.load(ema_path(tmp_path), bare)
    assert bare.step == 0
    _assert_bits(_averages(bare), before)
    ema.checkpoint.load(ema_path(tmp_path), bare, strict=False)
    assert bare.step == 3
    _assert_bits(_averages(bare), want)
