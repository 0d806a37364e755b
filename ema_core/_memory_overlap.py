"""Where an array's memory lies, for the in-place write checks of ``_writes``: what the memory
belongs to (a torch storage, the numpy array owning the data), the byte range an array spans,
and whether two arrays share an element. Frameworks are recognised through array-api-compat and
``sys.modules``; none is imported here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import array_api_compat as compat

from ema_core._types import Array

__all__ = [
    "FOREIGN",
    "NO_STORAGE",
    "array_kind",
    "byte_span",
    "memory_key",
    "overlap",
    "same_elements",
]


def same_elements(s: Any, p: Any) -> bool:
    """The same element at every index: one start address, shape, strides and item size."""
    s, p = _unwrap(s), _unwrap(p)
    if compat.is_numpy_array(s) and compat.is_numpy_array(p):
        layout = ("shape", "strides", "itemsize")
        start = s.__array_interface__["data"][0] == p.__array_interface__["data"][0]
        return start and all(getattr(s, a) == getattr(p, a) for a in layout)
    if array_kind(s) == "torch" and array_kind(p) == "torch":
        same = s.data_ptr() == p.data_ptr() and s.element_size() == p.element_size()
        return bool(same and s.shape == p.shape and s.stride() == p.stride())
    return s is p


#: Array type -> "numpy", "strict" (array-api-strict over numpy), "torch" (plain tensors) or
#: "other" (compared by identity: JAX, CuPy, DTensor).
_KINDS: dict[type, str] = {}
#: The group of numpy arrays over memory that no numpy array owns (all compared by range).
FOREIGN = "foreign"


def array_kind(a: Any) -> str:
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
    return getattr(a, "_array", a) if array_kind(a) == "strict" else a


#: A tensor inside a ``torch.func`` transform: ema-core writes shadows in place and reads
#: memory, which the transform's wrappers (batched, gradient-tracking) do not expose.
NO_STORAGE = (
    "ema_core cannot update tensors inside a torch.func transform (vmap, grad, ...): they "
    "have no storage to read or write; call it outside the transform"
)


def memory_key(a: Any) -> Any:
    """What ``a``'s memory belongs to: a torch storage, the numpy array owning the data, or
    ``FOREIGN`` (numpy over foreign memory); None for arrays compared by identity only.

    Raises:
        TypeError: a tensor of a ``torch.func`` transform (``NO_STORAGE``).
    """
    kind = array_kind(a)
    if kind == "torch":  # a meta or empty storage has no memory (its pointer is 0)
        try:
            return a.untyped_storage().data_ptr() or None
        except NotImplementedError as error:  # torch.func's wrappers (vmap, grad) hide it
            raise TypeError(NO_STORAGE) from error
    if kind == "strict":
        a = getattr(a, "_array", None)
    elif kind != "numpy":
        return None
    root = a if a.base is None else a.base
    owned = isinstance(root, sys.modules["numpy"].ndarray) and root.base is None
    return id(root) if owned else FOREIGN


def byte_span(a: Any) -> tuple[int, int]:
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


def overlap(a: Array, b: Array) -> bool:
    """Whether two arrays with overlapping byte ranges share an element (exact for numpy and
    plain torch tensors: interleaved views, ``b[0::2]`` beside ``b[1::2]``, share none)."""
    np = sys.modules.get("numpy")
    if np is None:
        return True
    try:
        a, b = _numpy_layout(np, _unwrap(a)), _numpy_layout(np, _unwrap(b))
    except ValueError:  # a layout numpy cannot hold (a view expanded past its sizes)
        return True
    if a is None or b is None:
        return True
    try:
        return bool(np.shares_memory(a, b, max_work=1 << 16))
    except np.exceptions.TooHardError:
        return True


class _Layout:
    """An object numpy reads an array from: the addresses of a torch tensor's elements."""

    def __init__(self, interface: dict[str, Any]) -> None:
        self.__array_interface__ = interface


def _numpy_layout(np: Any, a: Any) -> Any:
    """``a`` itself (numpy), or a numpy array over the addresses of a plain torch tensor's
    elements (its pointer, shape and byte strides; opaque items of its size), which
    ``np.shares_memory`` compares without reading them; None for other arrays."""
    if compat.is_numpy_array(a):
        return a
    if array_kind(a) != "torch":
        return None
    size = a.element_size()
    interface = {
        "shape": tuple(a.shape),
        "typestr": f"|V{size}",
        "data": (a.data_ptr(), False),
        "strides": tuple(st * size for st in a.stride()),
        "version": 3,
    }
    return np.asarray(_Layout(interface))
