"""CUDA checks of the torch backend (``make test-gpu``); each skips with a reason without CUDA.

Not run in this repository's CPU CI: the CUDA graph capture, the pinned host shadow, the Triton
mixed-precision kernel and the allocation-free steady state are only verified on a GPU machine.
"""

from __future__ import annotations

import importlib.util
import warnings

import pytest

from ema_core import Config, schedules

torch = pytest.importorskip("torch")

from ema_core.backends.torch import _cuda  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _net(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.BatchNorm1d(256), torch.nn.Linear(256, 8)
    )
    return model.to(device="cuda", dtype=dtype)


def _perturb(model, k):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * k)


def test_update_under_sync_debug_mode_error():
    model = _net(torch.bfloat16)
    ema = EMA(model, schedule=schedules.warmup(0.999))
    step = torch.zeros((), dtype=torch.int64, device="cuda")
    ema.update(step + 1)  # warm-up: scratch buffers and kernels
    try:
        # inside the try: torch 2.11 warns that the mode is a prototype *after* setting it, and
        # pytest's filterwarnings=error raises that warning; the mode must still be reset, or
        # every later test in the process fails on its first synchronizing call
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Synchronization debug mode", UserWarning)
            torch.cuda.set_sync_debug_mode("error")
        for _ in range(3):
            step += 1
            ema.update(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_float32_models_host_decay_update_never_syncs():
    """Route "triton-same" (float32 params, an int step): its launch kept after the first
    update, the later ones make no host sync."""
    model = _net(torch.float32)
    ema = EMA(model, schedule=schedules.warmup(0.999))
    ema.update(1)  # warm-up: the kernel compiled, the launch's table made
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Synchronization debug mode", UserWarning)
            torch.cuda.set_sync_debug_mode("error")
        for t in (2, 3, 4):
            ema.update(t)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_capture_of_update_with_a_device_step():
    model, twin = _net(), _net()
    config = Config(schedule=schedules.warmup(0.99), init="copy")
    captured, eager = EMA(model, config=config), EMA(twin, config=config)
    step = torch.zeros((), dtype=torch.int64, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up off the default stream, as capture requires
        step += 1
        captured.update(step)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step += 1
        captured.update(step)
    eager.update(1)
    for k in range(2, 6):
        _perturb(model, k)
        _perturb(twin, k)
        graph.replay()
        eager.update(k)
    torch.cuda.synchronize()
    for name, avg in eager.average.items():
        assert torch.equal(captured.average[name], avg), name


def test_pinned_host_shadow_matches_a_device_shadow():
    model, twin = _net(torch.bfloat16), _net(torch.bfloat16)
    host, device = EMA(model, decay=0.9, device="cpu"), EMA(twin, decay=0.9)
    assert all(t.is_pinned() for t in host.average.values())
    for k in range(1, 4):
        _perturb(model, k)
        _perturb(twin, k)
        host.update()
        device.update()
    for name, avg in device.average.items():
        assert torch.equal(host.average[name], avg.cpu()), name
    with host.swap():
        assert model[0].weight.is_cuda


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
@pytest.mark.parametrize("weight", [1e-4, 0.7, "tensor"])
def test_triton_mixed_kernel_matches_the_two_pass_reference(weight):
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(3,), (1000, 257), (), (5, 4)]
    shadows = [torch.randn(s, device="cuda", generator=gen) for s in shapes]
    params = [torch.randn(s, device="cuda", generator=gen).bfloat16() for s in shapes]
    w = torch.tensor(0.25, device="cuda") if weight == "tensor" else weight
    want = [s.clone().lerp_(p.float(), w) for s, p in zip(shadows, params, strict=True)]
    if isinstance(w, float):
        _cuda.triton_lerp_(shadows, params, w)
    else:  # a device decay strictly inside (0, 1): the selects keep the blend
        _cuda.triton_lerp_ends_(shadows, params, w, torch.tensor(0.75, device="cuda"))
    for got, ref, s in zip(shadows, want, shadows, strict=True):
        scale = torch.maximum(ref.abs(), s.abs()).clamp_min(1.0)
        assert bool(((got - ref).abs() <= torch.finfo(torch.float32).eps * scale).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_steady_state_update_allocates_nothing(dtype):
    model = _net(dtype)
    ema = EMA(model, decay=0.999)
    ema.update()  # the first update may create the scratch block
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ema.update()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() == base
