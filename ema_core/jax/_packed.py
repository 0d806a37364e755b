"""A packed JAX state for models of many small arrays: ``pack``, ``unpack``, and the update of a
``PackedState`` that ``make_update`` runs.

JAX charges about 10 us (on a CPU) for each array a compiled call hands back, even a donated
one: an update that returns 20,000 shadows spends most of its time there, not in the bytes.
``pack(state)`` moves the shadows of the small float leaves (at most ``most`` elements each)
into flat buffers, one per shadow dtype and block of ``BLOCK`` leaves; the other leaves (large
ones, integer ones) stay leaves of their own, raveled (1-d). The update then concatenates each
block's params inside one compiled call and blends them into the flat buffer with the leaf
update's own arithmetic (``_blend``, elementwise): the same bits as the unpacked update; a
loose leaf's params are raveled inside the compiled update (free: the same memory). XLA on
the CPU runs an elementwise loop over its array's own shape, and a convolution kernel in
torch's layout ``(out, in, kh, kw)`` ends in dimensions of 1 to 7: over the same elements
raveled, the bf16-to-float32 blend runs faster (Performance, "JAX"). ``unpack`` gives the
``EMAState`` back, each leaf a copy in its own shape. Both go through the host for the flat
buffers (numpy views, one ``device_put`` per block): a compiled gather or split of 1,024
arrays takes XLA seconds to compile, which these rare calls need not pay.

The layout (which leaf sits where, ``_packed_layout.Layout``) is static: a ``PackedState`` is
a pytree whose children are the step, the weight, the flat buffers and the loose shadows, so
``jax.device_get``, ``jit`` arguments and checkpoints of the flat arrays work on it as on any
state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ema_core._leaf_checks_x64 import narrowed
from ema_core._types import EMAState
from ema_core.jax._call_checks import check_readable
from ema_core.jax._packed_layout import Layout, PackedState, size
from ema_core.jax._split import split

__all__ = ["MOST", "Layout", "PackedState", "pack", "size", "unpack"]

#: Default largest leaf (in elements) that ``pack`` moves into a flat buffer.
MOST = 4096
#: Leaves per flat buffer: XLA's compile time for one concatenation grows faster than its
#: operand count (1,024 operands: about 2 s on a CPU; 256: a fraction of a second), while
#: each buffer costs the update only one more array handed back.
BLOCK = 256


def pack(state: EMAState, *, most: int = MOST) -> PackedState:
    """``state`` with the shadows of its small float leaves moved into flat buffers.

    A float shadow of at most ``most`` elements is packed (grouped by dtype, ``BLOCK`` leaves
    per buffer); larger ones and integer or bool ones stay loose, each raveled (1-d).
    ``make_update`` updates a ``PackedState`` to the same bits as the ``EMAState`` it came from;
    ``unpack`` gives that ``EMAState`` back. The state must be concrete JAX arrays on one device
    (a sharded state keeps its leaves: use it unpacked). Every array is copied (the shadows, the
    step and the weight, which the update donates): the state given stays usable, and both are
    held in memory until it is dropped.

    Raises:
        TypeError: ``state`` is not an ``EMAState`` of JAX arrays, or ``most`` is not an int.
        ValueError: ``most`` is negative, the state is traced or on several devices, or an
            array of it was deleted (donated to an update since).

    Example:
        >>> import jax.numpy as jnp, ema_core as ema
        >>> from ema_core.jax import make_update, pack
        >>> config = ema.Config(schedule=0.5)
        >>> params = {"b": jnp.zeros(2), "c": jnp.zeros(3), "w": jnp.zeros((64, 128))}
        >>> state = pack(ema.init(params, config))
        >>> len(state.flats), state.loose[0].shape  # b and c share a buffer; w stays a leaf
        (1, (8192,))
        >>> state = make_update(config)(state, {k: v + 2.0 for k, v in params.items()})
        >>> state.flats[0].tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    if isinstance(most, bool) or not isinstance(most, int):
        raise TypeError(f"most must be an int (elements), got {most!r}")
    if most < 0:
        raise ValueError(f"most must be >= 0 (elements), got {most}")
    if not isinstance(state, EMAState):
        done = " (already packed)" if isinstance(state, PackedState) else ""
        raise TypeError(f"pack takes an EMAState (ema_core.init), got {type(state).__name__}{done}")
    check_readable(state, "state")
    arrays, shadow_split = split(state.shadow)
    everything = [state.step, *arrays, state.weight]
    for x in everything:
        if not isinstance(x, jax.Array):
            raise TypeError(
                f"pack takes a state of JAX arrays, got a {type(x).__name__} leaf "
                "(jax.device_put(state) first)"
            )
        if isinstance(x, jax.core.Tracer):
            raise ValueError("pack takes a concrete state, not a traced one (call it outside jit)")
    for what, x in (("step", state.step), ("weight", state.weight)):
        if x.ndim:  # a flat buffer holds one EMA's leaves: no axis of it is a batch axis
            raise ValueError(
                f"pack takes one EMA's state, got state.{what} of shape {tuple(x.shape)} "
                "(stacked, vmapped EMAs): pack each EMA, then stack the packed states"
            )
    devices = {d for x in everything for d in x.devices()}
    if len(devices) != 1:
        raise ValueError(
            f"pack keeps a state on one device, got arrays on {len(devices)} devices "
            f"({', '.join(sorted(map(str, devices)))}): update a sharded state unpacked"
        )
    groups: dict[str, list[int]] = {}
    loose: list[int] = []
    for i, x in enumerate(arrays):
        small = x.size <= most and jnp.issubdtype(x.dtype, jnp.inexact)
        (groups.setdefault(str(x.dtype), []) if small else loose).append(i)
    blocks = tuple(
        tuple(members[k : k + BLOCK])
        for members in groups.values()
        for k in range(0, len(members), BLOCK)
    )
    offsets = [-1] * len(arrays)
    for members in blocks:
        offset = 0
        for i in members:
            offsets[i] = offset
            offset += arrays[i].size
    layout = Layout(
        shadow_split,
        blocks,
        tuple(offsets),
        tuple(loose),
        tuple(tuple(x.shape) for x in arrays),
        tuple(str(x.dtype) for x in arrays),
    )
    flats, kept = fill(arrays, layout, jax.sharding.SingleDeviceSharding(devices.pop()))
    step, weight = (jnp.array(x, copy=True) for x in (state.step, state.weight))  # donated later
    return PackedState(step, flats, kept, weight, layout)


def fill(
    arrays: Sequence[Any], layout: Layout, home: Any
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The flat buffers (through the host, put on ``home``) and the loose shadows (raveled
    copies) of ``layout`` for the shadow ``arrays`` in tree order."""
    flats = tuple(
        jax.device_put(np.concatenate([np.asarray(arrays[i]).ravel() for i in members]), home)
        for members in layout.blocks
    )
    return flats, tuple(jnp.ravel(arrays[i]) for i in layout.loose)


def unpack(state: PackedState) -> EMAState:
    """The ``EMAState`` of a packed state: each shadow a copy in its own shape (a packed one of
    its slice of a flat buffer, a loose one of its raveled array), with copies of the step and
    the weight: updating either state (``make_update`` donates) leaves the other whole. A
    packed state fetched with ``jax.device_get`` gives an ``EMAState`` of numpy arrays, as the
    unpacked one would.

    Inside ``jax.jit`` or ``vmap`` the pieces are sliced from the traced buffers.

    Raises:
        TypeError: ``state`` is not a ``PackedState``. ValueError: an array of it was deleted
            (donated to an update since), or a 64-bit buffer with x64 off now.

    Example:
        >>> import jax.numpy as jnp, ema_core as ema
        >>> from ema_core.jax import pack, unpack
        >>> state = pack(ema.init({"b": jnp.arange(2.0), "c": jnp.ones((1, 2))}, ema.Config()))
        >>> shadow = unpack(state).shadow
        >>> shadow["b"].tolist(), shadow["c"].tolist()
        ([0.0, 1.0], [[1.0, 1.0]])
    """
    if not isinstance(state, PackedState):
        raise TypeError(f"unpack takes a PackedState (pack), got {type(state).__name__}")
    check_readable(state, "state")
    layout = state.layout
    arrays: list[Any] = [None] * len(layout.offsets)
    for b, members in enumerate(layout.blocks):
        flat = state.flats[b]
        if isinstance(flat, jax.core.Tracer):  # inside jit / vmap: sliced where it lives
            for i in members:
                arrays[i] = _piece(flat, layout.offsets[i], layout.shapes[i])
            continue
        _check_wide(flat, b)
        host = np.asarray(flat)  # one read of the buffer, sliced per member
        views = [_piece(host, layout.offsets[i], layout.shapes[i]) for i in members]
        if isinstance(flat, jax.Array):
            views = jax.device_put(views, flat.sharding)
        else:  # a state fetched with jax.device_get: numpy copies, as its leaves would be
            views = [np.array(v) for v in views]
        for i, x in zip(members, views, strict=True):
            arrays[i] = x
    for j, i in enumerate(layout.loose):
        x = state.loose[j]
        shaped = x.reshape(layout.shapes[i])  # a new JAX array, or a numpy view
        arrays[i] = _copy(shaped) if shaped is x or isinstance(shaped, np.ndarray) else shaped
    # copies, also of the step and the weight: the packed update donates its own arrays, and a
    # reshape to the shape a leaf already has is the same array
    return EMAState(_copy(state.step), layout.split.merge(arrays), _copy(state.weight))


def _copy(x: Any) -> Any:
    """A copy of a JAX array where it lives, or of a numpy one (a state fetched to the host)."""
    return jnp.array(x, copy=True) if isinstance(x, jax.Array) else np.array(x, copy=True)


def _piece(host: Any, offset: int, shape: tuple[int, ...]) -> Any:
    return host[offset : offset + size(shape)].reshape(shape)


def _check_wide(flat: Any, b: int) -> None:
    """Refuse a 64-bit flat buffer while x64 is off: its pieces, put back on the device, would
    be narrowed to 32 bits silently (the update refuses such a state too)."""
    narrow = narrowed(flat.dtype) if isinstance(flat, jax.Array) else None
    if narrow is not None:
        raise ValueError(
            f"state.flats[{b}] is {flat.dtype}, packed with x64 on, and x64 is off now: its "
            f"shadows would come back as {narrow}; enable x64 "
            "(jax.config.update('jax_enable_x64', True)) to unpack or save it"
        )
