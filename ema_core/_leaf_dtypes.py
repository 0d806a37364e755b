"""The dtype rules of a shadow and its params leaf: numeric dtypes in native byte order only, a
real floating shadow for a real floating leaf and a complex one for a complex leaf, equal dtypes
for the integer and bool leaves that are copied, and (JAX) no 64-bit dtype while x64 is off.
``_leaf_checks`` applies them pair by pair, naming the leaf by its path."""

from __future__ import annotations

from typing import Any

import array_api_compat as compat

from ema_core._leaf_checks_x64 import check_x64_dtype
from ema_core._paths import Path, path_str
from ema_core._types import LeafKind, Namespace, NonFloatPolicy

_NUMERIC = ("bool", "integral", "real floating", "complex floating")
_X64_FIX = "enable x64 as when it was made, or cast it to {narrow} yourself"


def leaf_kind(xp: Namespace, dtype: Any) -> LeafKind:
    if _cupy_bfloat16(xp, dtype):
        return "float"
    return "float" if xp.isdtype(dtype, ("real floating", "complex floating")) else "exact"


def _cupy_bfloat16(xp: Namespace, dtype: Any) -> bool:
    """CuPy 14's bfloat16, which its ``isdtype`` does not call real floating; the CuPy
    backend's kernels average it (the first H200 run refused bf16 params here)."""
    return compat.is_cupy_namespace(xp) and getattr(dtype, "name", None) == "bfloat16"


def _complex(xp: Namespace, dtype: Any) -> bool:
    return not _cupy_bfloat16(xp, dtype) and bool(xp.isdtype(dtype, "complex floating"))


def pair_kind(
    xp: Namespace,
    s_dtype: Any,
    p_dtype: Any,
    path: Path,
    names: tuple[str, str],
    non_float: NonFloatPolicy,
) -> LeafKind:
    """The kind of the pair at ``path`` (``"float"`` or ``"exact"``) after checking its dtypes
    by the rules above; ``TypeError`` naming both leaves otherwise."""
    where_s, where_p = path_str(names[0], path), path_str(names[1], path)
    _check_numeric(xp, s_dtype, where_s)
    _check_numeric(xp, p_dtype, where_p)
    if compat.is_jax_namespace(xp):
        check_x64_dtype(s_dtype, where_s, _X64_FIX)
    kind = leaf_kind(xp, p_dtype)
    if kind == "float":
        if leaf_kind(xp, s_dtype) != "float" or (_complex(xp, s_dtype) != _complex(xp, p_dtype)):
            raise TypeError(
                f"{where_s} has dtype {s_dtype} but {where_p} is {p_dtype}; a real floating "
                "leaf needs a real floating shadow, a complex leaf a complex one"
            )
        if compat.is_torch_namespace(xp):
            _check_not_float8(s_dtype, where_s)
            _check_not_float8(p_dtype, where_p)
        return kind
    if non_float == "error":
        raise TypeError(f"{where_p} has non-floating dtype {p_dtype} and non_float='error'")
    if s_dtype != p_dtype:
        raise TypeError(
            f"{where_s} has dtype {s_dtype} but {where_p} is {p_dtype}; integer and "
            "bool leaves are copied, so their dtypes must be equal"
        )
    return kind


def _check_not_float8(dtype: Any, where: str) -> None:
    """torch has no arithmetic (nor type promotion) in its 1-byte floats: a float8 leaf would
    fail inside the kernels, after other groups were written (the ``EMA`` class refuses it
    likewise)."""
    if dtype.itemsize == 1:
        raise TypeError(
            f"{where} has dtype {dtype}: a 1-byte float (float8) cannot be averaged (torch "
            "has no arithmetic in it); average a wider copy (e.g. .to(torch.bfloat16))"
        )


def _check_numeric(xp: Namespace, dtype: Any, where: str) -> None:
    """Only numeric dtypes in native byte order: object, string, datetime or big-endian (on a
    little-endian host) leaves cannot be averaged nor copied by the kernels."""
    try:
        numeric = _cupy_bfloat16(xp, dtype) or xp.isdtype(dtype, _NUMERIC)
    except TypeError:  # a dtype the namespace does not know (ml_dtypes' bfloat16 in numpy)
        numeric = False
    if not numeric:
        module = getattr(getattr(dtype, "type", None), "__module__", "")
        integer = str(dtype).lstrip("u").startswith("int")  # ml_dtypes' int4, uint4, int2
        wide = "numpy.int8" if integer else "numpy.float32"
        extension = (
            ""
            if not module.startswith("ml_dtypes")
            else (
                f" in numpy ({dtype} is ml_dtypes' extension dtype, as jax.device_get returns "
                f"for a JAX array of {dtype}: keep such leaves as JAX or torch arrays, or pass "
                f".astype({wide}))"
            )
        )
        raise TypeError(
            f"{where} has dtype {dtype}; only bool, integer, real and complex floating dtypes "
            f"are allowed{extension}"
        )
    if not getattr(dtype, "isnative", True):
        raise TypeError(
            f"{where} has dtype {dtype} in non-native byte order; convert it with "
            ".astype(a.dtype.newbyteorder('='))"
        )
