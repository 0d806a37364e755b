"""JAX leaf kernels (below the API): the whole update is one compiled function (``_leaves``).

Routes, one per leaf, chosen inside the compiled function (all run in the CPU suite):

=================  ==========================================================================
leaf               what updates it
=================  ==========================================================================
float              ``_leaves._blend``: the core's lerp steps in float32 or wider, both ends
                   selected (decay 1 keeps the shadow's bits, decay 0 gives the params')
integer, bool      ``_leaves._copy_into``: the params' value at every decay
                   (``non_float="copy"``); kept as they are under the other policies
=================  ==========================================================================

The decay and the rate arrive as 0-d arrays, never as static values, so a schedule that changes
every step never recompiles; inside a trace the same function is simply inlined. ``_scalars``
computes an eager ``ema_core.update``'s step, decay, rate and weight in one compiled call per
config (``update_scalars``), and is the head ``make_update`` and the bank share (``scalars``);
an eager stateless ``ema_update``'s decay and rate come from one compiled call too
(``pair_scalars``), so that it gives a traced call's bits.

The user-facing JAX pieces (``make_update``, ``with_ema``, checkpoints) sit above the API in
``ema_core.jax``; their old names here (``ema_core.backends.jax.make_update`` ...) still work
and are looked up there on first use (``__getattr__`` below), never by the kernels.
"""

from __future__ import annotations

from typing import Any

from ema_core.backends.generic import guard  # nothing to guard: JAX arrays are immutable
from ema_core.backends.jax._leaves import correct_leaves, scalar_device, update_leaves
from ema_core.backends.jax._scalars import pair_scalars, update_scalars

__all__ = [
    "correct_leaves",
    "guard",
    "pair_scalars",
    "scalar_device",
    "update_leaves",
    "update_scalars",
]

#: Names that used to live here and moved above the API to ``ema_core.jax``.
_MOVED = frozenset(
    {"WithEMAState", "ema_average", "load_state_dict", "make_update", "state_dict", "with_ema"}
)


def __getattr__(name: str) -> Any:
    """The old import path of the user-facing JAX names (``ema_core.jax``), kept working."""
    if name in _MOVED:
        import ema_core.jax

        return getattr(ema_core.jax, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
