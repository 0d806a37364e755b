"""Scalar arithmetic that runs the same on Python numbers and on 0-d arrays of any namespace.

Schedules are written once against this small interface: ``ScalarOps`` computes in Python floats
(float64 on the host), ``ArrayOps`` in the widest float of the step's namespace on the step's
device, so a traced JAX step or a CUDA tensor step never leaves the device.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import array_api_compat as compat

from ema_core._types import Array, DType, Namespace, Value

#: The largest update count accepted: the largest int64 (what an array step can hold).
MAX_STEP = 2**63 - 1

#: Where the host reads a value without a device sync: torch device types and JAX platforms.
#: Values elsewhere (cuda, mps, gpu, tpu) are trusted. Tests empty it to run the device paths
#: on CPU tensors (``monkeypatch.setattr(ema_core._ops, "HOST_PLATFORMS", frozenset())``).
HOST_PLATFORMS: frozenset[str] = frozenset({"cpu"})

_FLOAT64_ON: dict[tuple[Any, Any], bool] = {}


def wide_float(xp: Namespace, device: Any = None) -> DType:
    """float64, except where it does not exist: float32 under JAX with x64 disabled and on a
    ``device`` without float64 (Apple MPS, array-api-strict's ``Device("no_float64")``)."""
    if compat.is_jax_namespace(xp):
        return xp.float64 if xp.asarray(0.0).dtype == xp.float64 else xp.float32
    if device is None or compat.is_numpy_namespace(xp):
        return xp.float64
    try:
        has = _FLOAT64_ON.get((xp, device))
    except TypeError:  # an unhashable device: asked every time
        return xp.float64 if _has_float64(xp, device) else xp.float32
    if has is None:  # asked once per device: torch answers by allocating on it
        has = _FLOAT64_ON[xp, device] = _has_float64(xp, device)
    return xp.float64 if has else xp.float32


def default_int(xp: Namespace, device: Any = None) -> DType:
    """The namespace's default integer dtype on ``device`` (int64; JAX's int32 with x64 off,
    read now: JAX's x64 mode may be switched at any time; int32 on array-api-strict's
    ``Device("no_x64")``)."""
    info = xp.__array_namespace_info__()
    if device is None or compat.is_jax_namespace(xp):  # JAX's answer is x64's, not a device's
        return info.default_dtypes()["integral"]
    return info.default_dtypes(device=device)["integral"]


def _has_float64(xp: Namespace, device: Any) -> bool:
    info = xp.__array_namespace_info__()
    return "float64" in info.dtypes(device=device, kind="real floating")


def is_host_array(x: Any) -> bool:
    """True for arrays whose values can be read without a device sync (numpy, array-api-strict)."""
    if compat.is_numpy_array(x):
        return True
    return type(x).__module__.partition(".")[0] == "array_api_strict"


def is_readable(x: Any) -> bool:
    """True for an array whose value the host reads without a device sync or a trace: numpy,
    array-api-strict, a CPU torch tensor (outside ``torch.compile``), a concrete JAX array on
    CPU devices. Such values are range-checked; the others (CUDA, traced) are trusted.

    Only ``sys.modules`` is read: no framework is imported here.
    """
    if is_host_array(x):
        return True
    if compat.is_torch_array(x):
        torch = sys.modules["torch"]
        return x.device.type in HOST_PLATFORMS and not torch.compiler.is_compiling()
    if compat.is_jax_array(x):
        if isinstance(x, sys.modules["jax"].core.Tracer) or not x.is_fully_addressable:
            return False
        return all(d.platform in HOST_PLATFORMS for d in x.devices())
    return False


def host_float(x: Any) -> float:
    """``float(x)`` of a number or 0-d array the host reads; a torch tensor that requires grad
    (a learnable decay) is detached first, so torch does not warn about it."""
    if compat.is_torch_array(x) and x.requires_grad:
        x = x.detach()
    return float(x)


class ScalarOps:
    """Operations on Python floats."""

    def __init__(self, t: int, given: Any = None) -> None:
        self.raw: Any = t
        self.t: Any = float(t)
        #: The step as the caller gave it (a CPU tensor read as ``t``): what a user's callable
        #: schedule is called with, as before.
        self.given: Any = t if given is None else given

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
        self.device = compat.device(t)
        self.dtype = wide_float(self.xp, self.device)
        self.raw: Any = t
        self.t: Any = self.xp.astype(t, self.dtype)

    def const(self, value: Value) -> Any:
        if isinstance(value, (int, float)) or compat.is_numpy_array(value):  # host numbers:
            # a fill on the device, not a host-to-device copy
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
    """Validate an update count and pick the arithmetic for it: Python floats for a Python
    int and for a CPU torch tensor (read once: it then gives the bits the same int step gives),
    the array's namespace for other arrays.

    Raises:
        TypeError: ``t`` is not a Python int or a 0-d integer array.
        ValueError: ``t`` is negative or above ``MAX_STEP`` (checked where the host reads its
            value: Python ints, host arrays, CPU torch tensors, concrete CPU JAX arrays).
    """
    check_step(t, name)
    if isinstance(t, int):
        return ScalarOps(t)
    if compat.is_torch_array(t) and is_readable(t):  # a CPU tensor: the int step's floats
        return ScalarOps(int(t), given=t)
    return ArrayOps(t)


def check_step(t: Any, name: str = "t") -> None:
    """``ops_for``'s checks alone (its ``Raises``), for a caller that computes elsewhere."""
    if isinstance(t, bool) or not (isinstance(t, int) or compat.is_array_api_obj(t)):
        raise TypeError(
            f"{name} must be a Python int or a 0-d integer array, got {type(t).__name__} {t!r}"
        )
    if isinstance(t, int):
        _check_count(t, name)
        return
    check_count_array(t, name)
    if is_readable(t):
        _check_count(int(t), name)


def check_count_array(t: Array, name: str) -> None:
    """An array count must be 0-d and of an integer dtype (its value is not read here).

    Raises:
        TypeError: another shape or dtype.
    """
    xp = compat.array_namespace(t)
    if t.ndim != 0 or not xp.isdtype(t.dtype, "integral"):
        raise TypeError(
            f"{name} must be a 0-d integer array, got shape {tuple(t.shape)} dtype {t.dtype}"
        )
    if compat.is_torch_array(t) and str(t.dtype) in _TORCH_BARE_UNSIGNED:
        raise TypeError(
            f"{name} is a {t.dtype} tensor, a dtype torch gives few operations (no "
            "comparison on the CPU: the next step's saturation could not run); pass an int64 "
            "(or int32, uint8) tensor"
        )


#: Unsigned torch dtypes with "limited support" (torch 2.x): ``<`` and ``where`` are missing.
_TORCH_BARE_UNSIGNED = ("torch.uint16", "torch.uint32", "torch.uint64")


def _check_count(t: int, name: str) -> None:
    if t < 0:
        raise ValueError(f"{name} must be >= 0, got {t}")
    if t > MAX_STEP:
        shown = str(t) if t.bit_length() < 128 else f"an int of {t.bit_length()} bits"
        raise ValueError(f"{name} must be <= 2**63 - 1 (the largest int64), got {shown}")


def concrete_step(step: Any, name: str = "step") -> int | Array:
    """Validate a step (``ops_for``); host arrays (numpy, array-api-strict) become Python ints,
    other arrays (torch, JAX, CuPy) are kept as they are."""
    ops_for(step, name)
    return int(step) if is_host_array(step) else step


def next_step(step: Any, name: str = "state.step") -> int | Array:
    """``step + 1``, saturating at the largest value of an array step's dtype (2**31 - 1 for
    int32) instead of wrapping to a negative count; a Python int step at ``MAX_STEP`` (2**63 -
    1, the largest step) is a ``ValueError`` naming ``name``: no update can follow it."""
    t = concrete_step(step, name)
    if isinstance(step, int):
        if step >= MAX_STEP:
            raise ValueError(
                f"{name} is 2**63 - 1, the largest step (an int64): no update can follow it"
            )
        return step + 1
    xp = compat.array_namespace(step)
    top = int(xp.iinfo(step.dtype).max)
    if isinstance(t, int):
        return min(t + 1, top)
    return xp.where(t < xp.full_like(t, top), t + 1, t)  # a Python int may not fit JAX's int32
