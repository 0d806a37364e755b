"""The CuPy backend's CUDA kernels: their source and their builders, each compiled once.

``cupy.py`` routes the leaves and launches the fused kernel (its docstring's table: the "fused"
route runs ``_fused``, the "multi" route ``launch_multi``, here); this module holds what runs on
the device: the rounded blend shared by both kernels (``__fmul_rn`` / ``__fadd_rn``, never fused
into an FMA), the fused elementwise kernel's preamble and body, the multi-tensor kernel's source
(which reads the table ``host_table`` lays out, ``CHUNK`` elements per block step, and
``device_table`` uploads and caches) and its launch, and the ``functools.cache`` builders that
compile them on first use (integer leaves need no kernel: they are plain copies). Importing this
module needs no CuPy: the builders import it when first called.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ema_core._types import Array

#: Elements one thread block of the multi-tensor kernel handles before taking the next chunk.
CHUNK = 4096
#: Device tables kept (``device_table``), the last ones used.
TABLES_KEPT = 8
_TABLES: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()
_HALF = ("float16", "bfloat16")
_THREADS = 256

_ROUNDED = r"""
__device__ __forceinline__ float ema_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double ema_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float ema_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double ema_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float ema_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double ema_sub(double a, double b) { return __dsub_rn(a, b); }
template <typename C>
__device__ __forceinline__ C ema_lerp(C s, C p, double d, double r) {
    if (d == 1.0) return s;
    if (d == 0.0) return p;
    if (d >= 0.5) return ema_add(s, ema_mul((C)r, ema_sub(p, s)));
    return ema_sub(p, ema_mul((C)d, ema_sub(p, s)));
}
"""

_FUSED_PREAMBLE = (
    _ROUNDED
    + r"""
template <typename T> struct ema_compute { typedef float type; };
template <> struct ema_compute<double> { typedef double type; };
template <typename S, typename P> struct ema_take {
    static __device__ __forceinline__ S from(P p) {
        return (S)(typename ema_compute<S>::type)p;
    }
};
template <typename S> struct ema_take<S, S> {
    static __device__ __forceinline__ S from(S p) { return p; }
};
"""
)

# The ends are taken in the shadow's dtype: a half shadow's NaN would lose its payload on the
# way through float (decay 1), and same-dtype params are taken as they are (decay 0).
_FUSED_BODY = r"""
typedef ema_compute<S>::type ema_ct;
if ((double)d == 1.0) {
    o = s;
} else if ((double)d == 0.0) {
    o = ema_take<S, P>::from(p);
} else {
    o = (S)ema_lerp<ema_ct>((ema_ct)s, (ema_ct)p, (double)d, (double)r);
}
"""

_MULTI_SOURCE = (
    _ROUNDED
    + r"""
__device__ __forceinline__ float ema_load(const unsigned short* p, long long i, int bf16) {
    const unsigned short bits = p[i];
    if (bf16) return __uint_as_float(((unsigned int)bits) << 16);
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
    return f;
}
__device__ __forceinline__ float ema_load(const float* p, long long i, int) { return p[i]; }
__device__ __forceinline__ double ema_load(const double* p, long long i, int) { return p[i]; }

extern "C" __global__ void NAME(
    const long long* table, int n, long long n_chunks, const double* d_ptr,
    const double* r_ptr, int on_device, double d_host, double r_host, int bf16) {
    const long long* sizes = table + 3 * n;
    const long long* chunk_leaf = table + 4 * n;
    const long long* chunk_start = chunk_leaf + n_chunks;
    const double d = on_device ? d_ptr[0] : d_host;
    const double r = on_device ? r_ptr[0] : r_host;
    for (long long c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const long long leaf = chunk_leaf[c];
        const long long start = chunk_start[c];
        const long long size = sizes[leaf];
        const long long stop = start + CHUNK < size ? start + CHUNK : size;
        const SHADOW* s = (const SHADOW*)table[leaf];
        const PARAM* p = (const PARAM*)table[n + leaf];
        SHADOW* o = (SHADOW*)table[2 * n + leaf];
        for (long long i = start + threadIdx.x; i < stop; i += blockDim.x) {
            o[i] = ema_lerp<SHADOW>(s[i], (SHADOW)ema_load(p, i, bf16), d, r);
        }
    }
}
"""
)

_C_TYPES = {"float32": "float", "float64": "double"}
_C_TYPES.update(dict.fromkeys(_HALF, "unsigned short"))


def _cupy() -> Any:
    """The cupy module, imported on first use (importing this module or cupy.py needs no CuPy)."""
    import cupy

    return cupy


@functools.cache
def _fused() -> Any:
    """The per-array kernel; its dtypes are template parameters, the decay a float64 argument.

    The decay's type is spelled out: a type placeholder (``D d``) is not fixed by a NumPy scalar
    under CuPy 14 (its first GPU run raised ``KeyError: 'D'``), and a 0-d float64 array or a
    NumPy float64 passes to a ``float64`` argument on every CuPy version.
    """
    cp = _cupy()
    return cp.ElementwiseKernel(
        "S s, P p, float64 d, float64 r",
        "S o",
        _FUSED_BODY,
        "ema_core_blend",
        preamble=_FUSED_PREAMBLE,
    )


@functools.cache
def _multi_kernel(shadow: str, param: str) -> Any:
    """The multi-tensor kernel for one (shadow, params) dtype pair, compiled on first use."""
    cp = _cupy()
    name = f"ema_core_multi_{shadow}_{param}"
    code = _MULTI_SOURCE.replace("NAME", name).replace("CHUNK", str(CHUNK))
    code = code.replace("SHADOW", _C_TYPES[shadow]).replace("PARAM", _C_TYPES[param])
    return cp.RawKernel(code, name)


def device_table(leaves: list[tuple[Array, Array, Array]]) -> tuple[Array, int]:
    """The multi-tensor table of ``leaves`` on the device, cached by pointers and sizes (all
    the table holds), so a repeated in-place update uploads nothing."""
    cp = _cupy()
    ptrs = [(s.data.ptr, p.data.ptr, o.data.ptr) for s, p, o in leaves]
    sizes = [s.size for s, _, _ in leaves]
    key = (cp.cuda.Device().id, *ptrs, *sizes)
    if key not in _TABLES:
        host, n_chunks = host_table(ptrs, sizes)
        _TABLES[key] = (cp.asarray(host), n_chunks)
        while len(_TABLES) > TABLES_KEPT:
            _TABLES.popitem(last=False)
    _TABLES.move_to_end(key)
    return _TABLES[key]  # type: ignore[no-any-return]


def host_table(ptrs: Sequence[tuple[int, int, int]], sizes: Sequence[int]) -> tuple[Any, int]:
    """The int64 table the multi-tensor kernel reads, and its number of chunks: the shadow,
    params and out pointers of each leaf, their sizes, then each chunk's leaf and first index."""
    sizes_ = np.asarray(sizes, np.int64)
    counts = -(-sizes_ // CHUNK)
    chunk_leaf = np.repeat(np.arange(len(sizes_), dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    starts = (np.arange(chunk_leaf.size, dtype=np.int64) - first[chunk_leaf]) * CHUNK
    pointers = np.asarray(ptrs, np.uint64).reshape(-1, 3).T.reshape(-1).view(np.int64)
    return np.concatenate([pointers, sizes_, chunk_leaf, starts]), int(chunk_leaf.size)


def launch_multi(
    pair: tuple[str, str],
    group: list[int],
    shadows: Sequence[Array],
    params: Sequence[Array],
    writes: Sequence[bool],
    out: list[Array],
    d: Any,
    r: Any,
    tables: dict[Any, Any] | None,
) -> None:
    """One launch over the small leaves ``group`` (of the dtype pair ``pair``, shadow's and
    params' names); fills ``out``. ``tables``: the plan cache's memo, which keeps the group's
    table (in-place updates of arrays whose pointers it vouches for), or None."""
    fresh = [i for i in group if not writes[i]]
    if fresh:  # new results are views into one flat buffer: one allocation, not one per leaf
        flat = _cupy().empty(sum(shadows[i].size for i in fresh), shadows[fresh[0]].dtype)
        start = 0
        for i in fresh:
            out[i] = flat[start : start + shadows[i].size].reshape(shadows[i].shape)
            start += shadows[i].size
    if tables is not None and ("table", pair) in tables:
        table, n_chunks = tables[("table", pair)]
    else:
        table, n_chunks = device_table([(shadows[i], params[i], out[i]) for i in group])
        if tables is not None:
            tables[("table", pair)] = (table, n_chunks)
    if n_chunks == 0:
        return
    sname, pname = pair
    on_device = not isinstance(d, np.float64)
    host = (np.float64(0.0), np.float64(0.0)) if on_device else (d, r)
    pointers = (d, r) if on_device else (table, table)  # any valid pointer when unused
    args = (table, np.int32(len(group)), np.int64(n_chunks), *pointers, np.int32(on_device))
    args_tail = (*host, np.int32(pname == "bfloat16"))
    _multi_kernel(sname, pname)((min(n_chunks, 1 << 20),), (_THREADS,), (*args, *args_tail))
