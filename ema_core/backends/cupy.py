"""The CuPy backend: one fused kernel per array, one launch for many small arrays.

Each float leaf is updated by one elementwise kernel that reads shadow and params (any float
dtypes: float16/bfloat16 params cast in registers) and writes the shadow. The decay and
``1 - decay`` are kernel arguments (host floats by value, 0-d device arrays read in the
kernel), so a new step compiles nothing and a device decay is never read back. Products and
sums go through ``__fmul_rn`` / ``__fadd_rn`` (never fused into an FMA), so the result equals
the generic backend's separate kernels bit for bit.

Contiguous float32/float64 shadows of at most ``MULTI_MAX`` elements take one launch per dtype
pair over a device table of pointers, sizes and chunk starts, cached for as long as the same
arrays come back. All launches use the current stream. In a captured CUDA graph use the in-place
path (its table is cached by a warm-up call) and a device decay, which a replay reads afresh.

Each leaf takes one route (``route``; ``update_leaves`` matches on it):

=======  ==================================================  ================
route    leaves                                              runs
=======  ==================================================  ================
copy     integer/bool under ``non_float="copy"`` (any decay)  ``a[...] = p``
keep     integer/bool, any other ``non_float``               nothing
skip     float, a host decay of 1                            nothing
generic  complex or non-float dtypes, a half over float64    ``generic``
multi    float32/float64, C-contiguous, <= ``MULTI_MAX``     ``_multi``
fused    every other float pair                              ``_fused()``
=======  ==================================================  ================

Host and device decays take the same routes (the kernels read either). Tests, in
``tests/test_cupy_backend.py``: the choice of every route on the CPU (``test_cupy_routes``, numpy
arrays standing in), the kernels' source compiled for the CPU, and marked ``gpu``: copy and keep
(``test_integer_leaves_are_copied``), skip and fused (``test_fused_kernel_equals_generic``, decay
1 among its decays), generic (``test_generic_route_equals_generic``), multi
(``test_multi_tensor_equals_per_array_and_generic``). This module routes the leaves, lays out
and caches the tables and launches; the kernels' CUDA source and their cached builders (and
``CHUNK``, which the source bakes in) are in ``_cupy_kernels``.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import array_api_compat as compat
import numpy as np

from ema_core._types import Array, LeafKind, Namespace, NonFloatPolicy, Value
from ema_core.backends import generic
from ema_core.backends._cupy_kernels import _HALF, CHUNK, _cupy, _fused, _multi_kernel
from ema_core.backends.generic import guard

__all__ = ["CHUNK", "MULTI_MAX", "Route", "guard", "host_table", "route", "update_leaves"]

Route: TypeAlias = Literal["copy", "keep", "skip", "generic", "multi", "fused"]

#: Contiguous leaves with at most this many elements share one multi-tensor launch: streaming
#: 4M fp32 elements takes about 12 us at 4 TB/s, no longer than one Python kernel call.
MULTI_MAX = 1 << 22
_THREADS = 256
_FLOATS = (*_HALF, "float32", "float64")
_TABLES: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()


def update_leaves(
    xp: Namespace,
    shadows: Sequence[Array],
    params: Sequence[Array],
    kinds: Sequence[LeafKind],
    decay: Value,
    rate: Value,
    *,
    non_float: NonFloatPolicy,
    writes: Sequence[bool],
) -> list[Array]:
    """Blend float leaves with fused kernels, copy exact ones; in place where ``writes`` says.

    ``s <- s + (1 - d) (p - s)`` per float leaf, bit for bit as the generic backend computes
    it, on the current stream and without reading the decay on the host. A host decay of 1
    returns each float shadow itself; integer and bool leaves take the params on every call
    (``non_float="copy"``), that one included. Leaves the kernels do not cover (complex, a half
    shadow over float64 params) go through the generic backend.

    Args:
        xp: the namespace (array_api_compat.cupy), used by the generic fallback only.
        shadows, params: the leaves, pairwise of equal shapes; kinds: "float" or "exact".
        decay, rate: the decay and ``1 - decay``: Python floats or 0-d device arrays.
        non_float: "copy" copies exact leaves, anything else keeps them.
        writes: per leaf, write into the shadow and return it, or return a new array.

    Returns:
        The new leaves, in order (no example here: it needs a GPU; see the module's tests).
    """
    d, r = _decay_args(decay, rate)
    out: list[Array] = list(shadows)
    groups: dict[tuple[str, str], list[int]] = {}  # small leaves by dtype pair
    for i, (s, p, kind, write) in enumerate(zip(shadows, params, kinds, writes, strict=True)):
        match route(kind, s, p, decay, non_float=non_float):
            case "copy":
                out[i] = _copy_exact(s, p, write)
            case "keep" | "skip":
                pass  # the shadow itself, as it is
            case "generic":
                out[i] = generic.update_leaves(
                    xp, [s], [p], [kind], decay, rate, non_float=non_float, writes=[write]
                )[0]
            case "multi":
                groups.setdefault((s.dtype.name, p.dtype.name), []).append(i)
            case "fused":
                out[i] = _fused()(s, p, d, r, s if write else _cupy().empty_like(s))
    for group in groups.values():
        _multi(group, shadows, params, writes, out, d, r)
    return out


def route(
    kind: LeafKind, shadow: Array, params: Array, decay: Value, *, non_float: NonFloatPolicy
) -> Route:
    """The route (module docstring) of one leaf pair under ``decay`` (a host float or a 0-d
    device array, never read here)."""
    if kind != "float":
        return "copy" if non_float == "copy" else "keep"
    if not compat.is_cupy_array(decay) and float(decay) == 1.0:
        return "skip"
    if _pair(shadow, params) is None:
        return "generic"
    return "multi" if _multi_ok(shadow, params) else "fused"


def _decay_args(decay: Value, rate: Value) -> tuple[Any, Any]:
    """Host decays as float64 scalars (passed by value), device ones as 0-d float64 arrays."""
    if not compat.is_cupy_array(decay):
        return np.float64(decay), np.float64(rate)
    cp = _cupy()
    return cp.asarray(decay, cp.float64), cp.asarray(rate, cp.float64)


def _pair(s: Array, p: Array) -> tuple[str, str] | None:
    """The (shadow, params) dtype names when the kernels cover them, else None."""
    names = (s.dtype.name, p.dtype.name)
    if names[0] not in _FLOATS or names[1] not in _FLOATS:
        return None
    if names[0] in _HALF and names[1] == "float64":
        return None  # generic rounds float64 -> half in two steps or one, by decay kind
    return names


def _multi_ok(s: Array, p: Array) -> bool:
    return (
        s.size <= MULTI_MAX
        and s.dtype.name in ("float32", "float64")
        and s.flags.c_contiguous
        and p.flags.c_contiguous
    )


def _copy_exact(s: Array, p: Array, write: bool) -> Array:
    """An integer or bool leaf under ``non_float="copy"``: the params' value on every call,
    whatever the decay (a copy on the current stream; no decay is read)."""
    target = s if write else _cupy().empty_like(s)
    target[...] = p
    return target


def _multi(
    group: list[int],
    shadows: Sequence[Array],
    params: Sequence[Array],
    writes: Sequence[bool],
    out: list[Array],
    d: Any,
    r: Any,
) -> None:
    """One launch over the small leaves ``group`` (one dtype pair); fills ``out``."""
    fresh = [i for i in group if not writes[i]]
    if fresh:  # new results are views into one flat buffer: one allocation, not one per leaf
        flat = _cupy().empty(sum(shadows[i].size for i in fresh), shadows[fresh[0]].dtype)
        start = 0
        for i in fresh:
            out[i] = flat[start : start + shadows[i].size].reshape(shadows[i].shape)
            start += shadows[i].size
    table, n_chunks = _table([(shadows[i], params[i], out[i]) for i in group])
    if n_chunks == 0:
        return
    sname, pname = shadows[group[0]].dtype.name, params[group[0]].dtype.name
    on_device = not isinstance(d, np.float64)
    host = (np.float64(0.0), np.float64(0.0)) if on_device else (d, r)
    pointers = (d, r) if on_device else (table, table)  # any valid pointer when unused
    args = (table, np.int32(len(group)), np.int64(n_chunks), *pointers, np.int32(on_device))
    args_tail = (*host, np.int32(pname == "bfloat16"))
    _multi_kernel(sname, pname)((min(n_chunks, 1 << 20),), (_THREADS,), (*args, *args_tail))


def _table(leaves: list[tuple[Array, Array, Array]]) -> tuple[Array, int]:
    """The multi-tensor table of ``leaves`` on the device, cached by pointers and sizes (all
    the table holds), so a repeated in-place update uploads nothing."""
    cp = _cupy()
    ptrs = [(s.data.ptr, p.data.ptr, o.data.ptr) for s, p, o in leaves]
    sizes = [s.size for s, _, _ in leaves]
    key = (cp.cuda.Device().id, *ptrs, *sizes)
    if key not in _TABLES:
        host, n_chunks = host_table(ptrs, sizes)
        _TABLES[key] = (cp.asarray(host), n_chunks)
        while len(_TABLES) > 8:
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
