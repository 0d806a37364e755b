"""bfloat16 values held as their raw 2-byte patterns (numpy ``uint16``), converted to and from
float32 with numpy alone: how safetensors files and post-hoc snapshots carry bfloat16 so that
any framework's bfloat16 round-trips bit for bit."""

from __future__ import annotations

import numpy as np

__all__ = ["bf16_to_float32", "float32_to_bf16"]


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """The float32 values (exact) of bfloat16 bit patterns held as ``uint16``."""
    wide: np.ndarray = bits.astype(np.uint32) << np.uint32(16)
    return wide.view(np.float32)


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """The bfloat16 bit patterns (``uint16``) nearest to ``values``, as float32.

    bfloat16 is float32's upper half: its bits are ``(b + 0x7FFF + ((b >> 16) & 1)) >> 16`` for
    float32 bits ``b``, round to nearest, ties to even (as torch and JAX convert); a value that
    rounds past the largest finite one becomes inf, a NaN stays a quiet NaN of the same sign.

    Example:
        >>> import numpy as np
        >>> bits = float32_to_bf16(np.array([1 + 2**-8, 1 + 3 * 2**-8, -np.inf, 3.4e38]))
        >>> bits.dtype.name, bf16_to_float32(bits).tolist()
        ('uint16', [1.0, 1.015625, -inf, inf])
    """
    x = np.asarray(values, dtype=np.float32, order="C")
    b = x.view(np.uint32)
    rounded = (b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    quiet_nan = (b >> np.uint32(16)) | np.uint32(0x0040)
    bits: np.ndarray = np.where(np.isnan(x), quiet_nan, rounded).astype(np.uint16)
    return bits
