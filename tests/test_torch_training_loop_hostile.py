"""The torch ``EMA`` inside real training loops: autocast and a ``GradScaler`` that skips
steps, gradient accumulation with an interval, freezing mid-run, grad, no-grad and inference
modes around ``update`` and ``swap``, ``torch.compile`` before or after the EMA, models
converted or re-laid out after the EMA was built, exceptions inside ``swap()``, and runs that
must repeat bit for bit (also under ``torch.use_deterministic_algorithms``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from ema_core import Config, schedules

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from ema_core.torch import EMA  # noqa: E402
from tests.torch_models import copies, live_values, net, same  # noqa: E402

Batch = tuple[torch.Tensor, torch.Tensor]


def _data(count: int, seed: int = 3) -> list[Batch]:
    """``count`` batches for ``net()``: 8 inputs of width 3, targets of width 2."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 3, generator=generator), torch.randn(8, 2, generator=generator))
        for _ in range(count)
    ]


def _loss(model: Callable[[torch.Tensor], torch.Tensor], batch: Batch) -> torch.Tensor:
    inputs, targets = batch
    return (model(inputs) - targets).pow(2).mean()


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: Batch) -> None:
    opt.zero_grad()
    _loss(model, batch).backward()
    opt.step()


def _state_bits(ema: EMA) -> dict[str, torch.Tensor]:
    """``ema.state_dict()``'s shadows, step and weight as tensors, cloned (for ``same``)."""
    state = ema.state_dict()
    bits = {n: t.clone() for n, t in state["shadow"].items()}
    bits["<step>"], bits["<weight>"] = state["step"].clone(), state["weight"].clone()
    return bits


def _run(around_update: Callable[[], contextlib.AbstractContextManager[object]]) -> EMA:
    """A fixed run of ``net()`` (SGD with momentum, 3 steps) whose ``update()`` is called
    inside ``around_update()``."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = EMA(model, decay=0.75)
    for batch in _data(3):
        _train_step(model, opt, batch)
        with around_update():
            ema.update()
    return ema


@pytest.fixture(scope="module")
def plain_run() -> dict[str, torch.Tensor]:
    """The bits of ``_run`` with nothing around its updates."""
    return _state_bits(_run(contextlib.nullcontext))


@contextlib.contextmanager
def _bf16_autocast() -> Iterator[None]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yield


# ---- autocast and GradScaler ----


@pytest.mark.parametrize(
    "around_update",
    [
        _bf16_autocast,
        torch.no_grad,
        torch.inference_mode,
        torch.enable_grad,
        lambda: torch.autograd.set_detect_anomaly(True),
    ],
    ids=["autocast", "no_grad", "inference_mode", "enable_grad", "detect_anomaly"],
)
def test_an_update_in_any_mode_equals_a_plain_update_bit_for_bit(
    around_update: Callable[[], contextlib.AbstractContextManager[object]],
    plain_run: dict[str, torch.Tensor],
) -> None:
    """``update()`` blends stored tensors in place: an autocast region, ``no_grad``,
    ``inference_mode``, ``enable_grad`` or anomaly detection around it changes no bit of the
    shadows, step or weight, and the shadows stay plain tensors that need no grad and are not
    inference ones."""
    moded = _run(around_update)
    same(plain_run, _state_bits(moded))
    for shadow in moded.state_dict()["shadow"].values():
        assert not shadow.requires_grad and shadow.grad_fn is None
        assert not shadow.is_inference()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_half_model_s_update_in_any_mode_equals_a_plain_update(dtype: torch.dtype) -> None:
    """A bf16 or fp16 model (float32 shadows blended by the host engine, which writes through
    numpy views): updates under ``inference_mode``, ``no_grad`` or an autocast region give
    the bits of plain updates, and the shadows are never inference tensors."""

    def run(around: Callable[[], contextlib.AbstractContextManager[object]]) -> EMA:
        model = net().to(dtype)
        ema = EMA(model, decay=0.75)
        for k in range(1, 4):
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(0.0625 * k)
            with around():
                ema.update()
        return ema

    plain = _state_bits(run(contextlib.nullcontext))
    for around in (torch.inference_mode, torch.no_grad, _bf16_autocast):
        moded = run(around)
        same(plain, _state_bits(moded))
        assert moded.average["0.weight"].dtype == torch.float32
        assert not any(t.is_inference() for t in moded.state_dict()["shadow"].values())


def test_a_forward_under_autocast_keeps_float32_shadows_equal_to_a_named_tensor_ema() -> None:
    """The usual mixed-precision loop (forward and loss under bf16 autocast, update outside):
    the shadows stay float32 and equal those of an EMA of named tensors fed the same params."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ema = EMA(model, decay=0.5, buffers="skip")
    fed = {n: p.detach().clone() for n, p in model.named_parameters()}
    twin = EMA(fed, decay=0.5)
    for batch in _data(4):
        with _bf16_autocast():
            loss = _loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()
        for name, param in model.named_parameters():
            fed[name].copy_(param.detach())
        twin.update()
    assert all(t.dtype == torch.float32 for t in ema.average.values())
    same({n: t for n, t in ema.average.items() if n in fed}, copies(twin))


@pytest.mark.parametrize("copy", [True, False])
def test_swap_inside_an_autocast_region_evaluates_the_averages(copy: bool) -> None:
    """The README's ``swap()`` is for evaluating "with the averaged weights". Inside one
    autocast region, a forward made before the block (a training step, a logged metric) must
    not make the block's forward read the live weights, nor a forward after it the averages
    (torch keys its autocast casts on the tensor objects, which a swap keeps)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    ema = EMA(model, decay=0.0)
    with torch.no_grad():
        model.weight.add_(1.0)  # the live weights are now far from the average
    inputs = torch.randn(2, 4)
    with torch.no_grad():
        with _bf16_autocast():
            live_reference = model(inputs)
        with ema.swap(copy=copy), _bf16_autocast():
            average_reference = model(inputs)
        assert not torch.equal(live_reference, average_reference)
        with _bf16_autocast():
            assert torch.equal(model(inputs), live_reference)
            with ema.swap(copy=copy):
                inside = model(inputs)
            after = model(inputs)
    assert torch.equal(inside, average_reference)
    assert torch.equal(after, live_reference)


def test_copy_to_inside_an_autocast_region_is_seen_by_the_next_forward() -> None:
    """``copy_to`` writes the averages into the model's own tensors: a forward after it in the
    same autocast region reads them, not the casts of the weights it replaced."""
    torch.manual_seed(0)
    model, fresh = nn.Linear(4, 3), nn.Linear(4, 3)
    ema = EMA(model, decay=0.0)
    with torch.no_grad():
        model.weight.add_(1.0)
    fresh.load_state_dict(ema.average)
    inputs = torch.randn(2, 4)
    with torch.no_grad(), _bf16_autocast():
        expected = fresh(inputs)
        before = model(inputs)  # casts of the live weights, cached for the region
        ema.copy_to(model)
        after = model(inputs)
    assert not torch.equal(before, expected)
    assert torch.equal(after, expected)


def test_allennlp_assign_and_restore_inside_an_autocast_region_are_seen() -> None:
    """The AllenNLP drop-in writes the averages into the parameters and back in place: the
    forwards after ``assign_average_value`` and after ``restore`` in one autocast region read
    what the parameters hold then."""
    from ema_core.compat.allennlp import ExponentialMovingAverage

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    inputs = torch.randn(2, 4)
    drop_in = ExponentialMovingAverage(list(model.named_parameters()), decay=0.0)
    with torch.no_grad(), _bf16_autocast():
        averaged = model(inputs)  # the shadows start as the params
    with torch.no_grad():
        model.weight.add_(1.0)
    with torch.no_grad(), _bf16_autocast():
        live = model(inputs)
        drop_in.assign_average_value()
        inside = model(inputs)
        drop_in.restore()
        after = model(inputs)
    assert not torch.equal(live, averaged)
    assert torch.equal(inside, averaged)
    assert torch.equal(after, live)


def _scaled_run(update_on_skipped: bool) -> tuple[EMA, int, list[dict[str, torch.Tensor]]]:
    """Six steps with a CPU ``GradScaler`` whose steps 2 and 5 get infinite gradients (the
    scaler skips them and halves its scale); the EMA updates after every step, or only after
    the steps taken (a scale that did not shrink). Returns the EMA, the updates it got and
    the params it was fed."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    ema = EMA(model, decay=0.5, buffers="skip")
    fed: list[dict[str, torch.Tensor]] = []
    for i, batch in enumerate(_data(6), start=1):
        opt.zero_grad()
        loss = _loss(model, batch) * (float("inf") if i in (2, 5) else 1.0)
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if update_on_skipped or scaler.get_scale() >= scale:
            ema.update()
            fed.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return ema, len(fed), fed


@pytest.mark.parametrize("update_on_skipped", [True, False])
def test_a_grad_scaler_that_skips_steps_leaves_finite_averages_of_the_params_fed(
    update_on_skipped: bool,
) -> None:
    """Infinite gradients never reach the params (the scaler skips those steps), so the EMA
    stays finite whether it updates on every step or only on the steps taken; its counter
    counts its updates and its averages equal an EMA of named tensors fed the same params."""
    ema, updates, fed = _scaled_run(update_on_skipped)
    assert updates == (6 if update_on_skipped else 4)
    assert ema.step == updates
    assert all(bool(torch.isfinite(t).all()) for t in ema.average.values())
    values = {n: p.detach().clone() for n, p in net().named_parameters()}  # the start
    twin = EMA(values, decay=0.5)
    for params in fed:
        for name, tensor in params.items():
            values[name].copy_(tensor)
        twin.update()
    same({n: t for n, t in ema.average.items() if n in values}, copies(twin))


def test_adam_s_float_step_tensor_is_refused_as_a_step_and_changes_nothing() -> None:
    """``opt.state[p]["step"]`` of Adam is a float32 tensor: ``update(it)`` is a ``TypeError``
    naming ``step`` (the README asks for an int or a 0-d integer tensor), with no shadow moved;
    ``update(int(it))`` then works."""
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    ema = EMA(model, decay=0.5)
    _train_step(model, opt, _data(1)[0])
    adam_step = opt.state[model[0].weight]["step"]
    assert adam_step.dtype == torch.float32
    before = _state_bits(ema)
    with pytest.raises(TypeError, match="step"):
        ema.update(adam_step)
    same(_state_bits(ema), before)
    ema.update(int(adam_step))
    assert ema.step == 1


# ---- gradient accumulation, intervals, freezing ----


def test_gradient_accumulation_with_an_interval_matches_one_update_per_optimizer_step() -> None:
    """Four micro-batches per optimizer step, ``update()`` after each micro-batch and
    ``Config(interval=4)``: the averages move once per optimizer step, by the compensated
    decay ``d**4``, as an EMA of decay ``d**4`` updated once per optimizer step does; the
    peers' ``update_every=`` is not an ``EMA`` argument."""
    model = net()
    model.eval()  # no BatchNorm statistics move: only the optimizer changes the params
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    config = Config(schedule=schedules.constant(0.9), interval=4)
    micro = EMA(model, config=config, buffers="skip")
    per_step = EMA(model, decay=0.9**4, buffers="skip")
    batches = _data(12)
    for i, batch in enumerate(batches, start=1):
        (_loss(model, batch) / 4).backward()
        if i % 4 == 0:
            opt.step()
            opt.zero_grad()
            per_step.update()
        before = copies(micro)
        micro.update()
        if i % 4 != 0:
            same(copies(micro), before)  # a skipped call keeps every averaged bit
    assert micro.step == 12 and per_step.step == 3
    for name, average in per_step.average.items():
        torch.testing.assert_close(micro.average[name], average, rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="update_every"):
        EMA(model, update_every=4)  # type: ignore[call-arg]


@pytest.mark.parametrize("copy", [True, False])
def test_freezing_a_layer_mid_run_keeps_it_averaged_and_swap_keeps_flags_and_grads(
    copy: bool,
) -> None:
    """``requires_grad_(False)`` on a layer mid-run (an optimizer that no longer moves it):
    the EMA still averages it toward its fixed value; ``swap()`` keeps every parameter's
    ``requires_grad`` and ``.grad``, and the module's train/eval flags, as they were."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = EMA(model, decay=0.5)
    batches = _data(6)
    for i, batch in enumerate(batches):
        if i == 3:
            model[0].requires_grad_(False)
            frozen = model[0].weight.detach().clone()
        _train_step(model, opt, batch)
        ema.update()
    assert torch.equal(model[0].weight, frozen)
    old = ema.average["0.weight"].clone()
    ema.update()
    assert torch.equal(ema.average["0.weight"], old.lerp(frozen, 0.5))
    assert not torch.equal(old, frozen)  # the average still moves toward the frozen value
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    with ema.swap(copy=copy):
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is grads[n] for n, p in model.named_parameters())
    assert {n: m.training for n, m in model.named_modules()} == modes


# ---- swap() in a training loop ----


def _loop_with_evaluations(
    make_opt: Callable[[list[nn.Parameter]], torch.optim.Optimizer], copy: bool | None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[torch.Tensor]]:
    """Three steps; after each, an evaluation in ``swap(copy=copy)`` (none when ``copy`` is
    None) under eval mode and ``no_grad``. Returns the live values, the EMA's bits and the
    optimizer's state tensors."""
    model = net()
    opt = make_opt(list(model.parameters()))
    ema = EMA(model, decay=0.75)
    for batch in _data(3):
        model.train()
        _train_step(model, opt, batch)
        ema.update()
        if copy is not None:
            model.eval()
            pointers = [p.data_ptr() for p in model.parameters()]
            with torch.no_grad(), ema.swap(copy=copy):
                _loss(model, batch)
                if copy:
                    assert [p.data_ptr() for p in model.parameters()] == pointers
            assert [p.data_ptr() for p in model.parameters()] == pointers
    state = [t.clone() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return live_values(model), _state_bits(ema), state


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=True),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, fused=True),
    ],
    ids=["sgd", "adam-foreach", "adamw-fused"],
)
def test_evaluating_in_swap_after_every_step_changes_nothing_in_the_run(
    make_opt: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
) -> None:
    """An evaluation in ``swap()`` after every optimizer step (either copy mode, with the
    for-loop, foreach and fused optimizers) leaves the run bit for bit as it was without
    them: live weights, BatchNorm statistics, optimizer state and the EMA; with copies the
    params keep their data pointers inside the block too."""
    reference = _loop_with_evaluations(make_opt, None)
    for copy in (True, False):
        evaluated = _loop_with_evaluations(make_opt, copy)
        same(reference[0], evaluated[0])
        same(reference[1], evaluated[1])
        assert len(reference[2]) == len(evaluated[2]) > 0
        for old, new in zip(reference[2], evaluated[2], strict=True):
            assert torch.equal(old, new)


def test_an_update_between_forward_and_backward_leaves_the_gradients_alone() -> None:
    """``loss = model(x); ema.update(); loss.backward()`` (an EMA hook that runs early): the
    update writes only its shadows, so autograd's saved tensors are intact and the gradients
    are those of a run without the update."""
    grads = []
    for with_update in (False, True):
        model = net()
        ema = EMA(model, decay=0.5)
        loss = _loss(model, _data(1)[0])
        if with_update:
            ema.update()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    same(grads[0], grads[1])


class _Stop(Exception):
    """An error raised by the user's code inside ``swap()``."""


def test_an_error_after_training_inside_swap_restores_live_weights_and_stats_exactly() -> None:
    """An optimizer step and a train-mode BatchNorm forward inside ``swap()`` (by mistake),
    then an exception: on exit every live tensor (statistics and counter included) has its
    bits back, the exception is the user's, and the EMA has not moved."""
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    ema = EMA(model, decay=0.5)
    _train_step(model, opt, _data(1)[0])
    ema.update()
    live, averages = live_values(model), _state_bits(ema)
    with pytest.raises(_Stop), ema.swap():
        model.train()
        _train_step(model, opt, _data(2)[1])
        raise _Stop
    same(live_values(model), live)
    same(_state_bits(ema), averages)


def test_a_write_then_an_error_inside_a_no_copy_swap_chains_the_user_s_error() -> None:
    """``swap(copy=False)`` with a write to a parameter and then the user's exception: the
    live weights come back bit for bit and the ``RuntimeError`` that says the average holds
    the write has the user's exception as its cause."""
    model = net()
    ema = EMA(model, decay=0.5)
    live = live_values(model)
    with (
        pytest.raises(RuntimeError, match="written inside the block") as caught,
        ema.swap(copy=False),
    ):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        raise _Stop
    assert isinstance(caught.value.__cause__, _Stop)
    same(live_values(model), live)


def test_a_keyboard_interrupt_inside_a_no_copy_swap_passes_through_restored() -> None:
    """Ctrl-C (``KeyboardInterrupt``) inside ``swap(copy=False)`` after a write: the live
    weights come back and the interrupt itself propagates (no ``RuntimeError`` hides it)."""
    model = net()
    ema = EMA(model, decay=0.5)
    live = live_values(model)
    with pytest.raises(KeyboardInterrupt), ema.swap(copy=False):
        with torch.no_grad():
            model[3].bias.mul_(2.0)
        raise KeyboardInterrupt
    same(live_values(model), live)


@pytest.mark.parametrize("copy", [True, False])
def test_a_swap_under_inference_mode_leaves_a_model_that_still_trains(copy: bool) -> None:
    """Evaluation as ``with torch.inference_mode(), ema.swap():``: afterwards the params are
    not inference tensors, hold their live bits and train (backward and optimizer step)."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = EMA(model, decay=0.5)
    _train_step(model, opt, _data(1)[0])
    ema.update()
    live = live_values(model)
    model.eval()
    with torch.inference_mode(), ema.swap(copy=copy):
        _loss(model, _data(1)[0])
    same(live_values(model), live)
    assert not any(t.is_inference() for t in model.state_dict().values())
    model.train()
    _train_step(model, opt, _data(2)[1])
    ema.update()
    assert ema.step == 2


def test_average_read_under_no_grad_or_inference_mode_is_the_same_average() -> None:
    """``average`` of an ``init="zeros"`` EMA (a bias-corrected read, computed when read) gives
    the same bits under ``no_grad`` and ``inference_mode`` as outside them, without grad."""
    model = net()
    ema = EMA(model, config=Config(schedule=schedules.constant(0.9), init="zeros"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for batch in _data(3):
        _train_step(model, opt, batch)
        ema.update()
    plain = copies(ema)
    with torch.no_grad():
        same(copies(ema), plain)
    with torch.inference_mode():
        same(copies(ema), plain)
    assert not any(t.requires_grad for t in plain.values())


def test_functional_call_with_the_averages_equals_a_forward_in_swap() -> None:
    """``torch.func.functional_call(model, ema.average, x)`` (evaluation without touching the
    model; the names are the module's own, buffers included) gives the outputs of a forward
    inside ``swap()``, for a bias-corrected ``init="zeros"`` EMA too."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plain = EMA(model, decay=0.5)
    zeros = EMA(model, config=Config(schedule=schedules.constant(0.5), init="zeros"))
    for batch in _data(2):
        _train_step(model, opt, batch)
        plain.update()
        zeros.update()
    model.eval()
    inputs = _data(1, seed=7)[0][0]
    live = live_values(model)
    with torch.no_grad():
        for ema in (plain, zeros):
            called = torch.func.functional_call(model, ema.average, (inputs,), strict=True)
            with ema.swap():
                assert torch.equal(called, model(inputs))
    same(live_values(model), live)


@pytest.mark.parametrize("outer_copy", [True, False])
@pytest.mark.parametrize("inner_copy", [True, False])
def test_swaps_of_two_emas_of_one_model_nest_and_unwind_exactly(
    outer_copy: bool, inner_copy: bool
) -> None:
    """Two EMAs of one model (a fast and a slow decay, compared in one evaluation): the
    inner ``swap()`` shows its averages, the model holds the outer EMA's again after it and
    the live bits after both, and neither EMA has changed. A copying inner swap inside an
    outer ``swap(copy=False)`` writes through the outer EMA's own shadows and puts them back
    bit for bit: no write for the outer swap to report (``tests/test_torch_nested_swaps_1206``
    pins that a real write there still is one)."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fast, slow = EMA(model, decay=0.5), EMA(model, decay=0.9)
    for batch in _data(2):
        _train_step(model, opt, batch)
        fast.update()
        slow.update()
    live, fast_bits, slow_bits = live_values(model), _state_bits(fast), _state_bits(slow)

    def holds(ema: EMA) -> bool:
        values = model.state_dict()
        return all(torch.equal(values[n], t.to(values[n].dtype)) for n, t in ema.average.items())

    with torch.no_grad(), slow.swap(copy=outer_copy):
        assert holds(slow)
        with fast.swap(copy=inner_copy):
            assert holds(fast)
        assert holds(slow)
    same(live_values(model), live)
    same(_state_bits(fast), fast_bits)
    same(_state_bits(slow), slow_bits)


def test_a_second_ema_updated_inside_a_no_copy_swap_averages_what_the_model_holds() -> None:
    """``b.update()`` inside ``a.swap(copy=False)`` (an EMA of the EMA): ``b`` blends the
    values the model holds there, ``a``'s averages, writes none of ``a``'s shadows, and after
    the block follows the model's live storage again."""
    model = net()
    outer, inner = EMA(model, decay=0.5), EMA(model, decay=0.0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    outer.update()
    live, outer_bits = live_values(model), _state_bits(outer)
    with outer.swap(copy=False):
        inner.update()  # decay 0: a copy of what the model holds
        assert torch.equal(inner.average["0.weight"], outer.average["0.weight"])
    same(_state_bits(outer), outer_bits)
    same(live_values(model), live)
    inner.update()
    assert torch.equal(inner.average["0.weight"], live["0.weight"])


# ---- torch.compile ----


def _twin_outputs(model: nn.Module, ema: EMA, inputs: torch.Tensor) -> torch.Tensor:
    """What ``model`` (plain, eval mode) outputs with the averages: a copy given them."""
    twin = net()
    twin.eval()
    ema.copy_to(twin)
    with torch.no_grad():
        return twin(inputs)


@pytest.mark.parametrize("compile_first", [True, False])
@pytest.mark.parametrize("copy", [True, False])
def test_a_compiled_model_evaluates_the_averages_in_swap(compile_first: bool, copy: bool) -> None:
    """``torch.compile(model)`` made before the EMA (tracked through the compiled module or
    its ``_orig_mod``) or after it: training through the compiled module moves the EMA, and
    the compiled forward inside ``swap()`` gives the averages' outputs, then the live ones."""
    model = net()
    if compile_first:
        compiled = torch.compile(model, backend="eager")
        ema = EMA(compiled, decay=0.5)
        other = EMA(compiled._orig_mod, decay=0.5)
    else:
        ema = EMA(model, decay=0.5)
        compiled = torch.compile(model, backend="eager")
        other = EMA(compiled, decay=0.5)
    assert ema.names == other.names == EMA(net()).names
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for batch in _data(3):
        opt.zero_grad()
        _loss(compiled, batch).backward()
        opt.step()
        ema.update()
        other.update()
    same(_state_bits(ema), _state_bits(other))
    model.eval()
    inputs = _data(1, seed=9)[0][0]
    with torch.no_grad():
        live = model(inputs)
        assert torch.equal(compiled(inputs), live)
        with ema.swap(copy=copy):
            inside = compiled(inputs)
        after = compiled(inputs)
    assert torch.equal(inside, _twin_outputs(model, ema, inputs))
    assert not torch.equal(inside, live)
    assert torch.equal(after, live)


# ---- models converted or re-laid out after the EMA was built ----


def test_a_bf16_round_trip_of_the_model_keeps_the_float32_shadow_bits() -> None:
    """``model.bfloat16()`` then ``model.float()`` after the EMA was built, with updates of
    decay 1 in between: the float32 shadows keep every bit (never rounded through bf16);
    ``swap()`` into the bf16 model gives the averages rounded to bf16, then the live bits."""
    model = net()
    ema = EMA(model, decay=1.0, buffers="skip")
    before = copies(ema)
    model.bfloat16()
    ema.update()
    same(copies(ema), before)
    live = live_values(model)
    with ema.swap():
        assert model[0].weight.dtype == torch.bfloat16
        assert torch.equal(model[0].weight, before["0.weight"].to(torch.bfloat16))
    same(live_values(model), live)
    model.float()
    ema.update()
    same(copies(ema), before)


def test_a_model_made_float64_after_the_ema_gets_the_exact_widened_shadow() -> None:
    """``model.to(torch.float64)`` after the EMA was built: the next update rebinds every
    float tensor and the shadows become float64 holding the float32 averages exactly, then
    blend in float64."""
    model = net()
    ema = EMA(model, decay=0.5)
    before = copies(ema)
    model.to(torch.float64)
    with torch.no_grad():
        model[0].weight.fill_(1.0 / 3.0)
    ema.update()
    widened = before["0.weight"].to(torch.float64)
    assert ema.average["0.weight"].dtype == torch.float64
    expected = widened.lerp(torch.full_like(widened, 1.0 / 3.0), 0.5)
    assert torch.equal(ema.average["0.weight"], expected)


def test_a_parameter_replaced_by_a_column_major_copy_is_followed_and_keeps_its_strides() -> None:
    """``layer.weight = nn.Parameter(w.t().contiguous().t())`` (same shape, transposed
    layout) after the EMA was built: it is followed by name and blended by value, and
    ``swap()`` writes into it with its own strides and data pointer, then the live bits."""
    model = net()
    ema = EMA(model, decay=0.5)
    old = ema.average["0.weight"].clone()
    weight = (model[0].weight.detach() + 1.0).t().contiguous().t()
    model[0].weight = nn.Parameter(weight)
    assert not model[0].weight.is_contiguous()
    ema.update()
    assert torch.equal(ema.average["0.weight"], old.lerp(weight, 0.5))
    live, stride, pointer = weight.clone(), weight.stride(), model[0].weight.data_ptr()
    with ema.swap():
        assert model[0].weight.stride() == stride
        assert model[0].weight.data_ptr() == pointer
        assert torch.equal(model[0].weight, ema.average["0.weight"])
    assert torch.equal(model[0].weight, live)


# ---- repeatable runs ----


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


def _full_run() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A run with every EMA entry point: updates, a swap, ``average``, ``copy_to``, a
    ``state_dict`` round trip and a bf16 model (the host engine's route)."""
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    ema = EMA(model, schedule=schedules.warmup(0.99))
    for batch in _data(2):
        _train_step(model, opt, batch)
        ema.update()
    with torch.no_grad(), ema.swap():
        model(_data(1)[0][0])
    resumed = EMA(model, schedule=schedules.warmup(0.99))
    resumed.load_state_dict(ema.state_dict())
    model.bfloat16()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for batch in _data(1, seed=5):
        _train_step(model, opt, (batch[0].bfloat16(), batch[1].bfloat16()))
        resumed.update()
    target = net()
    resumed.copy_to(target)
    return _state_bits(resumed), live_values(target)


def test_a_run_repeats_bit_for_bit_under_deterministic_algorithms() -> None:
    """Two runs from the same seed, the second under ``torch.use_deterministic_algorithms(True)``
    (which no EMA entry point trips), give the same EMA bits and the same copied averages."""
    first = _full_run()
    with _deterministic():
        second = _full_run()
    same(first[0], second[0])
    same(first[1], second[1])
