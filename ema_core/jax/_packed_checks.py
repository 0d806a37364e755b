"""The checks a packed update makes before anything is donated: the state's own arrays against
its layout (``check_arrays``, once per signature), arrays deleted by an earlier donation
(``check_live``), and params committed to another device than the state's (``check_devices``,
when their shardings change: ``same``)."""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp

from ema_core._types import Tree
from ema_core.jax._devices import leaf_name
from ema_core.jax._packed_layout import PackedState, size

__all__ = ["check_arrays", "check_devices", "check_live", "same"]

_IS_DELETED = operator.methodcaller("is_deleted")


def check_arrays(state: PackedState) -> None:
    """The flat buffers and loose shadows are those ``pack`` laid out: as many, each of its
    dtype and size (a loose one raveled, or in its leaf's shape as before 2026-12-04), so that
    a buffer swapped in by hand is refused by name before anything runs, not blended into a
    shadow of another dtype or refused by JAX without a name.

    Raises:
        ValueError: naming the array, its shape and dtype and what the layout holds there.
    """
    layout = state.layout
    if (len(state.flats), len(state.loose)) != (len(layout.blocks), len(layout.loose)):
        raise ValueError(
            f"the packed state holds {len(state.flats)} flat buffers and {len(state.loose)} "
            f"loose shadows, but its layout {len(layout.blocks)} and {len(layout.loose)}: pass "
            "a state that pack or this update returned"
        )
    wanted = [
        (f"state.flats[{b}]", (sum(size(layout.shapes[i]) for i in members),), members[0])
        for b, members in enumerate(layout.blocks)
    ] + [(f"state.loose[{j}]", layout.shapes[i], i) for j, i in enumerate(layout.loose)]
    for (name, shape, i), x in zip(wanted, [*state.flats, *state.loose], strict=True):
        dtype = jnp.dtype(layout.dtypes[i])
        if x.dtype != dtype or tuple(x.shape) not in ((size(shape),), tuple(shape)):
            raise ValueError(
                f"{name} has shape {tuple(x.shape)} and dtype {x.dtype}, but the packed layout "
                f"holds shape {(size(shape),)} and dtype {dtype} there: pass a state that "
                "pack or this update returned; nothing was donated"
            )


def check_live(
    state_arrays: list[Any], params_arrays: list[Any], state: PackedState, params: Tree
) -> None:
    """Refuse a state or params array deleted (donated to an earlier call) before any call,
    named by its path in ``state`` or ``params`` (``state.flats[0]``, ``params['w']``)."""
    for what, group, tree in (("state", state_arrays, state), ("params", params_arrays, params)):
        try:
            dead = any(map(_IS_DELETED, group))
        except AttributeError:  # a numpy array: looked at one by one
            dead = any(isinstance(x, jax.Array) and x.is_deleted() for x in group)
        if dead:
            bad = next(x for x in group if isinstance(x, jax.Array) and x.is_deleted())
            raise ValueError(
                f"{leaf_name(bad, what, tree) or 'an array of the ' + what} was deleted (donated "
                "to an earlier call that donates it, such as make_update, or deleted by hand): "
                "pass the state that call returned, or use donate=False; nothing was donated"
            )


def same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))


def check_devices(state: PackedState, shardings: list[Any], params: Tree) -> None:
    """Params committed to another device than the packed state's are refused by name: JAX
    refuses them at the call that takes them without naming them. The update calls this
    after such a call failed (the one compiled call, or a block's call: nothing was donated
    yet), and before the first loose chunk of its longer path for the loose params, since a
    later chunk would fail after the earlier ones were donated. Uncommitted params are moved
    by JAX, as the unpacked update moves them. ``shardings``: those of the params looked at."""
    home = state.step.sharding.device_set
    unique = {id(s): s for s in shardings if s is not None}.values()
    if all(s.device_set == home for s in unique):
        return
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        sharding = getattr(x, "sharding", None)
        if sharding is not None and sharding.device_set != home and x.committed:
            devices = ", ".join(sorted(map(str, sharding.device_set)))
            state_on = ", ".join(sorted(map(str, home)))
            raise ValueError(
                f"params{jax.tree_util.keystr(path)} is on {devices}, but the packed state is "
                f"on {state_on}: put the params on the state's device; nothing was donated"
            )
