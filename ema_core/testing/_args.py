"""The kit's own argument checks: namespaces, dtype names, counts and tolerances, each refused
by name (``TypeError`` for a type, ``ValueError`` for a value) before anything runs."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import array_api_compat as compat
import numpy as np

from ema_core._checks import check_positive
from ema_core._types import Namespace

#: The non-floating dtype names a namespace may offer (copied, never averaged).
NON_FLOAT = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
#: The floating dtype names the kit draws and compares.
FLOATING = ("float16", "bfloat16", "float32", "float64", "complex64", "complex128")


def namespace(xp: Any, arg: str) -> Namespace:
    """``xp`` as an Array API namespace: one that has ``asarray`` and ``astype`` as it is, or the
    array-api-compat namespace of its arrays (so ``torch`` or ``numpy`` themselves work)."""
    if callable(getattr(xp, "asarray", None)) and callable(getattr(xp, "astype", None)):
        return xp
    try:
        return compat.array_namespace(xp.asarray(0.0))
    except (AttributeError, TypeError):
        raise TypeError(
            f"{arg} must be an Array API namespace (array_api_strict, numpy, torch, jax.numpy, "
            f"...), got {type(xp).__name__} {xp!r}"
        ) from None


def dtype_names(value: Any, xp: Namespace, arg: str) -> tuple[str, ...]:
    """A non-empty tuple or list of dtype names that ``xp`` makes as asked."""
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(f"{arg} must be a non-empty tuple of dtype names, got {value!r}")
    return tuple(dtype(name, xp, arg) for name in value)


def dtype(name: Any, xp: Namespace, arg: str) -> str:
    """A dtype name of ``FLOATING`` or ``NON_FLOAT`` that ``xp`` really makes (JAX without x64
    has ``jnp.float64`` but makes float32 arrays with it)."""
    allowed = FLOATING + NON_FLOAT
    if not isinstance(name, str):
        raise TypeError(f"{arg} must hold dtype names such as 'float32', got {name!r}")
    if name not in allowed:
        raise ValueError(f"{arg} has {name!r}; allowed dtype names: {', '.join(allowed)}")
    wanted = getattr(xp, name, None)
    made = None
    if wanted is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            made = xp.astype(xp.asarray([0.0]), wanted).dtype
    if wanted is None or made != wanted:
        raise ValueError(f"{arg} has {name!r}, which {getattr(xp, '__name__', xp)} cannot make")
    return name


def count(value: Any, arg: str) -> int:
    """An int >= 1."""
    return int(check_positive(arg, value, integer=True))


def tolerance(value: Any, arg: str) -> float | None:
    """None, or a finite real number >= 0: a Python one, or a real numpy scalar (a tolerance
    sized as ``np.finfo(np.float32).eps * 8`` is a float32; ml_dtypes' bfloat16 eps too)."""
    if value is None:
        return None
    ml_dtypes = type(value).__module__.startswith("ml_dtypes")  # its bfloat16 is kind "V"
    scalar = isinstance(value, np.generic) and (value.dtype.kind in "fiu" or ml_dtypes)
    if isinstance(value, (bool, np.bool_)) or not (isinstance(value, numbers.Real) or scalar):
        raise TypeError(f"{arg} must be a real number >= 0 or None, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int past the largest float
        number = math.inf
    if not math.isfinite(number) or number < 0:
        huge = isinstance(value, int) and number == math.inf  # past the largest float
        shown = "a huge int" if huge else repr(value)
        raise ValueError(f"{arg} must be a finite float >= 0 or None, got {shown}")
    return number


def function(value: Any, arg: str, signature: str) -> Callable[..., Any]:
    if not callable(value):
        raise TypeError(f"{arg} must be a callable {signature}, got {type(value).__name__}")
    return value  # type: ignore[no-any-return]


__all__ = [
    "FLOATING",
    "NON_FLOAT",
    "count",
    "dtype",
    "dtype_names",
    "function",
    "namespace",
    "tolerance",
]
