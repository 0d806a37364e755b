"""What the numpy backend's plan cache reads of an array's memory: the signature that could
invalidate a plan made for the same arrays, and a view of the memory that keeps no array alive."""

from __future__ import annotations

import ctypes
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["leaf_signature", "raw_view"]

#: numpy >= 2 cannot re-point an array's memory in place (``a.data = ...`` was removed).
_POINTER_FIXED = int(np.__version__.split(".")[0]) >= 2
_SIGNATURE = operator.attrgetter("shape", "strides", "dtype", "flags.writeable")
_SIGNATURE_AND_POINTER = operator.attrgetter(
    "ctypes.data", "shape", "strides", "dtype", "flags.writeable"
)


def leaf_signature(leaves: Sequence[np.ndarray]) -> list[Any]:
    """What could invalidate a plan made for these same array objects, one entry per leaf:
    ``(shape, strides, dtype, writeable)``, and the data pointer first under numpy < 2.

    On numpy >= 2 the memory of a live array cannot move while its shape stays (``a.data`` is
    read-only, ``resize`` changes the shape and refuses a referenced array), so the pointer,
    which costs more than the rest together, is left out there (read through ``a.ctypes.data``,
    the cheaper of the two ways, under numpy < 2).

    Example:
        >>> import numpy as np
        >>> a = np.zeros((2, 3), np.float32)
        >>> before = leaf_signature([a])
        >>> a.flags.writeable = False
        >>> leaf_signature([a]) == before
        False
    """
    return list(map(_SIGNATURE if _POINTER_FIXED else _SIGNATURE_AND_POINTER, leaves))


def raw_view(a: np.ndarray) -> np.ndarray:
    """A view of a C-contiguous array's memory that holds no reference to the array."""
    memory: Any = (ctypes.c_char * a.nbytes).from_address(a.ctypes.data)
    return np.frombuffer(memory, dtype=a.dtype).reshape(a.shape)
