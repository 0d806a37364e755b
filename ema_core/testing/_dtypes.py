"""The dtype an EMA under test must return for each leaf, and the check of it.

The contract (README "Test your own EMA"): a floating leaf's average has its shadow dtype
(``Config.dtype``: None keeps float32 and wider and widens float16/bfloat16 to float32,
``"same"`` keeps the param's, a name sets it), except the read of an ``init="zeros"`` EMA over
a float16/bfloat16 shadow, which is float32; an integer or bool leaf (copied or frozen,
``non_float``) keeps the param's dtype. ``returned_dtype="kind"`` relaxes the check to the
kind of dtype (bool, signed or unsigned integer, real or complex float), for an EMA that
legitimately computes in another width (a float64 reference loop): a float copy of an integer
buffer still fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import array_api_compat as compat
import numpy as np

from ema_core._config import Config, shadow_dtype_name
from ema_core._core import dtype_name

__all__ = ["MODES", "check", "expected", "kind", "mode", "name_of"]

#: ``assert_matches(returned_dtype=...)``: the exact dtype, or only its kind.
MODES = ("contract", "kind")
#: A half shadow read with a zeros-start correction comes back in its wide form.
_WIDE_READ = {"float16": "float32", "bfloat16": "float32", "complex32": "complex64"}


def mode(value: Any) -> str:
    """``returned_dtype`` checked: one of ``MODES``.

    Raises:
        TypeError: not a str. ValueError: another str.
    """
    if not isinstance(value, str):
        raise TypeError(f"returned_dtype must be a str, got {type(value).__name__} {value!r}")
    if value not in MODES:
        raise ValueError(f"returned_dtype must be one of {list(MODES)}, got {value!r}")
    return value


def expected(config: Config, dtypes: Sequence[str], floating: Sequence[bool]) -> list[str]:
    """Per leaf, the dtype name of the average the contract gives it, from the params'
    dtype names ``dtypes`` (``floating``: whether each is averaged).

    Example:
        >>> expected(Config(init="zeros", dtype="same"), ["float16", "int64"], [True, False])
        ['float32', 'int64']
    """
    out = []
    for given, f in zip(dtypes, floating, strict=True):
        name = given.rpartition(".")[2]  # 'torch.int32' -> 'int32'
        kept = shadow_dtype_name(config.dtype, name) if f else name
        out.append(_WIDE_READ.get(kept, kept) if f and config.init == "zeros" else kept)
    return out


def name_of(leaf: Any) -> str:
    """A returned leaf's dtype name (``'float32'``, ``'int64'``; a Python number's as numpy
    makes it)."""
    if isinstance(leaf, (bool, int, float, complex)):
        return str(np.asarray(leaf).dtype)
    return dtype_name(compat.array_namespace(leaf), leaf.dtype).rpartition(".")[2]


def check(got: Sequence[str], want: Sequence[str], how: str, places: Sequence[str]) -> str | None:
    """The failure message of the first leaf whose returned dtype differs from ``want``
    (under ``how``: ``"contract"`` the name, ``"kind"`` its kind), or None; ``places`` name
    the leaves (``"step t=3, leaf params['w']"``). ``assert_matches``
    raises the first one after the whole trajectory's values matched: a wrong value is the
    deeper defect, and its message (element, values, decay) says more."""
    for g, w, place in zip(got, want, places, strict=True):
        if g == w or (how == "kind" and kind(g) == kind(w)):
            continue
        rule = "the dtype" if how == "contract" else "the kind of dtype"
        return (
            f"the EMA returned dtype {g} at {place}; ema-core's contract gives {w} there, "
            f"and {rule} must match "
            f"(returned_dtype={how!r}; 'kind' accepts another width of the same kind)"
        )
    return None


def kind(name: str) -> str:
    """The kind of a dtype name: "bool", "int", "uint", "float" or "complex" (else the name).

    Example:
        >>> kind("bfloat16"), kind("uint8"), kind("int64"), kind("complex64")
        ('float', 'uint', 'int', 'complex')
    """
    if name == "bool":
        return "bool"
    if name.startswith(("int", "uint")):
        return name.rstrip("0123456789")
    return "complex" if name.startswith("complex") else "float" if "float" in name else name
