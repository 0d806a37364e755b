"""The loops behind ``_bank`` (this module imports numba; ``_bank`` imports it on first use).

One kernel per params format blends K shadows of the same params in one pass: per element, the
params are read (and widened, for float16 / bfloat16 bit patterns) once, then each of the K
shadows is read, blended and written. Memory traffic per element: the params once, each shadow
read and written once (``8K + 4`` bytes for float32). Per element, not per block: blending the
K shadows one after the other over a cached params block saved little or nothing on the 2-core
EPYC, where one core's number of streams in flight, not the DRAM bytes, bounds the loop.

Arguments: ``shadows`` a typed list of K-tuples of flat arrays (leaf ``j``'s shadows),
``params`` a typed list of the leaves' flat params, then per shadow (K-tuples, so that the
compiler unrolls the K blends and vectorises over the elements): ``coeffs`` in the shadows'
dtype, ``from_shadow`` and ``skip`` (bools), and ``fused`` (one bool). Shadow ``k`` becomes,
with ``s`` its old value, ``p`` the params widened to float32 (promoted with ``s`` as in the
single-shadow loops) and ``c = coeffs[k]``:

* ``skip``: ``s`` itself (its bits: decay 1);
* else ``b + (p - s) * c``, with ``b = s`` when ``from_shadow`` else ``p``, rounded twice, or
  with ``fused`` once (``fma(c, p - s, b)``: torch's CPU ``lerp_`` with FMA).

The core's lerp is ``s + (p - s) * (1 - d)`` (d >= 0.5) or ``p - (p - s) * d``, i.e. ``b = p``
with ``c = -d`` (negating a product is exact): each shadow ends bit-equal to its single-shadow
loop (``_numba_loops``), without FMA contraction. Every size is checked before the first write
(``ValueError``): the loops run without bounds checks.
"""

from __future__ import annotations

import itertools
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.extending import intrinsic, overload
from numba.typed import List

from ema_core.backends.host._numba_loops import _widen_bfloat16, _widen_float16, as_is

__all__ = ["MOST", "bank_bfloat16", "bank_float", "bank_float16", "typed_groups"]

#: Shadows per kernel call at most: a bank of more runs in groups of at most this many (one
#: pass over the params each); 4 interleaved shadows ran slower than 2 + 2 on the 2-core EPYC.
MOST = 3


def _fused_multiply_add(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    """``a * b + c`` rounded once (LLVM's ``llvm.fma``), in ``a``'s float type."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        kind = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [kind], ir.FunctionType(kind, [kind] * 3))
        return builder.call(fn, args)

    return a(a, a, a), codegen


_fma: Any = intrinsic(_fused_multiply_add)


@numba.njit(inline="always")
def _check(shadows: Any, params: Any) -> None:
    if len(shadows) != len(params):
        raise ValueError("ema-core: a bank kernel needs one tuple of shadows per params array")
    for j in range(len(params)):
        for s in shadows[j]:
            if s.size != params[j].size:
                raise ValueError("ema-core: the params and a shadow differ in size")


@numba.njit(inline="always")
def _blend(s: Any, i: int, x: Any, c: Any, from_shadow: bool, skip: bool, fused: bool) -> None:
    """Element ``i`` of one shadow toward the params value ``x``."""
    old = s[i]
    base = old if from_shadow else x
    new = _fma(c, x - old, base) if fused else base + (x - old) * c
    s[i] = old if skip else new


def _blend_all(shadows: Any, i: int, x: Any, c: Any, f: Any, k: Any, fused: bool) -> None:
    """Element ``i`` of every shadow of a tuple (compiled through ``_unrolled``)."""
    raise NotImplementedError  # pragma: no cover - only its compiled overload runs


def _one(shadows: Any, i: Any, x: Any, c: Any, f: Any, k: Any, fused: Any) -> None:
    _blend(shadows[0], i, x, c[0], f[0], k[0], fused)


def _two(shadows: Any, i: Any, x: Any, c: Any, f: Any, k: Any, fused: Any) -> None:
    _blend(shadows[0], i, x, c[0], f[0], k[0], fused)
    _blend(shadows[1], i, x, c[1], f[1], k[1], fused)


def _three(shadows: Any, i: Any, x: Any, c: Any, f: Any, k: Any, fused: Any) -> None:
    _blend(shadows[0], i, x, c[0], f[0], k[0], fused)
    _blend(shadows[1], i, x, c[1], f[1], k[1], fused)
    _blend(shadows[2], i, x, c[2], f[2], k[2], fused)


@overload(_blend_all, inline="always")
def _unrolled(shadows: Any, i: Any, x: Any, c: Any, f: Any, k: Any, fused: Any) -> Any:
    """The K blends written out for K = ``shadows.count`` (1 to ``MOST``), with constant tuple
    indices: a loop over the tuple was left indexing it at run time for K = 3 (not unrolled,
    not vectorised: several times slower)."""
    return {1: _one, 2: _two, 3: _three}.get(shadows.count)


@numba.njit(inline="always")
def _bank(
    shadows: Any, params: Any, coeffs: Any, from_shadow: Any, skip: Any, fused: bool, widen: Any
) -> None:
    """The one loop of the three kernels, over params read through ``widen`` once per element
    (``_numba_loops._lerp`` does the same for one shadow)."""
    _check(shadows, params)
    for j in range(len(params)):
        p, tup = params[j], shadows[j]
        for i in range(p.size):
            _blend_all(tup, i, widen(p[i]), coeffs, from_shadow, skip, fused)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def bank_float(
    shadows: Any, params: Any, coeffs: Any, from_shadow: Any, skip: Any, fused: bool
) -> None:
    """Params already float (float32 or float64, no wider than the shadows)."""
    _bank(shadows, params, coeffs, from_shadow, skip, fused, as_is)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def bank_float16(
    shadows: Any, params: Any, coeffs: Any, from_shadow: Any, skip: Any, fused: bool
) -> None:
    """Params as float16 bit patterns (uint16), widened once per element."""
    _bank(shadows, params, coeffs, from_shadow, skip, fused, _widen_float16)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def bank_bfloat16(
    shadows: Any, params: Any, coeffs: Any, from_shadow: Any, skip: Any, fused: bool
) -> None:
    """Params as bfloat16 bit patterns (uint16), widened once per element."""
    _bank(shadows, params, coeffs, from_shadow, skip, fused, _widen_bfloat16)


def typed_groups(pieces: Any) -> list[tuple[Any, np.dtype[Any], slice, Any, Any]]:
    """Pieces (``_bank.Piece``) as (kernel, shadow dtype, shadow slice, typed shadows, typed
    params) per (shadow dtype, params format, group of at most ``MOST`` shadows), in the order
    the kernels read them."""
    kernels = {"float": bank_float, "float16": bank_float16, "bfloat16": bank_bfloat16}
    groups: dict[tuple[Any, str, int, int], tuple[Any, Any]] = {}
    for piece in pieces:
        p, fmt = piece.params, piece.params_format
        name = fmt if fmt == "bfloat16" else ("float16" if p.dtype == np.float16 else "float")
        for part in _parts(len(piece.shadows)):
            key = (piece.shadows[0].dtype, name, part.start, part.stop)
            shadows, params = groups.setdefault(key, (List(), List()))
            params.append(p.view(np.uint16) if p.dtype == np.float16 else p)
            shadows.append(piece.shadows[part])
    return [(kernels[n], dtype, slice(a, b), *lists) for (dtype, n, a, b), lists in groups.items()]


def _parts(k: int) -> list[slice]:
    """K shadows in ``ceil(K / MOST)`` groups of about equal size."""
    n = -(-k // MOST)
    bounds = [k * g // n for g in range(n + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]
