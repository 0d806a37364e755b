"""Scalar arithmetic that runs the same on Python numbers and on 0-d arrays of any namespace.

Schedules are written once against this small interface: ``ScalarOps`` computes in Python floats
(float64 on the host), ``ArrayOps`` in the widest float of the step's namespace on the step's
device, so a traced JAX step or a CUDA tensor step never leaves the device.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat as compat

from ema_core._types import Array, DType, Namespace, Value


def wide_float(xp: Namespace) -> DType:
    """float64, except under JAX with x64 disabled, where it is float32."""
    if compat.is_jax_namespace(xp) and xp.asarray(0.0).dtype != xp.float64:
        return xp.float32
    return xp.float64


def is_host_array(x: Any) -> bool:
    """True for arrays whose values can be read without a device sync (numpy, array-api-strict)."""
    if compat.is_numpy_array(x):
        return True
    return type(x).__module__.partition(".")[0] == "array_api_strict"


class ScalarOps:
    """Operations on Python floats."""

    def __init__(self, t: int) -> None:
        self.raw: Any = t
        self.t: Any = float(t)

    def const(self, value: float) -> Any:
        return float(value)

    def minimum(self, a: Any, b: Any) -> Any:
        return min(a, b)

    def maximum(self, a: Any, b: Any) -> Any:
        return max(a, b)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return a if cond else b

    def log1p(self, x: Any) -> Any:
        return -math.inf if x == -1.0 else math.log1p(x)

    def expm1(self, x: Any) -> Any:
        return math.expm1(x)

    def exp(self, x: Any) -> Any:
        return math.exp(x)

    def power(self, a: Any, b: Any) -> Any:
        return float(a) ** float(b)


class ArrayOps:
    """Operations on 0-d arrays, in the widest float of their namespace, on their device."""

    def __init__(self, t: Array) -> None:
        self.xp = compat.array_namespace(t)
        self.dtype = wide_float(self.xp)
        self.device = compat.device(t)
        self.raw: Any = t
        self.t: Any = self.xp.astype(t, self.dtype)

    def const(self, value: Value) -> Any:
        if isinstance(value, (int, float)):  # a fill on the device, not a host-to-device copy
            return self.xp.full((), float(value), dtype=self.dtype, device=self.device)
        return self.xp.astype(value, self.dtype)

    def minimum(self, a: Any, b: Any) -> Any:
        return self.xp.minimum(self.const(a), self.const(b))

    def maximum(self, a: Any, b: Any) -> Any:
        return self.xp.maximum(self.const(a), self.const(b))

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self.xp.where(cond, self.const(a), self.const(b))

    def log1p(self, x: Any) -> Any:
        return self.xp.log1p(self.const(x))

    def expm1(self, x: Any) -> Any:
        return self.xp.expm1(self.const(x))

    def exp(self, x: Any) -> Any:
        return self.xp.exp(self.const(x))

    def power(self, a: Any, b: Any) -> Any:
        return self.xp.pow(self.const(a), self.const(b))


Ops = ScalarOps | ArrayOps


def ops_for(t: Any, name: str = "t") -> Ops:
    """Validate an update count and pick the arithmetic for it.

    Raises:
        TypeError: ``t`` is not a Python int or a 0-d integer array.
        ValueError: ``t`` is negative (checked where its value is on the host).
    """
    if isinstance(t, bool) or not (isinstance(t, int) or compat.is_array_api_obj(t)):
        raise TypeError(
            f"{name} must be a Python int or a 0-d integer array, got {type(t).__name__} {t!r}"
        )
    if isinstance(t, int):
        if t < 0:
            raise ValueError(f"{name} must be >= 0, got {t}")
        return ScalarOps(t)
    xp = compat.array_namespace(t)
    if t.ndim != 0 or not xp.isdtype(t.dtype, "integral"):
        raise TypeError(
            f"{name} must be a 0-d integer array, got shape {tuple(t.shape)} dtype {t.dtype}"
        )
    if is_host_array(t) and int(t) < 0:
        raise ValueError(f"{name} must be >= 0, got {int(t)}")
    return ArrayOps(t)
