"""Where a compiled update's arrays live, checked once per signature before anything runs.

``make_update`` and the bank refuse, by name and before any buffer is donated, params committed
to other devices than the state's (``check_devices``) and a shadow sharded otherwise than its
param (``check_shardings``: JAX refuses it on explicit mesh axes naming no leaf, above
``CHUNK`` leaves only once the earlier chunks ran, and compiles it unchecked on automatic axes).
Both walk the trees; here they run only when the arrays' shardings (the sharding objects, in
order), their trees or their commitment changed since the owner's last checked call. The steady
state reads one ``sharding`` per array and compares two lists, at first by identity (an update
returns its outputs with the same sharding objects each time).

``commit_state`` places a state's arrays before a compiled call (commits fresh ones, puts numpy
arrays beside the params, copies a buffer that would be donated twice), so that the first call
compiles what every later call sees.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ema_core.backends.jax._leaves import default_device
from ema_core.jax._devices import check_devices
from ema_core.jax._sharding import check_shardings, pairs

__all__ = ["check_placements", "commit_state", "read_shardings"]

_SHARDING = operator.attrgetter("sharding")
_COMMITTED = operator.attrgetter("committed")

#: Per owner (an update's chunked path object): the last checked signature, and the arrays'
#: commitment then where some were not committed (a committed array is checked more strictly).
_SEEN: weakref.WeakKeyDictionary[Any, tuple[Any, list[bool] | None, bool]] = (
    weakref.WeakKeyDictionary()
)


def check_placements(
    owner: Any,
    arrays: list[Any],
    params_arrays: list[Any],
    state_split: Any,
    params_split: Any,
    *,
    commitment: bool = True,
) -> bool:
    """``check_devices`` and ``check_shardings``, unless ``owner`` checked this signature at its
    last call (nothing is read from the devices either way). ``commitment=False`` leaves the
    arrays' commitment out of the signature: for one compiled call, where JAX refuses arrays
    committed to other devices before it donates anything (the caller names them then).
    Returns whether any array spans several devices (known with the signature), or is traced.

    Raises:
        ValueError: as ``check_devices`` or ``check_shardings``; nothing was donated.
    """
    both = arrays, params_arrays
    shardings = read_shardings(*both)
    if shardings is None:  # traced: placed by the outer transformation; deleted arrays of a
        return True  # closed-over state are looked for before the call (once per trace)
    key = (shardings, state_split, params_split)
    seen = _SEEN.get(owner)
    loose = seen[1] if seen is not None and commitment else None  # where some were uncommitted
    if seen is not None and seen[0] == key and (loose is None or loose == _flags(*both)):
        _SEEN[owner] = (key, loose, seen[2])  # equal, maybe not identical: identical next call
        return seen[2]
    check_devices(arrays, params_arrays, state_split, params_split)
    check_shardings(arrays, params_arrays, state_split, params_split)
    flags = _flags(arrays, params_arrays) if commitment else [True]
    spread = any(s is not None and len(s.device_set) > 1 for s in (*shardings[0], *shardings[1]))
    _SEEN[owner] = (key, None if all(flags) else flags, spread)
    return spread


def read_shardings(arrays: list[Any], params_arrays: list[Any]) -> tuple[list[Any], ...] | None:
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


def commit_state(
    arrays: list[Any],
    params_arrays: list[Any],
    donate: bool,
    on_new: Callable[[], None] | None = None,
    splits: tuple[Any, Any] | None = None,
) -> list[Any]:
    """The state's arrays placed explicitly, so that the first call compiles what every later
    call sees (a jitted function returns committed arrays, and JAX compiles again when an
    argument turns from uncommitted or numpy to committed).

    * An uncommitted array (a fresh ``init`` over uncommitted params) is committed beside the
      state's first committed array, else the params' (on its one device, or replicated over
      its mesh: ``init`` over params only partly ``device_put`` on one; the compiled update
      runs there, as a plain ``jax.jit`` moves an uncommitted argument), else where it lives;
      but a shadow whose param is committed across several devices takes that param's
      sharding (a state made before the params were ``device_put`` on a mesh, as ``jax.jit``
      places it). ``splits`` (the state's and the params' ``Split``) pair them.
    * A numpy array (a state snapshotted with ``jax.device_get``, or loaded from a file) is put
      where the params are: their one device when every committed param lives there, else the
      default device when none is committed; params committed across several devices leave it
      to JAX (one more compilation, no guess at a sharding).
    * With ``donate``, an array that is also one of the params (``state._replace(shadow=params)``,
      an EMA reset to the weights) is copied first: JAX refuses to donate a buffer it also reads,
      or twice: an array at a second place of the state (one state given twice to a bank, one
      step array shared by hand-built states) is copied too.

    ``on_new`` (the host checks a caller skipped for a step it made itself) runs first when the
    arrays are not the steady state: a leaf swapped in beside a step the update returned.

    Inside an outer ``jax.jit`` the arrays are tracers, which have no placement to commit
    (reading it raises): kept as they are, as are deleted arrays (``device_put`` would raise
    JAX's unnamed error; ``dispatch``'s ``check_live`` names them).
    """
    ids = set(map(id, arrays)) if donate else set()
    try:
        steady = all(map(_COMMITTED, arrays)) and ids.isdisjoint(map(id, params_arrays))
    except Exception:  # a numpy array, or a tracer: no commitment to read
        steady = False
    unique = not donate or len(ids) == len(arrays)
    if (steady and unique) or any(isinstance(x, jax.core.Tracer) for x in arrays):
        return arrays  # the steady state (the arrays an update returned), or traced
    if on_new is not None:
        on_new()
    shared = set(map(id, params_arrays)) if donate else set()
    home = _params_home(params_arrays)
    spread = _replicated_home(arrays, params_arrays)
    # the shadows of sharded params take their shardings where the state goes over a mesh
    # (a state committed to one device beside them is refused by check_devices, naming them)
    spreads = spread is not None and len(spread.device_set) > 1
    partners = _sharded_partners(arrays, params_arrays, splits) if spreads else {}
    placed, seen = [], set()
    for i, x in enumerate(arrays):
        again = donate and id(x) in seen  # donated once already in this call
        seen.add(id(x))
        placed.append(_placed(x, home, partners.get(i, spread), again or id(x) in shared))
    return placed


def _sharded_partners(
    arrays: list[Any], params_arrays: list[Any], splits: tuple[Any, Any] | None
) -> dict[int, Any]:
    """Index of an uncommitted shadow array -> its param's sharding, where that param is
    committed across several devices and of the same shape."""
    if splits is None:
        return {}
    found = {}
    for _, _, i, j in pairs(len(arrays), len(params_arrays), *splits):
        x, p = arrays[i], params_arrays[j]
        if not isinstance(x, jax.Array) or x.committed or not _is_committed(p):
            continue
        if len(p.sharding.device_set) > 1 and x.shape == p.shape:
            found[i] = p.sharding
    return found


def _placed(x: Any, home: Any, spread: Any, shared: bool) -> Any:
    """One state array as ``commit_state`` describes (``home``: ``_params_home``'s answer,
    ``spread``: ``_replicated_home``'s)."""
    if isinstance(x, np.ndarray):
        return x if home is False else jax.device_put(x, home)
    if x.is_deleted():
        return x
    committed = x.committed
    if shared:  # a buffer of its own, committed (jnp.copy's would not be)
        x = jax.device_put(x, x.sharding, may_alias=False)
    if committed:
        return x
    if spread is None:
        return x if shared else jax.device_put(x, x.sharding)
    # after the copy: a put onto several devices may keep the source buffer (may_alias=False
    # or not), which a donated call would then also read
    return jax.device_put(x, spread)


def _replicated_home(arrays: list[Any], params_arrays: list[Any]) -> Any:
    """Where an uncommitted state array goes: replicated over the devices of the first
    committed array of the state, else of the params (its one device, or its mesh); None
    when nothing is committed or the devices are not a mesh's (left where it lives)."""
    first = next((x for x in (*arrays, *params_arrays) if _is_committed(x)), None)
    if first is None:
        return None
    sharding = first.sharding
    if len(sharding.device_set) == 1:
        return jax.sharding.SingleDeviceSharding(next(iter(sharding.device_set)))
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())  # type: ignore[no-untyped-call]
    return sharding if sharding.is_fully_replicated else None


def _is_committed(x: Any) -> bool:
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.committed


def _params_home(params_arrays: list[Any]) -> Any:
    """Where a numpy state array goes: the one device of the committed params, the default
    device when none is committed, or False when they are committed across several devices."""
    committed = [  # traced params (a user's jit, vmap or grad) have no placement to read
        x
        for x in params_arrays
        if not isinstance(x, jax.core.Tracer) and getattr(x, "committed", False)
    ]
    devices = {d for x in committed for d in x.sharding.device_set}
    if len(devices) > 1:
        return False
    return devices.pop() if devices else default_device()
