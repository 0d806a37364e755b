"""The host engine without numba: the blend of one leaf in cache-sized numpy blocks.

Each block of at most ``BLOCK`` elements runs three ufuncs with ``out=`` while it sits in the L2
cache: ``p - s`` into a reused scratch, times ``1 - d`` (d >= 0.5) or ``d``, then ``s +`` (or
``p -``) that into the shadow: the core's lerp steps in the same order and precision (float32
or wider), hence bit-equal to the generic backend and to the compiled loops. bfloat16 params
arrive as their uint16 bits and are widened exactly into a float32 scratch first
(``bits << 16`` seen as float32). A flat leaf is cut into flat blocks, a strided one into slabs
of whole rows along its first axis (a row longer than a block is cut the same way, so no
block exceeds ``BLOCK`` elements). Scratch blocks are per thread and reused.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from ema_core.backends.host._numba import ParamsFormat

__all__ = ["BLOCK", "blend_", "copy_", "scratch"]

#: Elements per block: three float32 blocks (shadow, params, scratch) use 768 KiB of L2 cache.
BLOCK = 65536

_LOCAL = threading.local()


def blend_(shadow: np.ndarray, params: np.ndarray, fmt: ParamsFormat, d: float, r: float) -> None:
    """``shadow = lerp(shadow, params, 1 - d)`` in place, block by block (0 < d < 1)."""
    for s, p in _blocks(shadow, params):
        _blend_block(s, _widened(p, fmt), d, r)


def copy_(shadow: np.ndarray, params: np.ndarray, fmt: ParamsFormat) -> None:
    """``shadow = params`` (decay 0): each element rounded once to the shadow's dtype, half
    params widened exactly; inf and NaN copied as they are."""
    for s, p in _blocks(shadow, params):
        np.copyto(s, _widened(p, fmt), casting="same_kind")


def scratch(dtype: np.dtype[Any], size: int, tag: str) -> np.ndarray:
    """This thread's reused flat scratch block ``tag`` of ``dtype``, cut to ``size`` elements."""
    cache: dict[tuple[str, Any], np.ndarray] = _LOCAL.__dict__.setdefault("scratch", {})
    buf = cache.get((tag, dtype))
    if buf is None or buf.size < size:
        buf = cache[tag, dtype] = np.empty(max(size, BLOCK), dtype)
    return buf[:size]


def _blend_block(s: np.ndarray, p: np.ndarray, d: float, r: float) -> None:
    """One block: ``s = s + r * (p - s)`` (d >= 0.5) or ``s = p - d * (p - s)``, in cache."""
    ct = _compute_dtype(s.dtype)
    buf = scratch(ct, s.size, "blend").reshape(s.shape)
    np.subtract(p, s, out=buf, dtype=ct)
    if d >= 0.5:
        np.multiply(buf, _factor(ct, r), out=buf)
        np.add(s, buf, out=s, dtype=ct)
    else:
        np.multiply(buf, _factor(ct, d), out=buf)
        np.subtract(p, buf, out=s, dtype=ct)


def _widened(p: np.ndarray, fmt: ParamsFormat) -> np.ndarray:
    """A block of params as numpy floats: bfloat16 bits widened into a float32 scratch."""
    if fmt != "bfloat16":
        return p
    bits = scratch(np.dtype(np.uint32), p.size, "widen").reshape(p.shape)
    np.left_shift(p, 16, out=bits, dtype=np.uint32)
    return bits.view(np.float32)


def _compute_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """float32, or the shadow's dtype when it is wider (float64, complex)."""
    if dtype.itemsize < 4 and dtype.kind == "f":
        return np.dtype(np.float32)
    return dtype


@functools.lru_cache(maxsize=64)
def _factor(dtype: np.dtype[Any], value: float) -> np.ndarray:
    """``value`` as a 0-d array of ``dtype``: rounded once, as numpy rounds a Python float."""
    return np.asarray(value, dtype=dtype)


def _blocks(s: np.ndarray, p: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Views of at most ``BLOCK`` elements of a leaf: flat slices when it is flat, else slabs
    of whole rows along axis 0, each row longer than ``BLOCK`` cut in turn."""
    if s.ndim == 1 and s.flags.c_contiguous and p.flags.c_contiguous:
        for i in range(0, s.size, BLOCK):
            yield s[i : i + BLOCK], p[i : i + BLOCK]
        return
    if s.ndim == 0:
        yield s, p
        return
    row = s.size // max(1, s.shape[0])
    if row > BLOCK:  # a row longer than a block: each row cut the same way, axis by axis
        for i in range(s.shape[0]):
            yield from _blocks(s[i], p[i])
        return
    step = BLOCK // max(1, row)
    for i in range(0, s.shape[0], step):
        yield s[i : i + step], p[i : i + step]
