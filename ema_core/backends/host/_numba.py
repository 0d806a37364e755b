"""The host engine's compiled loops (numba, when installed): the blend in one pass per piece.

numpy has no fused multiply-add ufunc, so its blend takes three ufunc passes (over cache-sized
blocks); eager torch cannot lerp a float32 shadow over bfloat16 params without a cast pass.
These loops read the params and the shadow once and write the shadow once, widening half
params inside the loop: float16 and bfloat16 arrive as their uint16 bit patterns and are
widened exactly (bfloat16 is the top half of a float32; float16 is rebased, with subnormals,
infinities and NaN payloads handled). The arithmetic is the core's lerp step by step in the
shadow's dtype, without FMA contraction, so the results are bit-equal to the numpy ufunc path:

    t = (p - s) * f;   out = s + t   (f = 1 - d, d >= 0.5)   or   out = p - t   (f = d)

``EMA_CORE_NUMBA=0`` turns the kernels off (the engine then runs its numpy blocks, ``_blocks``);
it is read once, with the other settings (``ema_core._settings``).
Kernels compile on first use per dtype pair and are cached on disk by numba.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from ema_core._settings import settings

__all__ = [
    "ParamsFormat",
    "Prepared",
    "Table",
    "apply",
    "apply_table",
    "prepare",
    "table",
    "usable",
    "weights",
]

#: How the params' elements are stored: as a numpy float dtype, or as bfloat16 bit patterns.
ParamsFormat = Literal["float", "bfloat16"]

_SHADOW_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def usable() -> bool:
    """Whether the kernels run: numba importable and ``EMA_CORE_NUMBA`` not ``0`` (the setting
    as read once: ``ema_core._settings``).

    Raises:
        ValueError: on the first use, a setting has a value it does not allow.
    """
    return settings().numba and _installed()


@functools.cache
def _installed() -> bool:
    """Whether numba imports (once): installed but broken (a numba built for another numpy,
    the usual version skew) is a warning and the numpy blocks, not an ``ImportError`` from the
    middle of an update that has written some leaves already."""
    if importlib.util.find_spec("numba") is None:
        return False
    try:
        importlib.import_module("numba")
    except Exception as error:
        warnings.warn(
            f"numba is installed but does not import ({type(error).__name__}: {error}); "
            "ema-core's host engine runs its numpy blocks instead (same results, slower). "
            "Fix the numba install, or set EMA_CORE_NUMBA=0 to choose the numpy blocks",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


class Prepared(NamedTuple):
    """A kernel bound to one flat shadow and its params (float16 already seen as uint16)."""

    kernel: Callable[..., None]
    shadow: np.ndarray
    params: np.ndarray


def prepare(
    shadow: np.ndarray, params: np.ndarray, params_format: ParamsFormat = "float"
) -> Prepared | None:
    """The compiled loop for blending ``params`` into ``shadow`` in place, or None if none fits.

    One fits flat C-contiguous writeable arrays of equal size, a float32 or float64 shadow, and
    params no wider: float32/float64 as they are, float16, or ``params_format="bfloat16"`` with
    the bfloat16 bit patterns as uint16. None too when numba is missing or turned off.
    """
    if not usable() or shadow.dtype not in _SHADOW_DTYPES or shadow.size != params.size:
        return None
    flat = shadow.ndim == params.ndim == 1 and shadow.flags.c_contiguous
    if not (flat and params.flags.c_contiguous and shadow.flags.writeable):
        return None
    kernels = _compiled()
    if params_format == "bfloat16":
        return Prepared(kernels["bfloat16"], shadow, params) if params.dtype == np.uint16 else None
    if params.dtype == np.float16:
        return Prepared(kernels["float16"], shadow, params.view(np.uint16))
    if params.dtype in _SHADOW_DTYPES and params.dtype.itemsize <= shadow.dtype.itemsize:
        return Prepared(kernels["float"], shadow, params)
    return None


class Table(NamedTuple):
    """Small flat leaves of one dtype pair, blended by one compiled call (``_numba_tables``):
    each leaf's data address and size. The arrays behind the addresses are the caller's to
    keep alive (the engine's plan holds them)."""

    kernel: Callable[..., None]
    shadows: np.ndarray  # int64 addresses
    params: np.ndarray  # int64 addresses
    sizes: np.ndarray  # int64 element counts
    like_shadow: np.ndarray  # empty, of the shadows' dtype
    like_params: np.ndarray  # empty, of the dtype the kernel reads the params as


def table(pairs: Sequence[tuple[np.ndarray, np.ndarray, ParamsFormat]]) -> Table | None:
    """One compiled call for these ``(shadow, params, format)`` leaves, or None when a leaf has
    no compiled loop (``prepare``) or they need different ones. None for no leaves too."""
    prepared = [prepare(s, p, fmt) for s, p, fmt in pairs]
    found = [x for x in prepared if x is not None]
    if not found or len(found) < len(prepared):
        return None
    if len({(x.kernel, x.shadow.dtype, x.params.dtype) for x in found}) != 1:
        return None
    kernels = _compiled()
    by_loop = {kernels[fmt]: kernels["table_" + fmt] for fmt in ("float", "float16", "bfloat16")}
    return Table(
        by_loop[found[0].kernel],
        np.array([x.shadow.ctypes.data for x in found], dtype=np.int64),
        np.array([x.params.ctypes.data for x in found], dtype=np.int64),
        np.array([x.shadow.size for x in found], dtype=np.int64),
        found[0].shadow[:0],
        found[0].params[:0],
    )


def apply_table(work: Table, decay: float, rate: float) -> None:
    """Blend every leaf of a table with this decay: one compiled call, in place."""
    factor, low = weights(decay, rate, work.like_shadow.dtype)
    work.kernel(
        work.shadows, work.params, work.sizes, work.like_shadow, work.like_params, factor, low
    )


def apply(prepared: Prepared, decay: float, rate: float) -> None:
    """Run a prepared blend with this decay (``rate = 1 - decay``): one pass, in place."""
    factor, low = weights(decay, rate, prepared.shadow.dtype)
    prepared.kernel(prepared.shadow, prepared.params, factor, low)


def weights(decay: float, rate: float, dtype: np.dtype[Any]) -> tuple[np.generic, bool]:
    """A kernel's last two arguments: the factor in the shadow's ``dtype`` (``1 - d`` when
    ``d >= 0.5``, else ``d``) and which side the blend starts from."""
    low = decay >= 0.5
    return dtype.type(rate if low else decay), low


@functools.cache
def _compiled() -> dict[str, Callable[..., None]]:
    """Build the kernels (numba imported here, once): one per params format."""
    from ema_core.backends.host import _numba_loops, _numba_tables

    return {
        "float": _numba_loops.lerp_float,
        "float16": _numba_loops.lerp_float16,
        "bfloat16": _numba_loops.lerp_bfloat16,
        "table_float": _numba_tables.table_float,
        "table_float16": _numba_tables.table_float16,
        "table_bfloat16": _numba_tables.table_bfloat16,
    }
