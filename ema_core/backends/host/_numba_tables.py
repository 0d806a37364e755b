"""Batches of small leaves in one compiled call (this module imports numba; ``_numba`` imports
it on first use).

A call into numba costs microseconds, the blend of a 1,024-element leaf less than one: a model
of 20,000 tiny tensors spent most of its update entering the kernel once per leaf. Here a batch
is a table of addresses: ``shadows`` and ``params`` are int64 arrays holding each leaf's data
address, ``sizes`` its element count, and ``like_shadow`` / ``like_params`` empty arrays whose
dtypes say how to read them. Each kernel (one inlined walk, ``_table``, per params format)
walks the table and runs, per leaf, the single-leaf loop of ``_numba_loops`` (so the bits are
the same). The caller keeps the arrays behind the addresses alive and unchanged (the engine's
plan holds them; ``stale``, or the ``EMA`` class's watch, checks before use).
"""

from __future__ import annotations

from typing import Any

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic
from numba.np.numpy_support import carray

from ema_core.backends.host._numba_loops import lerp_bfloat16, lerp_float, lerp_float16

__all__ = ["table_bfloat16", "table_float", "table_float16"]


def _int_to_pointer(typingctx: Any, address: Any) -> Any:
    """The address in an int64 as a raw pointer (for ``carray``)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(types.int64), codegen


_pointer: Any = intrinsic(_int_to_pointer)


@numba.njit(inline="always")
def _table(
    shadows: Any,
    params: Any,
    sizes: Any,
    like_shadow: Any,
    like_params: Any,
    f: Any,
    low: bool,
    loop: Any,
) -> None:
    """The one walk of the three kernels: leaf ``k`` is ``sizes[k]`` shadow elements at
    ``shadows[k]`` and params at ``params[k]``, blended by the single-leaf ``loop``."""
    for k in range(sizes.size):
        s = carray(_pointer(shadows[k]), (sizes[k],), dtype=like_shadow.dtype)
        p = carray(_pointer(params[k]), (sizes[k],), dtype=like_params.dtype)
        loop(s, p, f, low)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def table_float(
    shadows: Any, params: Any, sizes: Any, like_shadow: Any, like_params: Any, f: Any, low: bool
) -> None:
    """Float params: ``lerp_float`` per leaf."""
    _table(shadows, params, sizes, like_shadow, like_params, f, low, lerp_float)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def table_float16(
    shadows: Any, params: Any, sizes: Any, like_shadow: Any, like_params: Any, f: Any, low: bool
) -> None:
    """Params as float16 bit patterns (uint16): ``lerp_float16`` per leaf."""
    _table(shadows, params, sizes, like_shadow, like_params, f, low, lerp_float16)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def table_bfloat16(
    shadows: Any, params: Any, sizes: Any, like_shadow: Any, like_params: Any, f: Any, low: bool
) -> None:
    """Params as bfloat16 bit patterns (uint16): ``lerp_bfloat16`` per leaf."""
    _table(shadows, params, sizes, like_shadow, like_params, f, low, lerp_bfloat16)
