"""Where a compiled update's arrays live, checked once per signature before anything runs.

``make_update`` and the bank refuse, by name and before any buffer is donated, params committed
to other devices than the state's (``check_devices``) and a shadow sharded otherwise than its
param (``check_shardings``: JAX refuses it on explicit mesh axes naming no leaf, above
``CHUNK`` leaves only once the earlier chunks ran, and compiles it unchecked on automatic axes).
Both walk the trees; here they run only when the arrays' shardings (the sharding objects, in
order), their trees or their commitment changed since the owner's last checked call. The steady
state reads one ``sharding`` per array and compares two lists, at first by identity (an update
returns its outputs with the same sharding objects each time).
"""

from __future__ import annotations

import operator
import weakref
from typing import Any

import jax

from ema_core.jax._devices import check_devices
from ema_core.jax._sharding import check_shardings

__all__ = ["check_placements"]

_SHARDING = operator.attrgetter("sharding")
_COMMITTED = operator.attrgetter("committed")

#: Per owner (an update's chunked path object): the last checked signature, and the arrays'
#: commitment then where some were not committed (a committed array is checked more strictly).
_SEEN: weakref.WeakKeyDictionary[Any, tuple[Any, list[bool] | None]] = weakref.WeakKeyDictionary()


def check_placements(
    owner: Any,
    arrays: list[Any],
    params_arrays: list[Any],
    state_split: Any,
    params_split: Any,
    *,
    commitment: bool = True,
) -> None:
    """``check_devices`` and ``check_shardings``, unless ``owner`` checked this signature at its
    last call (nothing is read from the devices either way). ``commitment=False`` leaves the
    arrays' commitment out of the signature: for one compiled call, where JAX refuses arrays
    committed to other devices before it donates anything (the caller names them then).

    Raises:
        ValueError: as ``check_devices`` or ``check_shardings``; nothing was donated.
    """
    both = arrays, params_arrays
    shardings = _shardings(*both)
    if shardings is None:
        return  # traced: placed by the outer transformation
    key = (shardings, state_split, params_split)
    seen = _SEEN.get(owner)
    loose = seen[1] if seen is not None and commitment else None  # where some were uncommitted
    if seen is not None and seen[0] == key and (loose is None or loose == _flags(*both)):
        _SEEN[owner] = (key, loose)  # equal, maybe not identical: identical from the next call
        return
    check_devices(arrays, params_arrays, state_split, params_split)
    check_shardings(arrays, params_arrays, state_split, params_split)
    flags = _flags(arrays, params_arrays) if commitment else [True]
    _SEEN[owner] = (key, None if all(flags) else flags)


def _shardings(arrays: list[Any], params_arrays: list[Any]) -> tuple[list[Any], ...] | None:
    """The arrays' shardings (None for a numpy array), or None when any is traced."""
    try:
        return list(map(_SHARDING, arrays)), list(map(_SHARDING, params_arrays))
    except AttributeError:  # a numpy array, or a tracer (which has no sharding to read)
        pass
    if any(isinstance(x, jax.core.Tracer) for x in (*arrays, *params_arrays)):
        return None
    return [getattr(x, "sharding", None) for x in arrays], [
        getattr(x, "sharding", None) for x in params_arrays
    ]


def _flags(arrays: list[Any], params_arrays: list[Any]) -> list[bool]:
    try:
        return [*map(_COMMITTED, arrays), *map(_COMMITTED, params_arrays)]
    except AttributeError:  # a numpy array: never committed
        return [bool(getattr(x, "committed", False)) for x in (*arrays, *params_arrays)]
