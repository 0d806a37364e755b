"""The CuPy backend against the generic backend.

On a CUDA device (tests marked ``gpu``, skipped with a reason without CuPy or a device): the
fused per-array kernel, the multi-tensor kernel, integer copies, device decays, no
recompilation across steps and replay in a captured CUDA graph. On any machine with g++: the
kernels' CUDA source compiled for the CPU (CUDA intrinsics stubbed with their IEEE meaning)
and run on numpy buffers, so the kernel logic and the pointer table are checked without a GPU.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import array_api_compat.numpy as xp_np
import numpy as np
import pytest

import ema_core
from ema_core.backends import _cupy_kernels as kernels
from ema_core.backends import cupy as fast
from ema_core.backends import generic, get_backend

try:  # an import-time note about the machine's CUDA setup (CUDA_PATH, several CuPy wheels)
    # would be an error under filterwarnings=error and lose every CuPy test at collection; a
    # CuPy that cannot work fails the tests themselves
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import cupy as cp
except ImportError:
    cp = None


def _device_count() -> int:
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception:  # no CuPy, no driver or no runtime
        return 0


gpu = pytest.mark.skipif(
    cp is None or _device_count() == 0,
    reason="CuPy is not installed" if cp is None else "no CUDA device visible to CuPy",
)
if cp is not None:
    import array_api_compat.cupy as xp


def _has_bf16() -> bool:
    if cp is None:
        return False
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


@pytest.mark.gpu
@gpu
def test_registry_picks_the_cupy_backend():
    assert get_backend(xp) is fast


def test_cupy_routes(monkeypatch):
    """The route table of ``cupy.py`` on the CPU: numpy arrays stand in for CuPy ones (the
    choice reads dtypes, sizes and contiguity only; a numpy decay is a host decay here)."""
    monkeypatch.setattr(fast, "MULTI_MAX", 64)
    z = np.zeros
    cases = [
        (("exact", z(3, np.int32), z(3, np.int32), 0.5, "copy"), "copy"),
        (("exact", z(3, np.bool_), z(3, np.bool_), 1.0, "copy"), "copy"),  # at decay 1 too
        (("exact", z(3, np.int64), z(3, np.int64), 0.5, "freeze"), "keep"),
        (("float", z(3, np.float32), z(3, np.float16), 1.0, "copy"), "skip"),
        (("float", z(3, np.complex64), z(3, np.complex64), 0.5, "copy"), "generic"),
        (("float", z(3, np.float16), z(3, np.float64), 0.5, "copy"), "generic"),
        (("float", z(64, np.float32), z(64, np.float16), 0.5, "copy"), "multi"),
        (("float", z(3, np.float64), z(3, np.float32), 0.0, "copy"), "multi"),
        (("float", z(65, np.float32), z(65, np.float32), 0.5, "copy"), "fused"),  # too large
        (("float", z((4, 4), np.float32).T, z((4, 4), np.float16), 0.5, "copy"), "fused"),
        (("float", z(3, np.float16), z(3, np.float32), 0.5, "copy"), "fused"),  # a half shadow
    ]
    for (kind, s, p, decay, non_float), want in cases:
        assert fast.route(kind, s, p, decay, non_float=non_float) == want, (s.dtype, p.dtype)


@pytest.mark.parametrize(("sdtype", "pdtype"), PAIRS)
@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("on_device", [False, True], ids=["host_decay", "device_decay"])
@pytest.mark.gpu
@gpu
def test_fused_kernel_equals_generic(monkeypatch, sdtype, pdtype, decay, on_device):
    monkeypatch.setattr(fast, "MULTI_MAX", -1)  # every leaf through the per-array kernel
    s, p = random((300, 70), sdtype, 1), random((300, 70), pdtype, 2)
    got, mine = run(fast, [s], [p], decay, on_device=on_device)
    ref, _ = run(generic, [s], [p], decay, on_device=on_device)
    assert same_bits(got[0], ref[0])
    assert got[0] is mine[0]


@pytest.mark.parametrize("on_device", [False, True], ids=["host_decay", "device_decay"])
@pytest.mark.gpu
@gpu
def test_generic_route_equals_generic(on_device):
    """The pairs the kernels do not cover (complex, a half shadow over float64 params) go
    through the generic backend, in place."""
    pairs = [(random((5,), "float32", 1) * (1 + 2j), random((5,), "float32", 2) * (3 - 1j))]
    pairs.append((random((5,), "float16", 3), random((5,), "float64", 4)))
    for s, p in pairs:
        assert fast.route("float", s, p, 0.5, non_float="copy") == "generic"
        got, mine = run(fast, [s], [p], 0.5, on_device=on_device)
        ref, _ = run(generic, [s], [p], 0.5, on_device=on_device)
        assert got[0] is mine[0] and same_bits(got[0], ref[0])


#: Signalling NaNs (quiet bit clear, payload set) and -0 as raw bits: a trip through float32
#: would set the quiet bit, so only params taken as they are keep these bits.
_SIGNALLING = {"float16": [0x7C01, 0xFD55, 0x8000, 0x3C00], "bfloat16": [0x7F81, 0xFFA5, 0x8000]}


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("on_device", [False, True], ids=["host_decay", "device_decay"])
@pytest.mark.parametrize("dtype", ["float16", *(["bfloat16"] if _has_bf16() else [])])
def test_fused_decay_zero_takes_same_dtype_params_bit_for_bit(monkeypatch, dtype, on_device):
    """Decay 0 over same-dtype half params returns the params' own bits (``ema_take<S, S>``),
    signalling NaN payloads included; the mutation audit found no CPU test that sees it."""
    monkeypatch.setattr(fast, "MULTI_MAX", -1)  # the fused per-array kernel
    bits = np.array(_SIGNALLING[dtype] * 8, dtype=np.uint16)
    p = cp.asarray(bits).view(dtype)
    s = random(p.shape, dtype, 41)
    got, _ = run(fast, [s], [p], 0.0, on_device=on_device)
    assert same_bits(got[0], p)


@pytest.mark.gpu
@gpu
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
@pytest.mark.gpu
@gpu
def test_multi_tensor_equals_per_array_and_generic(monkeypatch, sdtype, pdtype, on_device):
    rng = np.random.default_rng(5)
    sizes = [int(n) for n in rng.integers(0, 3 * kernels.CHUNK, size=700)] + [fast.MULTI_MAX]
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


@pytest.mark.gpu
@gpu
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
@pytest.mark.gpu
@gpu
def test_integer_leaves_are_copied(dtype, on_device):
    s, p = cp.zeros(10, dtype), cp.ones(10, dtype)
    out, mine = run(fast, [s], [p], 0.9, kinds=["exact"], on_device=on_device)
    assert out[0] is mine[0] and same_bits(out[0], p)
    out, _ = run(fast, [s], [p], 1.0, kinds=["exact"], on_device=on_device)
    assert same_bits(out[0], p)  # decay 1 skips the float leaves; integers are still copied
    kept = fast.update_leaves(xp, [s], [p], ["exact"], 0.9, 0.1, non_float="freeze", writes=[True])
    assert kept[0] is s and same_bits(s, cp.zeros(10, dtype))  # "keep": the shadow as it is


@pytest.mark.gpu
@gpu
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


def _kernel_cache_dir() -> Path:
    """CuPy's on-disk kernel cache: ``compiler.get_cache_dir()`` where CuPy has it (CuPy 14.2
    does not), else the folder its documentation names (``CUPY_CACHE_DIR``, by default
    ``~/.cupy/kernel_cache``)."""
    getter = getattr(cp.cuda.compiler, "get_cache_dir", None)
    if getter is not None:
        return Path(getter())
    return Path(os.environ.get("CUPY_CACHE_DIR", Path.home() / ".cupy" / "kernel_cache"))


@pytest.mark.gpu
@gpu
@pytest.mark.skipif(not _has_bf16(), reason="this CuPy has no bfloat16")
@pytest.mark.parametrize("sdtype", ["float32", "bfloat16"])
def test_public_api_averages_bfloat16_params(sdtype):
    """``ema_update`` takes CuPy bfloat16 params (CuPy 14's ``isdtype`` does not call bfloat16
    real floating; the first H200 run refused them) and averages them like the same values
    as float32."""
    shadow = {"w": random((300, 70), sdtype, 21), "b": random((5,), sdtype, 22)}
    params = {"w": random((300, 70), "bfloat16", 23), "b": random((5,), "bfloat16", 24)}
    wide = {k: v.astype("float32") for k, v in params.items()}
    twin = {k: v.copy() for k, v in shadow.items()}
    before = {k: v.copy() for k, v in shadow.items()}
    got = ema_core.ema_update(shadow, params, 1, decay=0.75)
    want = ema_core.ema_update(twin, wide, 1, decay=0.75)
    for k in shadow:
        assert got[k].dtype == cp.dtype(sdtype)
        assert same_bits(got[k], want[k]), k
        assert not same_bits(got[k], before[k]), k  # averaged, not copied nor kept


@pytest.mark.gpu
@gpu
def test_new_steps_compile_no_new_kernels():
    shadows = [random((fast.MULTI_MAX * 2,), "float32", 8), random((100,), "float32", 9)]
    params = [random((fast.MULTI_MAX * 2,), "float16", 10), random((100,), "float16", 11)]
    schedule = ema_core.schedules.warmup(0.9999)
    ema_core.ema_update(shadows, params, 1, schedule=schedule)  # host decay variant
    ema_core.ema_update(shadows, params, cp.asarray(2), schedule=schedule)  # device decay
    cp.cuda.Device().synchronize()
    cache = _kernel_cache_dir()
    files = sorted(cache.rglob("*")) if cache.exists() else []
    builds = kernels._multi_kernel.cache_info().misses
    for t in range(3, 30):
        step = t if t % 2 else cp.asarray(t)
        ema_core.ema_update(shadows, params, step, schedule=schedule)
    cp.cuda.Device().synchronize()
    assert (sorted(cache.rglob("*")) if cache.exists() else []) == files
    assert kernels._multi_kernel.cache_info().misses == builds


@pytest.mark.gpu
@gpu
def test_replays_in_a_captured_cuda_graph_with_a_device_decay():
    shadows = [random((fast.MULTI_MAX + 1,), "float32", 12), random((33,), "float32", 13)]
    params = [random((fast.MULTI_MAX + 1,), "float16", 14), random((33,), "float16", 15)]
    decay = cp.asarray(0.5, cp.float64)
    rate = cp.asarray(0.5, cp.float64)
    expected = [s.copy() for s in shadows]
    kinds, writes = ["float", "float"], [True, True]
    fast.update_leaves(xp, expected, params, kinds, decay, rate, non_float="copy", writes=writes)
    # a non-blocking stream does not wait for the legacy default stream: the arrays made and
    # updated there must be done before it reads them
    cp.cuda.Device().synchronize()
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
    cp.cuda.Device().synchronize()  # the new decay (filled on the default stream) has landed
    graph.launch(stream)
    stream.synchronize()
    assert all(same_bits(s, e) for s, e in zip(shadows, expected, strict=True))


# --- the CUDA source on the CPU: g++ with the intrinsics stubbed by their IEEE meaning ---------

_STUBS = r"""
#include <cstring>
struct ema_dim { unsigned x; };
static ema_dim blockIdx{0}, gridDim{1}, threadIdx{0}, blockDim{1};
#define __device__
#define __forceinline__ inline
#define __global__
static float __fmul_rn(float a, float b) { volatile float x = a * b; return x; }
static float __fadd_rn(float a, float b) { volatile float x = a + b; return x; }
static float __fsub_rn(float a, float b) { volatile float x = a - b; return x; }
static double __dmul_rn(double a, double b) { volatile double x = a * b; return x; }
static double __dadd_rn(double a, double b) { volatile double x = a + b; return x; }
static double __dsub_rn(double a, double b) { volatile double x = a - b; return x; }
static float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
"""
_HALF_ASM = 'asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));'
_HALF_CPU = "{ _Float16 h; std::memcpy(&h, &bits, 2); f = (float)h; }"
_CPU_TYPES = {"float16": "_Float16", "float32": "float", "float64": "double"}
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")


def _compile(tmp: Path, name: str, code: str) -> ctypes.CDLL:
    src = tmp / f"{name}.cpp"
    src.write_text(_STUBS + code)
    lib = tmp / f"{name}.so"
    cmd = ["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-o", str(lib), str(src)]
    subprocess.run(cmd, check=True, capture_output=True)
    return ctypes.CDLL(str(lib))


def _reference(shadows, params, decay):
    copies = [s.copy() for s in shadows]
    return generic.update_leaves(
        xp_np, copies, params, ["float"] * len(shadows), decay, 1.0 - decay,
        non_float="copy", writes=[False] * len(shadows),
    )  # fmt: skip


def multi_launcher(tmp: Path, sdtype: str, pdtype: str) -> Any:
    """The multi-tensor kernel for one dtype pair, compiled by g++ for the CPU (the half loads'
    PTX swapped for a C cast): ``launch(table, n, n_chunks, d_ptr, r_ptr, on_device, d, r,
    bf16, grid)`` runs ``grid`` blocks of 32 threads one after another."""
    name = f"ema_core_multi_{sdtype}_{pdtype}"
    code = kernels._MULTI_SOURCE.replace("NAME", name).replace("CHUNK", str(kernels.CHUNK))
    code = code.replace("SHADOW", kernels._C_TYPES[sdtype]).replace(
        "PARAM", kernels._C_TYPES[pdtype]
    )
    assert _HALF_ASM in code
    code = (
        code.replace(_HALF_ASM, _HALF_CPU)
        + f"""
extern "C" void launch(const long long* t, int n, long long nc, const double* dp,
                       const double* rp, int dev, double dh, double rh, int bf16, unsigned grid) {{
    gridDim.x = grid; blockDim.x = 32;
    for (unsigned b = 0; b < grid; ++b) for (unsigned th = 0; th < 32; ++th) {{
        blockIdx.x = b; threadIdx.x = th; {name}(t, n, nc, dp, rp, dev, dh, rh, bf16);
    }}
}}"""
    )
    launch = _compile(tmp, name, code).launch
    launch.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong, ctypes.c_void_p,
                       ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_double,
                       ctypes.c_int, ctypes.c_uint]  # fmt: skip
    return launch


@needs_gxx
@pytest.mark.parametrize("pdtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("sdtype", ["float32", "float64"])
def test_multi_tensor_source_on_the_cpu(tmp_path, sdtype, pdtype):
    launch = multi_launcher(tmp_path, sdtype, pdtype)
    rng = np.random.default_rng(0)
    sizes = [1, 0, 7, kernels.CHUNK, kernels.CHUNK + 1, 3 * kernels.CHUNK - 5, 33]
    shadows = [(rng.standard_normal(n) * 3).astype(sdtype) for n in sizes]
    values = [(rng.standard_normal(n) * 3).astype(np.float32) for n in sizes]
    if pdtype == "bfloat16":  # bf16 params: the high halves of float32 values
        stored = [(v.view(np.uint32) >> 16).astype(np.uint16) for v in values]
        params = [(b.astype(np.uint32) << 16).view(np.float32) for b in stored]
    else:
        stored = params = [v.astype(pdtype) for v in values]
    for decay in (0.0, 1e-3, 0.3, 0.5, 0.9, 0.999, 1.0):
        for on_device in (0, 1):
            outs = [np.full(n, np.nan, sdtype) for n in sizes]
            ptrs = [(a.ctypes.data, b.ctypes.data, c.ctypes.data)
                    for a, b, c in zip(shadows, stored, outs, strict=True)]  # fmt: skip
            table, n_chunks = fast.host_table(ptrs, sizes)
            d, r = np.array([decay]), np.array([1.0 - decay])
            launch(table.ctypes.data, len(sizes), n_chunks, d.ctypes.data, r.ctypes.data,
                   on_device, 0.0 if on_device else decay, 0.0 if on_device else 1.0 - decay,
                   int(pdtype == "bfloat16"), min(n_chunks, 3))  # fmt: skip
            for got, want in zip(outs, _reference(shadows, params, decay), strict=True):
                assert got.tobytes() == np.asarray(want).tobytes(), (decay, on_device)


def fused_body_runner(tmp: Path, name: str, sdtype: str, pdtype: str) -> Any:
    """The fused kernel's preamble and body compiled by g++ into a loop over host arrays:
    ``run(s_ptr, p_ptr, decay, rate, out_ptr, n)``."""
    st, pt = _CPU_TYPES[sdtype], _CPU_TYPES[pdtype]
    code = (
        kernels._FUSED_PREAMBLE
        + f"""
extern "C" void run(const void* sv, const void* pv, double dv, double rv, void* ov, long n) {{
    typedef {st} S; typedef {pt} P; typedef double D;
    for (long k = 0; k < n; ++k) {{
        const S s = ((const S*)sv)[k]; const P p = ((const P*)pv)[k];
        const D d = dv; const D r = rv; S &o = ((S*)ov)[k];
        {kernels._FUSED_BODY}
    }}
}}"""
    )
    run = _compile(tmp, name, code).run
    run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double, ctypes.c_double,
                    ctypes.c_void_p, ctypes.c_long]  # fmt: skip
    return run


@needs_gxx
@pytest.mark.parametrize(
    ("sdtype", "pdtype"),
    [("float32", "float32"), ("float32", "float16"), ("float64", "float32"),
     ("float32", "float64"), ("float16", "float16"), ("float16", "float32")],
)  # fmt: skip
def test_fused_body_on_the_cpu(tmp_path, sdtype, pdtype):
    run = fused_body_runner(tmp_path, f"fused_{sdtype}_{pdtype}", sdtype, pdtype)
    rng = np.random.default_rng(1)
    s = (rng.standard_normal(3000) * 3).astype(sdtype)
    p = (rng.standard_normal(3000) * 3).astype(pdtype)
    for decay in (0.0, 1e-3, 0.3, 0.5, 0.9, 0.999, 1.0):
        out = np.full(s.size, np.nan, sdtype)
        run(s.ctypes.data, p.ctypes.data, decay, 1.0 - decay, out.ctypes.data, s.size)
        assert out.tobytes() == np.asarray(_reference([s], [p], decay)[0]).tobytes(), decay


def test_host_table_layout():
    sizes = [3, 0, 2 * kernels.CHUNK + 1]
    assert fast.CHUNK == kernels.CHUNK  # still public from the backend module
    table, n_chunks = fast.host_table([(1, 2, 3), (4, 5, 6), (7, 8, 9)], sizes)
    assert n_chunks == 4
    n = len(sizes)
    assert table[: 3 * n].tolist() == [1, 4, 7, 2, 5, 8, 3, 6, 9]
    assert table[3 * n : 4 * n].tolist() == sizes
    assert table[4 * n : 4 * n + n_chunks].tolist() == [0, 2, 2, 2]
    assert table[4 * n + n_chunks :].tolist() == [0, 0, kernels.CHUNK, 2 * kernels.CHUNK]
