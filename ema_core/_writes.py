"""Which shadows may be written in place, checked before the first write.

An array takes an in-place write unless it is a JAX array, read-only, a broadcast view (a stride
of 0: several elements share one memory location) or a torch inference tensor outside
``torch.inference_mode``. Arrays written in place must not share memory: the same array twice in
a shadow (tied weights copied with their tie) would be updated twice. Frameworks are recognised
through array-api-compat and ``sys.modules``; none is imported here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import array_api_compat as compat

from ema_core._paths import Path, path_str
from ema_core._types import Array


def resolve_writes(
    copy: bool | None, shadows: Sequence[Array], paths: Sequence[Path], name: str = "shadow"
) -> list[bool]:
    """Per leaf, whether the result is written into the shadow in place.

    ``copy=True``: never. ``copy=None``: where the array can be written. ``copy=False``:
    always, and a ``ValueError`` when some array cannot be written. A ``ValueError`` too when
    two arrays to be written share memory.
    """
    if copy is not None and not isinstance(copy, bool):
        raise TypeError(f"copy must be None, True or False, got {copy!r}")
    if copy is True:
        return [False] * len(shadows)
    why = [why_not_writeable(s) for s in shadows]
    if copy is False and any(why):
        i = next(i for i, w in enumerate(why) if w)
        raise ValueError(
            f"copy=False needs writeable arrays, but {path_str(name, paths[i])} cannot be "
            f"written in place ({why[i]}); pass copy=None or copy=True"
        )
    writes = [w is None for w in why]
    written = [i for i, w in enumerate(writes) if w]
    check_no_shared_memory([shadows[i] for i in written], [paths[i] for i in written], name)
    return writes


def why_not_writeable(s: Array) -> str | None:
    """Why ``s`` cannot take an in-place write, or None when it can."""
    kind = _kind(s)
    if kind == "torch" or (kind == "other" and compat.is_torch_array(s)):
        strides = s.stride()
        if s.is_inference() and not sys.modules["torch"].is_inference_mode_enabled():
            return "an inference tensor outside torch.inference_mode"
    elif kind in ("numpy", "strict"):
        s = getattr(s, "_array", s)
        if not s.flags.writeable:
            return "read-only"
        strides = s.strides
    elif not compat.is_writeable_array(s):
        return "read-only"
    else:
        strides = getattr(s, "strides", None)
    if (
        strides
        and 0 in strides
        and any(st == 0 and n > 1 for st, n in zip(strides, s.shape, strict=True))
    ):
        return "a broadcast view: several elements share one memory location"
    return None


def check_no_shared_memory(arrays: Sequence[Array], paths: Sequence[Path], name: str) -> None:
    """Arrays to be written in place must be distinct objects whose memory does not overlap.

    Arrays are grouped by the memory they live in (a torch storage, the numpy array owning the
    data); within a group, and for numpy arrays over foreign memory, byte ranges are compared
    (exactly for numpy when they interleave). Other arrays are compared by identity.
    """
    if len(arrays) < 2:
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.compiler.is_compiling():
        return  # fake tensors have no memory to compare
    first: dict[int, int] = {}
    groups: dict[Any, list[int]] = {}
    for i, a in enumerate(arrays):
        j = first.setdefault(id(a), i)
        if j != i:
            raise _shared(name, paths[j], paths[i])
        key = _memory_key(a)
        if key is not None:
            groups.setdefault(key, []).append(i)
    loose = groups.pop(_FOREIGN, [])
    candidates = loose + [i for g in groups.values() if len(g) > 1 for i in g]
    spans = sorted((*_byte_span(arrays[i]), i) for i in candidates)
    end, last = -1, -1
    for lo, hi, i in spans:
        if lo < min(hi, end) and _overlap(arrays[last], arrays[i]):
            raise _shared(name, paths[last], paths[i])
        if hi > end:
            end, last = hi, i


def _shared(name: str, a: Path, b: Path) -> ValueError:
    return ValueError(
        f"{path_str(name, a)} and {path_str(name, b)} share memory (one array twice, or "
        "overlapping views); an in-place update would apply twice: give each leaf its own "
        "array, or pass copy=True"
    )


#: Array type -> "numpy", "strict" (array-api-strict over numpy), "torch" (plain tensors) or
#: "other" (compared by identity: JAX, CuPy, DTensor).
_KINDS: dict[type, str] = {}
#: The group of numpy arrays over memory that no numpy array owns (all compared by range).
_FOREIGN = "foreign"


def _kind(a: Any) -> str:
    """The kind of ``a`` (found once per type)."""
    kind = _KINDS.get(type(a))
    if kind is None:
        torch = sys.modules.get("torch")
        plain = () if torch is None else (torch.Tensor, torch.nn.Parameter)
        if type(a).__module__.partition(".")[0] == "array_api_strict":
            kind = "strict"
        else:
            kind = "numpy" if compat.is_numpy_array(a) else "torch" if type(a) in plain else "other"
        _KINDS[type(a)] = kind
    return kind


def _unwrap(a: Any) -> Any:
    """The numpy array inside an array-api-strict array (which hides flags and strides)."""
    return getattr(a, "_array", a) if _kind(a) == "strict" else a


def _memory_key(a: Any) -> Any:
    """What ``a``'s memory belongs to: a torch storage, the numpy array owning the data, or
    ``_FOREIGN`` (numpy over foreign memory); None for arrays compared by identity only."""
    kind = _kind(a)
    if kind == "torch":  # a meta or empty storage has no memory (its pointer is 0)
        return a.untyped_storage().data_ptr() or None
    if kind == "strict":
        a = getattr(a, "_array", None)
    elif kind != "numpy":
        return None
    root = a if a.base is None else a.base
    return id(root) if compat.is_numpy_array(root) and root.base is None else _FOREIGN


def _byte_span(a: Any) -> tuple[int, int]:
    """[first, last + 1) byte addresses of a plain torch tensor or a numpy array."""
    a = _unwrap(a)
    if compat.is_numpy_array(a):
        return _span(a.__array_interface__["data"][0], 1, a.strides, a.shape, a.itemsize)
    size = a.element_size()
    return _span(a.data_ptr(), size, a.stride(), a.shape, size)


def _span(
    ptr: int, unit: int, strides: Sequence[int], shape: Sequence[int], itemsize: int
) -> tuple[int, int]:
    """[first, last + 1) byte addresses of an array with strides in units of ``unit`` bytes;
    an empty range for an empty array (nothing is written)."""
    if 0 in shape:
        return ptr, ptr
    lo = hi = ptr
    for st, n in zip(strides, shape, strict=True):
        reach = st * (n - 1) * unit
        if reach < 0:
            lo += reach
        else:
            hi += reach
    return lo, hi + itemsize


def _overlap(a: Array, b: Array) -> bool:
    """Whether two arrays with overlapping byte ranges share an element (exact for numpy)."""
    a, b = _unwrap(a), _unwrap(b)
    if not (compat.is_numpy_array(a) and compat.is_numpy_array(b)):
        return True
    np = sys.modules["numpy"]
    try:
        return bool(np.shares_memory(a, b, max_work=1 << 16))
    except np.exceptions.TooHardError:
        return True
