"""The device check of a compiled update (``make_update``, the bank): params committed to other
devices than the state's are refused by name, before any buffer is donated.

JAX refuses such a call itself, but its message names the internal function and its flat
argument lists (``params_arrays[3] of _Update._arrays``); the chunked path would even run its
head (donating the step and weight) before a chunk's call fails. ``check_devices`` names the
leaf (``params['w']``), its devices and the state's. Only committed arrays count: JAX moves an
uncommitted one (made without ``device_put``) to the other arguments' devices.
"""

from __future__ import annotations

from typing import Any

import jax

from ema_core._types import EMAState

__all__ = ["check_devices", "leaf_name"]


def check_devices(
    arrays: list[Any], params_arrays: list[Any], state_split: Any, params_split: Any
) -> None:
    """Raise when a committed array of the state or params is on other devices than the
    state's step (the first state array); ``*_split.merge`` rebuild the trees to name the leaf.

    Raises:
        ValueError: naming the leaf, its devices, the state's, and the two ways out.
    """
    if any(isinstance(x, jax.core.Tracer) for x in (*arrays, *params_arrays)):
        return  # placed by the outer transformation
    first = next((x for x in arrays if _committed(x)), None)
    if first is None:
        return
    home = first.sharding.device_set
    for x in (*arrays, *params_arrays):
        if _committed(x) and x.sharding.device_set != home:
            raise ValueError(_message(x, home, arrays, params_arrays, state_split, params_split))


def _committed(x: Any) -> bool:
    return isinstance(x, jax.Array) and bool(getattr(x, "committed", True))


def _message(
    bad: Any,
    home: Any,
    arrays: list[Any],
    params_arrays: list[Any],
    state_split: Any,
    params_split: Any,
) -> str:
    state = state_split.merge(arrays)
    state_name = "state" if isinstance(state, EMAState) else "states"
    where = leaf_name(bad, state_name, state) or leaf_name(
        bad, "params", params_split.merge(params_arrays)
    )
    return (
        f"{where} is on {_devices(bad.sharding.device_set)}, but {state_name} is on "
        f"{_devices(home)}: the update runs where the state lives; put the params on its "
        "devices (jax.device_put), or the state on theirs; nothing was donated"
    )


def leaf_name(bad: Any, name: str, tree: Any) -> str | None:
    """``name`` and the path of the leaf of ``tree`` that is ``bad`` (None when none is)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if leaf is bad:
            return name + jax.tree_util.keystr(path)
    return None


def _devices(devices: Any) -> str:
    found = sorted(devices, key=lambda d: (d.platform, d.id))
    return ", ".join(f"{d.platform}:{d.id}" for d in found)
