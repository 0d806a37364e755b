"""``make_update``: the EMA update as one jitted, donating function."""

from __future__ import annotations

import dataclasses
import operator
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import numpy as np

from ema_core import _api
from ema_core._arguments import checked_config
from ema_core._config import Config
from ema_core._types import EMAState, Tree
from ema_core.jax import _chunked
from ema_core.jax._call_checks import (
    check_finite_params,
    check_live,
    check_not_donated,
    check_step,
    check_x64,
    host_scalars,
)
from ema_core.jax._devices import check_devices
from ema_core.jax._placement import check_placements, commit_state


def make_update(
    config: Config | None = None, *, donate: bool = True
) -> Callable[[EMAState, Tree], EMAState]:
    """A jitted ``(state, params) -> state`` that applies ``ema_core.update`` under ``config``.

    ``shadow_t = shadow_{t-1} + (1 - d_t) (params_t - shadow_{t-1})`` with ``t = state.step + 1``.
    The step and the decay are traced, so one compilation serves every step. With ``donate``
    the state's buffers are given to the output (the old state must not be used again), so a
    steady-state update allocates nothing and runs at memory speed. Every leaf is updated on the
    devices that hold it: shardings are kept and no collective is issued. Pytrees with non-array
    leaves (equinox modules) are split: only their arrays enter the compiled function.

    Args:
        config: the EMA's ``Config`` (default ``Config()``): hashable, fixed at compile time.
        donate: donate the state's buffers to the new state (default True).

    Returns:
        The compiled update; call it as ``state = update(state, params)``. Its ``lower(state,
        params)`` gives JAX's lowered computation (for ``.compile().as_text()``).

    The step counter saturates at its dtype's largest value (``2**31 - 1`` for int32): later
    updates reuse that step's decay instead of wrapping to a negative count. A state's step is
    range-checked before the call where the host can read it (numpy, a concrete JAX array on
    CPU) and this update did not make it: a step it returned is trusted, so the steady state
    reads nothing and never waits for the previous update.

    Raises:
        TypeError: ``config`` is not a ``Config`` or ``donate`` is not a bool.
        ValueError: (when called) a readable ``state.step`` is negative; nothing was donated.

    Example:
        >>> import jax.numpy as jnp, ema_core as ema
        >>> from ema_core.jax import make_update
        >>> config = ema.Config(schedule=0.5)
        >>> step = make_update(config)
        >>> state = ema.init({"w": jnp.zeros(2)}, config)
        >>> state = step(state, {"w": jnp.full(2, 4.0)})
        >>> state = step(state, {"w": jnp.full(2, 4.0)})
        >>> state.shadow["w"].tolist(), int(state.step)
        ([3.0, 3.0], 2)
    """
    config = checked_config(config)
    if not isinstance(donate, bool):
        raise TypeError(f"donate must be True or False, got {donate!r}")
    return _Update(config, donate)


@dataclass(frozen=True, eq=False)
class _Split:
    """A flattened tree: where its arrays go and the non-array leaves kept aside (hashable: jit
    hashes it at every call, so the hash is computed once)."""

    treedef: Any
    dynamic: tuple[bool, ...]
    statics: tuple[Hashable, ...]
    _hash: int = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.treedef, self.dynamic, self.statics)))

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, _Split)
            and self._hash == other._hash
            and (self.treedef, self.dynamic, self.statics)
            == (other.treedef, other.dynamic, other.statics)
        )

    def __hash__(self) -> int:
        return self._hash

    def merge(self, arrays: list[Any]) -> Any:
        if not self.statics:  # every leaf an array
            return self.treedef.unflatten(arrays)
        values, static = iter(arrays), iter(self.statics)
        return self.treedef.unflatten([next(values) if d else next(static) for d in self.dynamic])


#: Per leaf type: whether its values enter the compiled function (JAX and numpy arrays). Read
#: by type: ``isinstance(x, jax.Array)`` costs a quarter of a microsecond per leaf, a dict
#: lookup a tenth of that, which counts on trees of thousands of leaves at every update.
_ARRAY_TYPES: dict[type, bool] = {}
#: Past this many leaf types the table starts again (types are classes: few in practice).
_MOST_TYPES = 4096


def _dynamic(leaves: list[Any]) -> tuple[bool, ...]:
    try:
        return tuple(map(_ARRAY_TYPES.__getitem__, map(type, leaves)))
    except KeyError:
        if len(_ARRAY_TYPES) > _MOST_TYPES:
            _ARRAY_TYPES.clear()
        for x in leaves:
            _ARRAY_TYPES.setdefault(type(x), isinstance(x, (jax.Array, np.ndarray)))
        return tuple(map(_ARRAY_TYPES.__getitem__, map(type, leaves)))


def _split(tree: Any) -> tuple[list[Any], _Split]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    dynamic = _dynamic(leaves)
    if False not in dynamic:  # every leaf an array: the common case
        return leaves, _Split(treedef, dynamic, ())
    arrays = [x for x, d in zip(leaves, dynamic, strict=True) if d]
    statics = tuple(x for x, d in zip(leaves, dynamic, strict=True) if not d)
    return arrays, _Split(treedef, dynamic, statics)


class _Update:
    """The callable ``make_update`` returns: split, commit, call the jitted function, merge."""

    def __init__(self, config: Config, donate: bool) -> None:
        self.config = config
        self._guard = config.guard_finite  # checked before the call: traced params cannot raise
        config = dataclasses.replace(config, guard_finite=False)
        self._compiled_config = config
        self._donate = donate
        self._chunked = _chunked.Chunked(config, donate)
        self._jitted = jax.jit(self._arrays, static_argnums=(2, 3), donate_argnums=(0,) * donate)
        self._made: Callable[[], Any] = lambda: None  # the step this update last returned

    def _arrays(
        self,
        state_arrays: list[Any],
        params_arrays: list[Any],
        state_split: _Split,
        params_split: _Split,
    ) -> list[Any]:
        state = state_split.merge(state_arrays)
        new = _api.update(state, params_split.merge(params_arrays), self._compiled_config)
        return _split(new)[0]

    def _prepare(
        self, state: EMAState, params: Tree, on_new: Callable[[], None] | None = None
    ) -> tuple[Any, ...]:
        state_arrays, state_split = _split(state)
        params_arrays, params_split = _split(params)
        return (
            commit_state(state_arrays, params_arrays, self._donate, on_new),
            params_arrays,
            state_split,
            params_split,
        )

    def __call__(self, state: EMAState, params: Tree, /) -> EMAState:
        step = getattr(state, "step", None)
        trusted = step is self._made()
        if not trusted:  # a step this update made is valid: not read again
            check_not_donated(step, "state", "this update (make_update donates by default)")
            check_step(step)
            check_x64(state)
        state = host_scalars(state)
        if self._guard:
            check_finite_params(params)
        # beside a step it made, a leaf swapped in (state._replace(shadow=...)) is checked
        prepared = self._prepare(state, params, partial(check_x64, state) if trusted else None)
        out: EMAState = prepared[2].merge(dispatch(self._jitted, self._chunked, *prepared))
        if isinstance(out.step, jax.Array) and not isinstance(out.step, jax.core.Tracer):
            self._made = weakref.ref(out.step)
        return out

    def lower(self, state: EMAState, params: Tree, /) -> Any:
        """JAX's lowered computation for these arguments (``.compile().as_text()``: the HLO)."""
        return self._jitted.lower(*self._prepare(state, params))


_SHAPE_DTYPE = operator.attrgetter("shape", "dtype")
_AVAL = operator.attrgetter("aval")


def _avals(arrays: list[Any]) -> tuple[Any, ...]:
    """The arrays' signature: JAX's ``aval`` of each (shape, dtype, weak type and sharding: one
    read per array, a fifth of the time of reading the shape and the dtype on 20,000 arrays),
    or shape and dtype where some array has no ``aval`` (numpy)."""
    try:
        return tuple(map(_AVAL, arrays))
    except AttributeError:
        return tuple(map(_SHAPE_DTYPE, arrays))


def dispatch(
    jitted: Any,
    chunked: Any,
    arrays: list[Any],
    params_arrays: list[Any],
    state_split: Any,
    params_split: Any,
) -> Any:
    """The new state arrays: one compiled call for up to ``_chunked.CHUNK`` params, else
    ``chunked``'s path (its ``kinds`` then ``run``: one compiled call per chunk). Devices and
    shardings are checked first, for every chunk, once per signature (``_placement``)."""
    one_call = len(params_arrays) <= _chunked.CHUNK
    check_placements(
        chunked, arrays, params_arrays, state_split, params_split, commitment=not one_call
    )
    if one_call:
        try:
            return jitted(arrays, params_arrays, state_split, params_split)
        except Exception:  # JAX refused before donating: name the leaf
            check_live(arrays, params_arrays, state_split, params_split)
            check_devices(arrays, params_arrays, state_split, params_split)
            raise
    check_live(arrays, params_arrays, state_split, params_split)  # the head donates the step
    key = (state_split, params_split, _avals(arrays), _avals(params_arrays))
    merge = lambda a, p: (state_split.merge(a), params_split.merge(p))  # noqa: E731
    kinds = chunked.kinds(key, merge, arrays, params_arrays)
    return chunked.run(arrays, params_arrays, kinds)
