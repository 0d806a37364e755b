"""Arrays of any framework as float64 numpy, for comparison."""

from __future__ import annotations

from typing import Any

import array_api_compat as compat
import numpy as np

from ema_core._core import dtype_name


def to_numpy(x: Any) -> np.ndarray:
    """A host numpy copy of an array of any namespace (half floats widened to float32): never a
    view, so that a later in-place update of ``x`` does not change it."""
    if isinstance(x, (int, float, complex)):
        return np.array(x)
    xp = compat.array_namespace(x)
    name = dtype_name(xp, x.dtype)
    if name in ("float16", "bfloat16"):
        x = xp.astype(x, xp.float32)
    elif name == "complex32":  # torch's half complex: numpy has none
        x = xp.astype(x, xp.complex64)
    module = type(x).__module__.partition(".")[0]
    if module == "torch":
        return np.array(x.detach().cpu().numpy(), copy=True)  # .numpy() shares CPU memory
    if module == "cupy":
        return np.asarray(x.get())
    if module == "array_api_strict":
        return np.array(np.from_dlpack(x))
    return np.array(x, copy=True)


def host64(leaves: list[Any]) -> list[np.ndarray]:
    """Arrays as numpy arrays (floating ones in float64, complex in complex128)."""
    wide = {"f": np.float64, "c": np.complex128}
    out = []
    for leaf in leaves:
        arr = to_numpy(leaf)
        out.append(arr.astype(wide[arr.dtype.kind]) if arr.dtype.kind in wide else arr)
    return out


#: The unit roundoff-ish spacing (machine epsilon) of each floating dtype name.
EPS = {
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
    "float32": 2.0**-23,
    "float64": 2.0**-52,
    "complex64": 2.0**-23,
    "complex128": 2.0**-52,
}


def host_values(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Values for a leaf of dtype name ``dtype`` (or ``"int"``, the namespace's default
    integer): normals scaled by 10 for floating ones, with every bit of a float64 (float64,
    complex128) or rounded to float32 (the narrower dtypes: the cast to a half rounds once;
    complex ones: in both parts, so an EMA that drops or flips the imaginary part is seen), small
    non-negative ints otherwise (0 or 1 for bool), so that no cast warns. (Until 2026-12-05
    float64 leaves held float32 values, whose differences are exact in float64: a float64 EMA
    that rounded ``s + (p - s)`` passed.)"""
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype == "int" or dtype.startswith(("int", "uint")):
        return rng.integers(0, 100, size=shape)
    wide = dtype in ("float64", "complex128")
    width = np.float64 if wide else np.float32
    real = (rng.standard_normal(shape) * 10).astype(width)
    if dtype.startswith("complex"):
        return real + 1j * (rng.standard_normal(shape) * 10).astype(width)
    return real


def as_array(xp: Any, host: np.ndarray, dtype: str) -> Any:
    """``host`` as an ``xp`` array of dtype name ``dtype`` (``"int"``: the default integer)."""
    if dtype == "int":  # JAX without x64 has int32 as its default
        return xp.asarray(host.tolist() if host.ndim else int(host))
    return xp.astype(xp.asarray(host), getattr(xp, dtype))


def rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` (float64) rounded to a half shadow dtype named ``dtype`` (to nearest, ties to even;
    bfloat16 by its bits, as numpy has no bfloat16), kept in float64; ``x`` itself for the
    other dtypes."""
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype == "float16":
            return x.astype(np.float16).astype(x.dtype)
        if dtype == "complex32":  # each part rounded as a float16 (set apart: 1j * inf is NaN)
            out = np.empty_like(x)
            out.real, out.imag = rounded(x.real, "float16"), rounded(x.imag, "float16")
            return out
        if dtype != "bfloat16":
            return x
        bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        lsb = (bits >> np.uint64(16)) & np.uint64(1)
        bits = (bits + np.uint64(0x7FFF) + lsb) & np.uint64(0xFFFF0000)
        out = bits.astype(np.uint32).view(np.float32).astype(x.dtype)
    return np.where(np.isnan(x), x, out)
