"""What the numpy backend's plan cache reads of an array's memory: the signature that could
invalidate a plan made for the same arrays, and a view of the memory that keeps no array alive."""

from __future__ import annotations

import ctypes
import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Layout", "leaf_signature", "raw_view", "same_signature"]

#: numpy >= 2 cannot re-point an array's memory in place (``a.data = ...`` was removed).
_POINTER_FIXED = int(np.__version__.split(".")[0]) >= 2
_SIGNATURE = operator.attrgetter("shape", "strides", "dtype", "flags.writeable")
_SIGNATURE_AND_POINTER = operator.attrgetter(
    "ctypes.data", "shape", "strides", "dtype", "flags.writeable"
)
_BASE = operator.attrgetter("base")


class Layout(NamedTuple):
    """What could invalidate a plan made for a list of arrays: one key per array (below) and
    the arrays' bases, held (so no other object takes a base's identity meanwhile) and
    compared by identity."""

    keys: list[Any]
    bases: list[Any]


def leaf_signature(leaves: Sequence[np.ndarray]) -> Layout:
    """What could invalidate a plan made for these same array objects: per leaf
    ``(shape, strides, dtype, writeable)`` (the data pointer first under numpy < 2) and its
    ``base``.

    On numpy >= 2 the memory of a live array moves only through ``ndarray.__setstate__``
    (``a.data`` is read-only, ``resize`` changes the shape and refuses a referenced array).
    Where it moves it, the base changes too: a view becomes the owner of new memory (base
    None), and an array of more than 1,000 bytes becomes a view of the state's bytes; an
    array of at most 1,000 bytes that owns its memory gets a fresh allocation of the same size
    and stays its owner, which only the pointer would show. The pointer costs more than the
    rest together (about 2.4 us an array: 48 ms on 20,000 arrays, more than the update), so it
    is left out there; under numpy < 2 it is read through ``a.ctypes.data``.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((2, 3), np.float32)
        >>> before = leaf_signature([a])
        >>> a.flags.writeable = False
        >>> same_signature(before, [a])
        False
    """
    keys = list(map(_SIGNATURE if _POINTER_FIXED else _SIGNATURE_AND_POINTER, leaves))
    return Layout(keys, list(map(_BASE, leaves)))


def same_signature(kept: Layout, leaves: Sequence[np.ndarray]) -> bool:
    """Whether ``leaves`` still have the layout ``kept`` recorded (their bases the same
    objects)."""
    key = _SIGNATURE if _POINTER_FIXED else _SIGNATURE_AND_POINTER
    return (
        len(leaves) == len(kept.keys)
        and list(map(key, leaves)) == kept.keys
        and all(map(operator.is_, map(_BASE, leaves), kept.bases))
    )


def raw_view(a: np.ndarray) -> np.ndarray:
    """A view of a C-contiguous array's memory that holds no reference to the array."""
    memory: Any = (ctypes.c_char * a.nbytes).from_address(a.ctypes.data)
    return np.frombuffer(memory, dtype=a.dtype).reshape(a.shape)
