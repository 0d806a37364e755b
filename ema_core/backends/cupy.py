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
multi    float32/float64, C-contiguous, <= ``MULTI_MAX``     ``launch_multi``
fused    every other float pair                              ``_fused()``
=======  ==================================================  ================

Host and device decays take the same routes (the kernels read either). Tests, in
``tests/test_cupy_backend.py``: the choice of every route on the CPU (``test_cupy_routes``, numpy
arrays standing in), the kernels' source compiled for the CPU, and marked ``gpu``: copy and keep
(``test_integer_leaves_are_copied``), skip and fused (``test_fused_kernel_equals_generic``, decay
1 among its decays), generic (``test_generic_route_equals_generic``), multi
(``test_multi_tensor_equals_per_array_and_generic``). This module routes the leaves and
launches the fused kernel; the kernels' CUDA source and their cached builders, the multi-tensor
launch (``launch_multi``), ``CHUNK`` (which the source bakes in) and the tables' layout and
cache are in ``_cupy_kernels``.

The stateless call's plan cache (``ema_core._stateless``) covers CuPy arrays: ``leaf_signature``
records each array's data address, shape, strides and dtype, and while they hold for the same
array objects a call skips the checks, and ``update_leaves`` reuses the routes (``plan``) and,
in place, the multi-tensor tables kept in the cache's ``memo``. The H200 run of 2026-12-04
(run 3) showed why: without it ``ema_update`` on GPT-2 small's 148 CuPy arrays spent 24 us per
array on the host, 0.10 of a device copy's speed.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import array_api_compat as compat
import numpy as np

from ema_core._types import Array, LeafKind, Namespace, NonFloatPolicy, Value
from ema_core.backends import generic
from ema_core.backends._cupy_kernels import (
    _HALF,
    CHUNK,
    _cupy,
    _fused,
    host_table,
    launch_multi,
)
from ema_core.backends.generic import guard

__all__ = [
    "CHUNK",
    "MULTI_MAX",
    "PLAN_MEMO",
    "Route",
    "guard",
    "host_table",
    "leaf_signature",
    "plan",
    "route",
    "update_leaves",
]

#: ``update_leaves`` takes a ``memo`` from the plan cache (``ema_core._stateless``).
PLAN_MEMO = True

Route: TypeAlias = Literal["copy", "keep", "skip", "generic", "multi", "fused"]

#: Contiguous leaves with at most this many elements share one multi-tensor launch: streaming
#: 4M fp32 elements takes about 12 us at 4 TB/s, no longer than one Python kernel call.
MULTI_MAX = 1 << 22
_FLOATS = (*_HALF, "float32", "float64")
_SIGNATURE = operator.attrgetter("data.ptr", "shape", "strides", "dtype")


def leaf_signature(leaves: Sequence[Array]) -> list[tuple[Any, ...]]:
    """What could invalidate a plan made for these same CuPy arrays: per array its data
    address, shape, strides and dtype (what the checks, the routes and the tables read). The
    stateless call's plan cache (``ema_core._stateless``) compares it at each call and skips
    the checks while it holds; no GPU example here (see ``tests/test_cupy_plan_cache.py``)."""
    return list(map(_SIGNATURE, leaves))


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
    memo: dict[Any, Any] | None = None,
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
        memo: the plan cache's dict for these very arrays, unchanged since they were checked
            (``leaf_signature``): their routes (per decay kind) and, when every leaf is
            written in place, the multi-tensor tables are kept there.

    Returns:
        The new leaves, in order (no example here: it needs a GPU; see the module's tests).
    """
    d, r = _decay_args(decay, rate)
    out: list[Array] = list(shadows)
    singles, groups = plan(shadows, params, kinds, decay, non_float=non_float, memo=memo)
    for i, way in singles:
        s, p, write = shadows[i], params[i], writes[i]
        match way:
            case "copy":
                out[i] = _copy_exact(s, p, write)
            case "generic":
                out[i] = generic.update_leaves(
                    xp, [s], [p], [kinds[i]], decay, rate, non_float=non_float, writes=[write]
                )[0]
            case _:  # "fused"
                out[i] = _fused()(s, p, d, r, s if write else _cupy().empty_like(s))
    tables = memo if memo is not None and all(writes) else None  # the same pointers each call
    for pair, group in groups.items():
        launch_multi(pair, group, shadows, params, writes, out, d, r, tables)
    return out


def plan(
    shadows: Sequence[Array],
    params: Sequence[Array],
    kinds: Sequence[LeafKind],
    decay: Value,
    *,
    non_float: NonFloatPolicy,
    memo: dict[Any, Any] | None = None,
) -> tuple[list[tuple[int, Route]], dict[tuple[str, str], list[int]]]:
    """Each leaf's ``route`` under ``decay``: the leaves that take a call of their own (copy,
    generic, fused; keep and skip need none) and the multi-tensor groups, by dtype pair. Kept
    in ``memo`` per decay kind (a device decay, a host decay of 1, another host decay), for
    arrays the plan cache vouches for.

    Example (numpy arrays standing in, as routes read only dtypes, sizes and contiguity):
        >>> import numpy as np
        >>> leaves = [np.zeros(3, np.float32), np.zeros(2, np.int32)]
        >>> plan(leaves, leaves, ["float", "exact"], 0.9, non_float="copy")
        ([(1, 'copy')], {('float32', 'float32'): [0]})
    """
    on_device = compat.is_cupy_array(decay)
    key = ("plan", on_device, not on_device and float(decay) == 1.0)
    if memo is not None and key in memo:
        return memo[key]  # type: ignore[no-any-return]
    singles: list[tuple[int, Route]] = []
    groups: dict[tuple[str, str], list[int]] = {}  # small leaves by dtype pair
    for i, (s, p, kind) in enumerate(zip(shadows, params, kinds, strict=True)):
        way = route(kind, s, p, decay, non_float=non_float)
        if way == "multi":
            groups.setdefault((s.dtype.name, p.dtype.name), []).append(i)
        elif way not in ("keep", "skip"):
            singles.append((i, way))
    found = (singles, groups)
    if memo is not None:
        memo[key] = found
    return found


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
