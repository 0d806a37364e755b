"""CPU tensors' memory as the host engine sees it: numpy views made from the data address
(``view``), and the check that a tensor's storage still holds its elements (``short_memory``:
a storage freed or shrunk by ``untyped_storage().resize_`` keeps the tensor's shape, and both
numpy views and torch's own fused ops would then read memory the tensor does not own)."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from ema_core._memory_overlap import NO_STORAGE

if importlib.util.find_spec("numpy") is not None:  # torch runs without numpy: then no views
    import numpy as np

__all__ = ["short_memory", "view"]


def view(t: torch.Tensor) -> np.ndarray | None:
    """A numpy view of a CPU tensor's memory, strides kept (bfloat16 as uint16 bits); no copy.
    None when numpy cannot see it (conjugate or negative bit set).

    Made from the data address (``__array_interface__``), not ``Tensor.numpy()``: that marks
    the storage not resizable for good, so a user's ``param.resize_(...)`` would fail after one
    update. The view holds the tensor (its storage stays alive); a storage resized since moves
    its data, which ``stale`` sees by the changed data pointer."""
    if t.is_conj() or t.is_neg():
        return None
    strided = None if t.is_contiguous() else tuple(t.element_size() * n for n in t.stride())
    interface = {
        "data": (t.data_ptr(), False),
        "shape": t.shape,  # a tuple of ints already
        "strides": strided,  # None: C-contiguous
        "typestr": _TYPESTR[t.dtype],
        "version": 3,
    }
    return np.asarray(_Memory(t, interface))  # no detach: the caller's plan holds t anyway


class _Memory:
    """A tensor's memory as numpy reads it; the arrays made from it keep it (and the tensor)."""

    __slots__ = ("__array_interface__", "tensor")

    def __init__(self, tensor: torch.Tensor, interface: dict[str, Any]) -> None:
        self.tensor = tensor
        self.__array_interface__ = interface


_TYPESTR: dict[torch.dtype, str] = {
    torch.float64: "<f8",
    torch.float32: "<f4",
    torch.float16: "<f2",
    torch.bfloat16: "<u2",  # the bit patterns (the engine's "bfloat16" format)
}


def short_memory(t: torch.Tensor) -> str | None:
    """Why ``t``'s storage cannot hold its elements (freed or shrunk by
    ``untyped_storage().resize_``), or None when it can: a view made anyway would read or write
    memory the tensor does not own (and torch's own ``copy_`` / ``_foreach_lerp_`` crash)."""
    if t.layout != torch.strided or t.is_meta or t.numel() == 0:
        return None  # no storage to hold elements (sparse, meta), or nothing to hold
    try:
        held, size = t.untyped_storage().nbytes(), t.element_size()
    except NotImplementedError as error:  # torch.func's wrappers (vmap, grad) hide it
        raise TypeError(NO_STORAGE) from error
    end = t.storage_offset() + t.numel()  # one past the last element when contiguous
    if held >= end * size and t.is_contiguous():
        return None
    spans = ((n - 1) * abs(k) for n, k in zip(t.shape, t.stride(), strict=True))
    need = (t.storage_offset() + sum(spans) + 1) * size
    if held >= need:
        return None
    return (
        f"its storage holds {held} bytes, but shape {tuple(t.shape)} needs {need}: its memory "
        "was freed or shrunk (untyped_storage().resize_), so there are no values to read or write"
    )
