"""The loops behind ``_numba`` (this module imports numba; ``_numba`` imports it on first use).

Each kernel takes ``(shadow, params, factor, low)`` over flat arrays and writes, in place,
``shadow + (p - shadow) * factor`` when ``low`` else ``p - (p - shadow) * factor``, with ``p``
the params widened to the shadow's dtype. The three kernels, one per params format, run one
inlined loop (``_lerp``) over params read ``as_is`` (float) or widened from float16 / bfloat16
bit patterns, so each compiles to the loop written out for its format. In place
on purpose: with a separate output that aliases the shadow, LLVM's runtime overlap check would
fall back to a scalar loop (half the speed); with two arrays it proves them apart and
vectorises. The loops run without bounds
checks, so each first checks that the params have the shadow's size (``ValueError``
otherwise, nothing written): a caller's slip can never read past the params' end.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["as_is", "lerp_bfloat16", "lerp_float", "lerp_float16"]

_U32 = np.uint32
#: float16's exponent bias is 15, float32's 127: rebasing a normal number adds 112 to it.
_REBASE = _U32(112 << 23)
_SUBNORMAL_UNIT = np.float32(2.0**-24)  # float16's smallest subnormal


def _bit_cast(typingctx: Any, bits: Any) -> Any:
    """The float32 whose IEEE bits are ``bits`` (a uint32): a bit cast, no conversion."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


_as_float32: Any = intrinsic(_bit_cast)


@numba.njit(inline="always")
def _widen_bfloat16(bits: Any) -> Any:
    """bfloat16 bits -> float32: the same sign, exponent and top mantissa bits."""
    return _as_float32(_U32(bits) << _U32(16))


@numba.njit(inline="always")
def _widen_float16(bits: Any) -> Any:
    """float16 bits -> float32, exactly (subnormals, infinities and NaN payloads included)."""
    h = _U32(bits)
    magnitude = (h & _U32(0x7FFF)) << _U32(13)
    exponent = h & _U32(0x7C00)
    value = _as_float32(magnitude + _REBASE)
    if exponent == _U32(0):  # zero or subnormal: an integer count of the smallest step
        value = np.float32(h & _U32(0x3FF)) * _SUBNORMAL_UNIT
    elif exponent == _U32(0x7C00):  # infinity or NaN: all exponent bits set, payload kept
        value = _as_float32(magnitude | _U32(0x7F800000))
    return -value if h & _U32(0x8000) else value


@numba.njit(inline="always")
def _check_sizes(shadow: Any, params: Any) -> None:
    if params.size != shadow.size:
        raise ValueError("ema-core: the params and the shadow differ in size")


@numba.njit(inline="always")
def as_is(value: Any) -> Any:
    """Params already float (float32 or float64): read as they are."""
    return value


@numba.njit(inline="always")
def _lerp(shadow: Any, params: Any, factor: Any, low: bool, widen: Any) -> None:
    """The one loop of the three kernels, over params read through ``widen``."""
    _check_sizes(shadow, params)
    if low:
        for i in range(shadow.size):
            shadow[i] = shadow[i] + (widen(params[i]) - shadow[i]) * factor
    else:
        for i in range(shadow.size):
            p = widen(params[i])
            shadow[i] = p - (p - shadow[i]) * factor


@numba.njit(nogil=True, cache=True, boundscheck=False)
def lerp_float(shadow: Any, params: Any, factor: Any, low: bool) -> None:
    """Params already float (float32 or float64, no wider than the shadow)."""
    _lerp(shadow, params, factor, low, as_is)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def lerp_float16(shadow: Any, params: Any, factor: Any, low: bool) -> None:
    """Params as float16 bit patterns (uint16)."""
    _lerp(shadow, params, factor, low, _widen_float16)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def lerp_bfloat16(shadow: Any, params: Any, factor: Any, low: bool) -> None:
    """Params as bfloat16 bit patterns (uint16)."""
    _lerp(shadow, params, factor, low, _widen_bfloat16)
