"""The CuPy backend against the generic backend on a CUDA device: fused per-array kernel,
multi-tensor kernel, integer copies, device decays, no recompilation, CUDA graph capture.

Every test needs a GPU: the module is marked ``gpu`` and skips with a reason without CuPy or
without a CUDA device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu
cp = pytest.importorskip("cupy", reason="CuPy is not installed")


def _device_count() -> int:
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception:  # CUDA driver or runtime missing
        return 0


if _device_count() == 0:
    pytest.skip("no CUDA device visible to CuPy", allow_module_level=True)

import array_api_compat.cupy as xp  # noqa: E402

import ema_core  # noqa: E402
from ema_core.backends import cupy as fast  # noqa: E402
from ema_core.backends import generic, get_backend  # noqa: E402


def _has_bf16() -> bool:
    try:
        cp.zeros(1, dtype="bfloat16")
    except Exception:
        return False
    return True


PAIRS = [
    ("float32", "float32"),
    ("float32", "float16"),
    ("float64", "float32"),
    ("float16", "float16"),
    ("float16", "float32"),
]
if _has_bf16():
    PAIRS += [("float32", "bfloat16"), ("bfloat16", "bfloat16")]
DECAYS = [0.0, 1e-6, 0.3, 0.5, 0.9, 0.9999, 1.0]


def same_bits(a, b) -> bool:
    a, b = cp.ascontiguousarray(a), cp.ascontiguousarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool((a.reshape(-1).view(cp.uint8) == b.reshape(-1).view(cp.uint8)).all())


def random(shape, dtype, seed):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 3
    return cp.asarray(x).astype(dtype)


def run(module, shadows, params, decay, *, writes=None, kinds=None, on_device=False):
    kinds = kinds or ["float"] * len(shadows)
    writes = writes or [True] * len(shadows)
    if on_device:
        d = cp.asarray(decay, dtype=cp.float64)
        r = 1.0 - d
    else:
        d, r = decay, 1.0 - decay
    copies = [s.copy() for s in shadows]
    out = module.update_leaves(xp, copies, params, kinds, d, r, non_float="copy", writes=writes)
    return out, copies


def test_registry_picks_the_cupy_backend():
    assert get_backend(xp) is fast


@pytest.mark.parametrize(("sdtype", "pdtype"), PAIRS)
@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("on_device", [False, True], ids=["host_decay", "device_decay"])
def test_fused_kernel_equals_generic(sdtype, pdtype, decay, on_device):
    shape = (fast.MULTI_MAX + 5, 3)  # above MULTI_MAX: the per-array kernel
    s, p = random(shape, sdtype, 1), random(shape, pdtype, 2)
    got, mine = run(fast, [s], [p], decay, on_device=on_device)
    ref, _ = run(generic, [s], [p], decay, on_device=on_device)
    assert same_bits(got[0], ref[0])
    assert got[0] is mine[0]


def test_fused_kernel_on_strided_views_writes_only_the_view():
    parent = random((600, 400), "float32", 3)
    before = parent.copy()
    view = parent[::2, 1::3]
    p = random(view.shape, "float16", 4)
    ref, _ = run(generic, [view], [p], 0.9)
    out = fast.update_leaves(xp, [view], [p], ["float"], 0.9, 0.1, non_float="copy", writes=[True])
    assert out[0] is view and same_bits(view, ref[0])
    mask = cp.ones(parent.shape, bool)
    mask[::2, 1::3] = False
    assert same_bits(parent[mask], before[mask])


@pytest.mark.parametrize(("sdtype", "pdtype"), [p for p in PAIRS if p[0] in ("float32", "float64")])
@pytest.mark.parametrize("on_device", [False, True], ids=["host_decay", "device_decay"])
def test_multi_tensor_equals_per_array_and_generic(monkeypatch, sdtype, pdtype, on_device):
    rng = np.random.default_rng(5)
    sizes = [int(n) for n in rng.integers(0, 3 * fast.CHUNK, size=700)] + [fast.MULTI_MAX]
    shadows = [random((n,), sdtype, i) for i, n in enumerate(sizes)]
    params = [random((n,), pdtype, 10_000 + i) for i, n in enumerate(sizes)]
    for decay in (0.0, 0.25, 0.999):
        multi, mine = run(fast, shadows, params, decay, on_device=on_device)
        ref, _ = run(generic, shadows, params, decay, on_device=on_device)
        with monkeypatch.context() as m:
            m.setattr(fast, "MULTI_MAX", -1)  # every leaf through the per-array kernel
            single, _ = run(fast, shadows, params, decay, on_device=on_device)
        for a, b, c, s in zip(multi, single, ref, mine, strict=True):
            assert a is s and same_bits(a, b) and same_bits(a, c)


def test_multi_tensor_new_arrays_when_not_writing():
    shadows = [random((n,), "float32", n) for n in (3, 5000, 64)]
    params = [random((n,), "float16", 99 + n) for n in (3, 5000, 64)]
    before = [s.copy() for s in shadows]
    out = fast.update_leaves(
        xp, shadows, params, ["float"] * 3, 0.9, 0.1, non_float="copy", writes=[False] * 3
    )
    ref, _ = run(generic, before, params, 0.9, writes=[False] * 3)
    for s, b, o, r in zip(shadows, before, out, ref, strict=True):
        assert same_bits(s, b) and o is not s and same_bits(o, r)


@pytest.mark.parametrize("on_device", [False, True], ids=["host_decay", "device_decay"])
@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_integer_leaves_are_copied(dtype, on_device):
    s, p = cp.zeros(10, dtype), cp.ones(10, dtype)
    out, mine = run(fast, [s], [p], 0.9, kinds=["exact"], on_device=on_device)
    assert out[0] is mine[0] and same_bits(out[0], p)
    out, _ = run(fast, [s], [p], 1.0, kinds=["exact"], on_device=on_device)
    assert not bool(out[0].any())


def test_public_api_on_a_dict_of_cupy_arrays():
    params = {"w": random((300, 70), "float16", 6), "b": random((7,), "float32", 7)}
    params["n"] = cp.asarray(3)
    shadow = {k: (v.astype(cp.float32) if k == "w" else v.copy()) for k, v in params.items()}
    kept = shadow["w"]
    new = ema_core.ema_update(shadow, params, 1, decay=0.5)
    assert new["w"] is kept
    cfg = ema_core.Config(schedule=0.5, init="zeros")
    state = ema_core.update(ema_core.init(params, cfg), params, cfg)
    avg = ema_core.average(state, cfg)
    assert same_bits(avg["b"], params["b"]) and int(avg["n"]) == 3


def test_new_steps_compile_no_new_kernels():
    shadows = [random((fast.MULTI_MAX * 2,), "float32", 8), random((100,), "float32", 9)]
    params = [random((fast.MULTI_MAX * 2,), "float16", 10), random((100,), "float16", 11)]
    schedule = ema_core.schedules.warmup(0.9999)
    ema_core.ema_update(shadows, params, 1, schedule=schedule)  # host decay variant
    ema_core.ema_update(shadows, params, cp.asarray(2), schedule=schedule)  # device decay
    cp.cuda.Device().synchronize()
    cache = Path(cp.cuda.compiler.get_cache_dir())
    files = sorted(cache.rglob("*")) if cache.exists() else []
    builds = fast._multi_kernel.cache_info().misses
    for t in range(3, 30):
        step = t if t % 2 else cp.asarray(t)
        ema_core.ema_update(shadows, params, step, schedule=schedule)
    cp.cuda.Device().synchronize()
    assert (sorted(cache.rglob("*")) if cache.exists() else []) == files
    assert fast._multi_kernel.cache_info().misses == builds


def test_replays_in_a_captured_cuda_graph_with_a_device_decay():
    shadows = [random((fast.MULTI_MAX + 1,), "float32", 12), random((33,), "float32", 13)]
    params = [random((fast.MULTI_MAX + 1,), "float16", 14), random((33,), "float16", 15)]
    decay = cp.asarray(0.5, cp.float64)
    rate = cp.asarray(0.5, cp.float64)
    expected = [s.copy() for s in shadows]
    kinds, writes = ["float", "float"], [True, True]
    fast.update_leaves(xp, expected, params, kinds, decay, rate, non_float="copy", writes=writes)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        fast.update_leaves(xp, shadows, params, kinds, decay, rate, non_float="copy", writes=writes)
        stream.synchronize()  # warm-up: compiles and caches the pointer table
        stream.begin_capture()
        fast.update_leaves(xp, shadows, params, kinds, decay, rate, non_float="copy", writes=writes)
        graph = stream.end_capture()
    assert all(same_bits(s, e) for s, e in zip(shadows, expected, strict=True))
    decay.fill(0.75)
    rate.fill(0.25)
    fast.update_leaves(xp, expected, params, kinds, decay, rate, non_float="copy", writes=writes)
    graph.launch(stream)
    stream.synchronize()
    assert all(same_bits(s, e) for s, e in zip(shadows, expected, strict=True))
