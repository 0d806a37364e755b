"""The leaf update for JAX arrays: the core's math compiled once per structure (the route
table is in ``ema_core.backends.jax``).

Called eagerly, the generic per-leaf code would dispatch a handful of small operations per leaf
(100,000 dispatches for a model of 20,000 tensors); here the whole update is one ``jax.jit``
call. The decay and the rate are passed as 0-d arrays, never as static values, so a schedule that
changes every step never recompiles. Inside a trace the same function is simply inlined.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import array_api_compat as compat
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ema_core import _core
from ema_core._types import Array, LeafKind, Namespace, NonFloatPolicy, Value


def update_leaves(
    xp: Namespace,
    shadows: Sequence[Array],
    params: Sequence[Array],
    kinds: Sequence[LeafKind],
    decay: Value,
    rate: Value,
    *,
    non_float: NonFloatPolicy,
    writes: Sequence[bool],
) -> list[Array]:
    """New shadows: float leaves blended, exact ones copied on every call, also at decay 1
    (``writes`` is ignored: JAX arrays are immutable, so a new array is always returned)."""
    wide = jnp.result_type(float)
    if isinstance(decay, float):  # decided on the host; an array decay is nudged in the jit
        decay = leaf_decay(decay, rate, wide)
    if isinstance(rate, float):
        rate = np.asarray(rate, dtype=wide)
    new = update_compiled(
        tuple(shadows), tuple(params), decay, rate, kinds=tuple(kinds), non_float=non_float
    )
    return list(new)


def leaf_decay(decay: Value, rate: Value, wide: Any) -> Array:
    """The decay the leaves see, a 0-d array of the wide float: ``decay``, except that one which
    rounds to 1 there (float32 when x64 is off: within 3e-8 of 1) while its rate is not 0 becomes
    the float below 1, so that it still blends by its rate and is not taken for a skip. A host
    decay is decided on the host, a device or traced one with ``where``."""
    if isinstance(decay, float):
        value = np.asarray(decay, dtype=wide)
        if decay < 1.0 and value == 1.0:
            value = np.nextafter(value, np.zeros_like(value))
        return value
    d = jnp.asarray(decay, dtype=wide)
    below = jnp.nextafter(jnp.ones((), wide), jnp.zeros((), wide))
    return jnp.where((d == 1.0) & (jnp.asarray(rate, dtype=wide) > 0.0), below, d)


def _update_impl(
    shadows: tuple[Array, ...],
    params: tuple[Array, ...],
    decay: Array,
    rate: Array,
    *,
    kinds: tuple[LeafKind, ...],
    non_float: NonFloatPolicy,
) -> tuple[Array, ...]:
    wide = jnp.result_type(float)  # a decay already nudged by ``leaf_decay`` stays as it is
    gates = _Gates(leaf_decay(decay, rate, wide), jnp.asarray(rate, dtype=wide))
    out = []
    for s, given, kind in zip(shadows, params, kinds, strict=True):
        # a packed state's raveled shadow (``ema_core.jax.pack``): its params raveled alike
        p = given if given.shape == s.shape else given.reshape(s.shape)
        if kind == "float":
            out.append(_blend(s, p, gates))
        else:
            out.append(_copy_into(s, p) if non_float == "copy" else s)
    return tuple(out)


def _copy_into(s: Array, p: Array) -> Array:
    """An integer or bool leaf: the params' value on every call, decay 1 included (the core's
    ``copy_exact``), written over the shadow (``s.at[...].set``) so that a donated shadow's
    buffer holds it: a result that ignored the shadow would leave that buffer unused and take
    a new one at every update."""
    return s.at[...].set(p)


_STATIC = ("kinds", "non_float")
update_compiled = jax.jit(_update_impl, static_argnames=_STATIC)
#: The same update with the shadows donated (``make_update`` on trees of many arrays).
update_donated = jax.jit(_update_impl, static_argnames=_STATIC, donate_argnums=(0,))


def correct_leaves(
    shadows: Sequence[Array], kinds: Sequence[LeafKind], weight: Value
) -> list[Array]:
    """``_core.correct`` of every float leaf (``average`` of an ``init="zeros"`` state) in one
    compiled call, not five eager operations per leaf; the others as they are. A host weight
    enters as a 0-d array of the wide float (a new value each step never recompiles), which
    divides as the Python float would; 0 and 1 divide as 1 (the shadow's own values)."""
    if isinstance(weight, float):
        weight = np.asarray(weight, dtype=jnp.result_type(float))
    else:
        check_beside("state.weight", weight, shadows[0])
    return list(_correct_compiled(tuple(shadows), weight, kinds=tuple(kinds)))


def check_beside(name: str, scalar: Any, shadow: Array) -> None:
    """A committed 0-d ``scalar`` of a state must sit on the devices of its committed shadows
    (JAX would refuse to combine them, naming the compiled function's arguments).

    Raises:
        ValueError: naming ``name`` and both devices.
    """
    if isinstance(scalar, jax.core.Tracer) or isinstance(shadow, jax.core.Tracer):
        return
    committed = getattr(scalar, "committed", False) and getattr(shadow, "committed", False)
    if committed and scalar.devices() != shadow.devices():
        raise ValueError(
            f"{name} is on {_shown(scalar)}, but state.shadow is on {_shown(shadow)}: keep the "
            "state on one device (jax.device_put(state, device))"
        )


def _shown(array: Any) -> str:
    return ", ".join(sorted(str(d) for d in array.devices()))


def _correct_impl(
    shadows: tuple[Array, ...], weight: Array, *, kinds: tuple[LeafKind, ...]
) -> tuple[Array, ...]:
    return tuple(
        _core.correct(jnp, s, weight) if k == "float" else s
        for s, k in zip(shadows, kinds, strict=True)
    )


_correct_compiled = jax.jit(_correct_impl, static_argnames=("kinds",))


class _Gates:
    """The scalars of one update, computed once for all leaves (per compute dtype)."""

    def __init__(self, decay: Array, rate: Array) -> None:
        self.high = decay >= 0.5  # blend from the shadow: s + rate * (p - s)
        self.ends = (decay == 0.0) | (decay == 1.0)  # copy p or keep s, bit-exactly
        self._decay, self._rate = decay, rate
        self._coef: dict[Any, Array] = {}

    def coef(self, real: Any) -> Array:
        """``rate`` where the blend starts from the shadow, ``-decay`` where from the params."""
        if real not in self._coef:
            d, r = self._decay.astype(real), self._rate.astype(real)
            self._coef[real] = jnp.where(self.high, r, -d)
        return self._coef[real]


def _blend(s: Array, p: Array, gates: _Gates) -> Array:
    """``_core.blend`` for a traced decay in fewer operations, bit for bit the same:
    ``base + coef * (p - s)`` with ``base, coef = (s, rate)`` for decay >= 0.5 and ``(p, -decay)``
    below (``p + (-d) x`` is ``p - d x`` exactly in IEEE arithmetic), and ``base`` itself at
    decay 0 or 1. Fewer operations per leaf means a faster compile for models of many tensors."""
    ct = _core.compute_dtype(jnp, s.dtype)
    s_c, p_c = s.astype(ct), widen(p, ct)
    base = jnp.where(gates.high, s_c, p_c)
    coef = gates.coef(jnp.real(jnp.zeros((), ct)).dtype)
    out = jnp.where(gates.ends, base, base + coef * (p_c - s_c))
    return out.astype(s.dtype)


def widen(p: Array, ct: Any) -> Array:
    """``p`` in the compute dtype ``ct``, holding exactly the values of ``p``'s own dtype.

    Inside a jit that also computes ``p`` (a train step: ``params + updates`` in bfloat16, then
    the EMA), XLA on its default settings may drop a rounding to bfloat16 followed by the
    widening to float32 and hand the blend the unrounded float32 value: the EMA would average
    values the model never holds. An ``optimization_barrier`` on ``p`` keeps it a value of its
    own dtype, rounded, before the widening (on an input of the jit it changes nothing;
    ``reduce_precision`` would also flush float16's subnormals to zero)."""
    if p.dtype == jnp.dtype(ct) or not jnp.issubdtype(p.dtype, jnp.floating):
        return p.astype(ct)
    return jax.lax.optimization_barrier(p).astype(ct)  # type: ignore[no-untyped-call]


def scalar_device(leaf: Array) -> Any:
    """Where the 0-d ``step`` and ``weight`` of a state for ``leaf`` go: the leaf's device, or
    for a leaf sharded over several devices the same mesh, replicated (``None`` when the
    sharding has no mesh: JAX then places them on its default device). An uncommitted leaf on
    the default device (``jnp.zeros(...)``, no ``device_put``) gets uncommitted scalars
    (``None``): committed ones would commit a jitted update's outputs, and its second call
    would compile again for the committed state."""
    if isinstance(leaf, jax.core.Tracer):
        return compat.device(leaf)
    sharding = getattr(leaf, "sharding", None)
    if sharding is None or len(sharding.device_set) == 1:
        device = compat.device(leaf)
        if not getattr(leaf, "committed", True) and device == default_device():
            return None
        return device
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec())  # type: ignore[no-untyped-call]
    return None


def default_device() -> Any:
    """The device ``jnp.asarray(x)`` uses now (``jax.default_device`` or the default backend's
    first device)."""
    chosen = getattr(jax.config, "jax_default_device", None)
    return chosen if isinstance(chosen, jax.Device) else jax.devices(chosen)[0]
