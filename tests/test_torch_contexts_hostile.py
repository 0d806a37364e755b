"""The torch ``EMA`` and the stateless ``ema_update`` in the execution contexts users run them
in: a ``torch.compile``d step, grad modes around a forward and backward inside ``swap()``,
anomaly detection, deterministic algorithms, a global default dtype or device, one intra-op
thread, ``torch.func`` transforms reading the averages, and TorchScript modules."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import pytest

import ema_core
from ema_core import Config, _settings, schedules

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from ema_core.torch import EMA  # noqa: E402
from tests.torch_models import copies, live_values, nudge, same  # noqa: E402


def _mlp(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Two linear layers around a tanh: the second layer's weight is saved for backward."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)


def _moved_ema(model: nn.Module, **options: object) -> EMA:
    """An EMA of ``model`` after one update on params moved by 1, so averages differ from them."""
    ema = EMA(model, decay=0.5, **options)  # type: ignore[arg-type]
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    ema.update()
    return ema


def _loss_at(model: nn.Module, values: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.func.functional_call(model, values, (x,)).pow(2).sum()


def _grads_at(
    model: nn.Module, values: dict[str, torch.Tensor], x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The gradient of ``_loss_at`` with respect to ``values`` (the reference)."""
    detached = {n: v.detach().clone() for n, v in values.items()}
    return torch.func.grad(lambda v: _loss_at(model, v, x))(detached)


def _assert_plain_shadows(ema: EMA) -> None:
    for name, shadow in ema.state_dict()["shadow"].items():
        assert not shadow.requires_grad and shadow.grad_fn is None, name
        assert not shadow.is_inference(), name


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---- torch.compile ----


def _compiled_run(compiled: bool) -> tuple[dict[str, torch.Tensor], list[int], int]:
    """Six steps of a function that moves a weight and calls ``ema.update(t)``, compiled (with
    dynamo's counting backend) or not: the averages, the frame count after each step, the step."""
    from torch._dynamo.testing import CompileCounter

    model = nn.Linear(3, 2)
    nn.init.constant_(model.weight, 0.5)
    nn.init.zeros_(model.bias)
    ema = EMA(model, schedule=schedules.warmup(0.9))

    def step(x: torch.Tensor, t: int) -> torch.Tensor:
        with torch.no_grad():
            model.weight.add_(x)
        ema.update(t)
        return model.weight.sum()

    counter = CompileCounter()
    run = torch.compile(step, backend=counter) if compiled else step
    frames = []
    for t in range(1, 7):
        run(torch.full((2, 3), 0.25 * t), t)
        frames.append(counter.frame_count)
    return copies(ema), frames, ema.step


def test_a_compiled_step_calling_update_gives_eager_bits_without_a_compile_per_step() -> None:
    """A ``torch.compile``d function that moves the model and calls ``ema.update(t)`` with a
    changing int step: the update runs eagerly (a graph break, no warning), the averages
    equal an eager run's bit for bit, and the frames compiled stop growing once dynamo has
    seen the step change (no recompile on every step)."""
    eager, _, eager_step = _compiled_run(False)
    compiled, frames, step = _compiled_run(True)
    same(eager, compiled)
    assert step == eager_step == 6
    assert frames[-1] == frames[2], frames  # nothing compiled after the third step


def test_a_compiled_evaluation_inside_swap_reads_the_averages_then_the_live_weights() -> None:
    """``with torch.no_grad(), ema.swap(): return model(x)`` as a compiled function: the output
    is the averages' forward, and after the call the model holds its live bits again."""
    model = nn.Linear(3, 2)
    ema = _moved_ema(model)
    live = live_values(model)
    inputs = torch.ones(2, 3)

    @torch.compile(backend="eager")
    def evaluate(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), ema.swap():
            return model(x)

    out = evaluate(inputs)
    expected = nn.functional.linear(inputs, ema.average["weight"], ema.average["bias"])
    assert torch.equal(out, expected)
    same(live_values(model), live)


# ---- a forward and backward inside swap() without no_grad ----


@pytest.mark.parametrize("copy", [True, False])
def test_backward_inside_swap_gives_the_averages_gradient_and_leaves_both_sides(
    copy: bool,
) -> None:
    """``swap()`` with grad enabled and a forward plus backward inside (no ``no_grad``): the
    ``.grad`` of each parameter is the gradient at the averages, the EMA keeps its bits and
    plain shadows, and on exit the model holds its live bits as leaf parameters that still
    require grad."""
    model = _mlp()
    ema = _moved_ema(model)
    averages, live = copies(ema), live_values(model)
    inputs = torch.ones(2, 3)
    with ema.swap(copy=copy):
        model(inputs).pow(2).sum().backward()
    expected = _grads_at(model, averages, inputs)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.equal(param.grad, expected[name]), name
        assert param.is_leaf and param.requires_grad, name
    same(copies(ema), averages)
    same(live_values(model), live)
    _assert_plain_shadows(ema)


def test_a_graph_built_in_a_copying_swap_refuses_backward_after_it() -> None:
    """A forward inside ``swap()`` (the copying route) and its backward after the block: the
    exit's in-place restore bumps the weights' version counters, so autograd refuses the graph
    (torch's "modified by an inplace operation") instead of mixing live weights into the
    averages' gradient."""
    model = _mlp()
    ema = _moved_ema(model)
    with ema.swap():
        loss = model(torch.ones(2, 3)).pow(2).sum()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_graph_built_in_a_zero_copy_swap_backpropagates_the_averages_after_it() -> None:
    """A forward inside ``swap(copy=False)`` and its backward after the block: the graph saved
    the shadows it read, so the gradient is the one at the averages, and neither the EMA nor
    the live weights change."""
    model = _mlp()
    ema = _moved_ema(model)
    averages, live = copies(ema), live_values(model)
    inputs = torch.ones(2, 3)
    with ema.swap(copy=False):
        loss = model(inputs).pow(2).sum()
    loss.backward()
    expected = _grads_at(model, averages, inputs)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.equal(param.grad, expected[name]), name
    same(copies(ema), averages)
    same(live_values(model), live)


def test_a_graph_built_before_a_copying_swap_refuses_backward_inside_it() -> None:
    """A forward on the live weights and its backward inside ``swap()``: autograd refuses the
    graph (the weights were overwritten in place), never a gradient at the averages."""
    model = _mlp()
    ema = _moved_ema(model)
    loss = model(torch.ones(2, 3)).pow(2).sum()
    with ema.swap(), pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_backward_inside_swap_under_anomaly_detection_is_clean() -> None:
    """``torch.autograd.set_detect_anomaly(True)`` around a bf16 model's swap with a forward and
    backward inside, then an update: no anomaly is reported, gradients are finite and the live
    bits come back."""
    model = _mlp(torch.bfloat16)
    ema = _moved_ema(model)
    live = live_values(model)
    with torch.autograd.set_detect_anomaly(True):
        with ema.swap():
            model(torch.ones(2, 3, dtype=torch.bfloat16)).pow(2).sum().backward()
        same(live_values(model), live)
        nudge(model, 1)
        ema.update()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert ema.average["0.weight"].dtype == torch.float32
    _assert_plain_shadows(ema)


# ---- global settings: default dtype and device, threads, deterministic algorithms ----


def _float32_run(around: Callable[[], contextlib.AbstractContextManager[object]]) -> EMA:
    """An EMA built and updated (warmup schedule, 3 steps) inside ``around()``."""
    model = _mlp()
    with around():
        ema = EMA(model, schedule=schedules.warmup(0.9))
        for k in range(1, 4):
            nudge(model, k)
            ema.update()
    return ema


@pytest.mark.parametrize(
    "around",
    [
        lambda: _default_dtype(torch.float64),
        lambda: torch.device("cpu"),
        lambda: torch.device("meta"),
        lambda: _threads(1),
    ],
    ids=["default-float64", "default-cpu", "default-meta", "one-thread"],
)
def test_global_settings_while_building_and_updating_change_no_bit(
    around: Callable[[], contextlib.AbstractContextManager[object]],
) -> None:
    """A float32 CPU model's EMA built and updated under a default dtype of float64, a default
    device of ``cpu`` or ``meta`` or one intra-op thread: float32 CPU shadows with the bits of
    a plain run, and the same step."""
    plain = _float32_run(contextlib.nullcontext)
    moded = _float32_run(around)
    same(copies(plain), copies(moded))
    assert moded.step == plain.step == 3
    assert all(t.device.type == "cpu" for t in moded.average.values())
    _assert_plain_shadows(moded)


@pytest.mark.parametrize("around", [lambda: torch.device("meta"), lambda: _threads(1)])
def test_a_bf16_model_s_host_engine_ignores_global_settings(
    around: Callable[[], contextlib.AbstractContextManager[object]],
) -> None:
    """A bf16 model (float32 shadows, the host engine's one-pass route) updated under a meta
    default device or one intra-op thread: the bits of a plain run."""

    def run(inside: Callable[[], contextlib.AbstractContextManager[object]]) -> EMA:
        model = _mlp(torch.bfloat16)
        ema = EMA(model, decay=0.75)
        for k in range(1, 4):
            nudge(model, k)
            with inside():
                ema.update()
        return ema

    same(copies(run(contextlib.nullcontext)), copies(run(around)))


def test_stateless_functions_under_a_float64_default_keep_the_leaves_dtypes() -> None:
    """``init`` / ``update`` / ``average`` (``init="zeros"``) and ``ema_update`` on float32 CPU
    tensors made on the CPU, called under a default dtype of float64 and a meta default
    device: float32 CPU shadows and averages with the bits of the same calls under the
    defaults."""

    def run() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        config = Config(schedule=schedules.warmup(0.9), init="zeros")
        params = {"w": torch.linspace(-1.0, 1.0, 6, dtype=torch.float32, device="cpu")}
        state = ema_core.init(params, config)
        for k in range(1, 4):
            params = {"w": params["w"] + 0.25 * k}
            state = ema_core.update(state, params, config)
        shadow = {"w": torch.zeros(6, dtype=torch.float32, device="cpu")}
        shadow = ema_core.ema_update(shadow, params, 3, decay=0.5)
        return ema_core.average(state, config), shadow

    plain = run()
    with _default_dtype(torch.float64), torch.device("meta"):
        moded = run()
    for want, got in zip(plain, moded, strict=True):
        assert got["w"].dtype == torch.float32 and got["w"].device.type == "cpu"
        assert torch.equal(want["w"], got["w"])


def test_a_state_dict_taken_under_a_meta_default_device_loads_back() -> None:
    """``ema.state_dict()`` taken inside ``with torch.device("meta"):`` (building a model
    skeleton beside it): the step and weight are host tensors with their values, so the state
    dict loads into a fresh EMA with the same step."""
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    ema.update()
    ema.update()
    with torch.device("meta"):
        state = ema.state_dict()
    assert state["step"].device.type == "cpu" and state["weight"].device.type == "cpu"
    resumed = EMA(model, decay=0.5)
    resumed.load_state_dict(state)
    assert resumed.step == 2


def _in_a_new_thread(run: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``run()`` on a thread of its own (fresh thread-local scratch), its result returned."""
    out: list[torch.Tensor] = []
    worker = threading.Thread(target=lambda: out.append(run()))
    worker.start()
    worker.join()
    assert len(out) == 1, "the update raised on its thread"
    return out[0]


@pytest.mark.parametrize("entry", ["ema_update", "EMA"])
def test_a_large_bf16_blend_first_run_under_a_meta_default_device_still_moves_later(
    entry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without numba (``EMA_CORE_NUMBA=0``, or numba not installed), a float32 shadow over bf16
    params of at least 2**18 elements takes torch's ops in blocks through a scratch kept per
    thread. A thread whose first such update runs inside ``with torch.device("meta"):`` (the
    leaves are CPU tensors): that update and the next one outside it give the bits of two
    plain updates."""
    monkeypatch.setenv("EMA_CORE_NUMBA", "0")
    monkeypatch.setattr(_settings, "_kept", [])  # read again at the next use
    size = 1 << 18
    params = {"w": torch.linspace(-1.0, 1.0, size).to(torch.bfloat16)}

    def run(first: Callable[[], contextlib.AbstractContextManager[object]]) -> torch.Tensor:
        shadow = {"w": torch.zeros(size)}
        live = {"w": torch.zeros(size, dtype=torch.bfloat16)}
        ema = EMA(live, decay=0.75) if entry == "EMA" else None  # float32 shadow of zeros
        live["w"].copy_(params["w"])
        for t, around in ((1, first), (2, contextlib.nullcontext)):
            with around():
                if ema is None:
                    ema_core.ema_update(shadow, params, t, decay=0.75)
                else:
                    ema.update()
        return (ema.average["w"] if ema is not None else shadow["w"]).clone()

    plain = _in_a_new_thread(lambda: run(contextlib.nullcontext))
    moded = _in_a_new_thread(lambda: run(lambda: torch.device("meta")))
    assert not torch.equal(plain, torch.zeros(size))
    assert torch.equal(moded, plain)


def test_the_stateless_bf16_blend_under_deterministic_algorithms_repeats() -> None:
    """``ema_update`` of float32 shadows over bf16 params (the host engine) and over float32
    params (torch's fused ``lerp_``) under ``torch.use_deterministic_algorithms(True)``: no
    error, and the bits of the same calls without it."""

    def run() -> dict[str, torch.Tensor]:
        params = {
            "half": torch.linspace(-2.0, 2.0, 64).to(torch.bfloat16),
            "full": torch.linspace(-2.0, 2.0, 64),
        }
        shadow = {"half": torch.zeros(64), "full": torch.zeros(64)}
        for t in range(1, 4):
            shadow = ema_core.ema_update(shadow, params, t, schedule=schedules.warmup(0.9))
        return shadow

    plain = run()
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        moded = run()
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)
    same(plain, moded)


@pytest.mark.parametrize("tensor_step", [True, False], ids=["cpu-tensor-step", "int-step"])
def test_updates_inside_then_outside_inference_mode_keep_a_resumable_state(
    tensor_step: bool,
) -> None:
    """An ``init="zeros"`` EMA updated first inside ``torch.inference_mode()`` (with a CPU
    tensor step or an int), then outside it: the averages equal those of plain updates, the
    state dict holds no inference tensor, and it loads (inside inference mode) into an EMA
    that updates and swaps outside it."""
    config = Config(schedule=schedules.warmup(0.9), init="zeros")

    def run(first_inside: bool) -> EMA:
        model = _mlp()
        ema = EMA(model, config=config)
        for k in range(1, 4):
            nudge(model, k)
            step = torch.tensor(k) if tensor_step else k
            with torch.inference_mode(first_inside and k == 1):
                ema.update(step)
        return ema

    plain, moded = run(False), run(True)
    same(copies(plain), copies(moded))
    state = moded.state_dict()
    assert not any(t.is_inference() for t in state["shadow"].values())
    assert not state["step"].is_inference() and not state["weight"].is_inference()
    resumed = EMA(_mlp(), config=config)
    with torch.inference_mode():
        resumed.load_state_dict(state)
    resumed.update()
    assert resumed.step == 4
    _assert_plain_shadows(resumed)
    with torch.no_grad(), resumed.swap():
        pass


# ---- torch.func transforms reading the averages ----


def test_vmap_and_grad_over_a_function_reading_the_averages() -> None:
    """``torch.func.vmap`` and ``torch.func.grad`` around ``functional_call(model,
    ema.average, x)`` (reading, not updating): per-sample outputs equal the batched forward
    at the averages, the gradient with respect to the averages matches a detached copy's, and
    the EMA keeps its bits and plain shadows."""
    model = _mlp()
    ema = _moved_ema(model)
    averages = copies(ema)
    inputs = torch.linspace(-1.0, 1.0, 15).reshape(5, 3)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, ema.average, (x,))

    mapped = torch.func.vmap(forward)(inputs)
    with torch.no_grad():
        batched = torch.func.functional_call(model, averages, (inputs,))
    torch.testing.assert_close(mapped, batched, rtol=0, atol=1e-6)
    grads = torch.func.grad(lambda v: _loss_at(model, v, inputs))(ema.average)
    expected = _grads_at(model, averages, inputs)
    same(grads, expected)
    same(copies(ema), averages)
    _assert_plain_shadows(ema)


# ---- TorchScript ----


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("wrap", ["trace", "script"])
def test_swap_reaches_a_torchscript_module_sharing_the_weights(wrap: str) -> None:
    """``torch.jit.trace(model)`` / ``torch.jit.script(model)`` made before the EMA is swapped
    in: the TorchScript module shares the parameters, so inside ``swap()`` it outputs the
    averages' forward and after it the live forward."""
    model = nn.Linear(3, 2)
    ema = _moved_ema(model)
    inputs = torch.ones(1, 3)
    scripted = torch.jit.trace(model, inputs) if wrap == "trace" else torch.jit.script(model)
    with torch.no_grad():
        live = model(inputs)
        with ema.swap():
            inside = scripted(inputs)
        after = scripted(inputs)
    expected = nn.functional.linear(inputs, ema.average["weight"], ema.average["bias"])
    assert torch.equal(inside, expected)
    assert torch.equal(after, live)


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("wrap", ["trace", "script"])
def test_an_ema_of_a_torchscript_module_tracks_and_swaps_its_weights(wrap: str) -> None:
    """An EMA built on the TorchScript module itself: the names are the module's, an update
    follows the weights moved through the original module, and ``swap()`` into the scripted
    module gives the averages' forward."""
    model = nn.Linear(3, 2)
    inputs = torch.ones(1, 3)
    scripted = torch.jit.trace(model, inputs) if wrap == "trace" else torch.jit.script(model)
    ema = _moved_ema(scripted)  # moves scripted's params, which are model's
    assert ema.names == ("weight", "bias")
    assert torch.equal(ema.average["weight"], model.weight.detach() - 0.5)
    with torch.no_grad(), ema.swap():
        inside = scripted(inputs)
    expected = nn.functional.linear(inputs, ema.average["weight"], ema.average["bias"])
    assert torch.equal(inside, expected)
