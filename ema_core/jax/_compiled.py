"""``make_update``: the EMA update as one jitted, donating function."""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, overload

import jax

from ema_core import _api
from ema_core._arguments import checked_config
from ema_core._config import Config
from ema_core._types import EMAState, Tree
from ema_core.jax import _chunked
from ema_core.jax._call_checks import (
    DONATED_BY,
    check_live,
    check_x64,
    host_checked,
)
from ema_core.jax._devices import check_devices
from ema_core.jax._finite_params import check_finite_params
from ema_core.jax._packed import PackedState
from ema_core.jax._packed_update import PackedUpdate
from ema_core.jax._placement import check_placements, commit_state
from ema_core.jax._split import Split, avals, split


def make_update(config: Config | None = None, *, donate: bool = True) -> _Update:
    """A jitted ``(state, params) -> state`` that applies ``ema_core.update`` under ``config``.

    ``shadow_t = shadow_{t-1} + (1 - d_t) (params_t - shadow_{t-1})`` with ``t = state.step + 1``.
    The step and the decay are traced, so one compilation serves every step. With ``donate``
    the state's buffers are given to the output (the old state must not be used again), so a
    steady-state update allocates nothing and runs at memory speed. Every leaf is updated on the
    devices that hold it: shardings are kept and no collective is issued. Pytrees with non-array
    leaves (equinox modules) are split: only their arrays enter the compiled function. A
    ``PackedState`` (``ema_core.jax.pack``: small shadows in flat buffers, for models of
    thousands of small arrays) is updated to the same bits and returned packed.

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
        self._packed = PackedUpdate(self._chunked, self._guard)

    def _arrays(
        self,
        state_arrays: list[Any],
        params_arrays: list[Any],
        state_split: Split,
        params_split: Split,
    ) -> list[Any]:
        state = state_split.merge(state_arrays)
        new = _api.update(state, params_split.merge(params_arrays), self._compiled_config)
        return split(new)[0]

    def _prepare(
        self, state: EMAState, params: Tree, on_new: Callable[[], None] | None = None
    ) -> tuple[Any, ...]:
        state_arrays, state_split = split(state)
        params_arrays, params_split = split(params)
        return (
            commit_state(
                state_arrays, params_arrays, self._donate, on_new, (state_split, params_split)
            ),
            params_arrays,
            state_split,
            params_split,
        )

    @overload
    def __call__(self, state: EMAState, params: Tree, /) -> EMAState: ...
    @overload
    def __call__(self, state: PackedState, params: Tree, /) -> PackedState: ...
    def __call__(self, state: Any, params: Tree, /) -> Any:
        if isinstance(state, PackedState):
            return self._packed(state, params)
        trusted = getattr(state, "step", None) is self._made()  # valid: not read again
        state = host_checked(state, trusted, "state", DONATED_BY)
        if self._guard:
            check_finite_params(params)
        # beside a step it made, a leaf swapped in (state._replace(shadow=...)) is checked
        prepared = self._prepare(state, params, partial(check_x64, state) if trusted else None)
        out: EMAState = prepared[2].merge(dispatch(self._jitted, self._chunked, *prepared))
        if isinstance(out.step, jax.Array) and not isinstance(out.step, jax.core.Tracer):
            self._made = weakref.ref(out.step)
        return out

    def lower(self, state: EMAState | PackedState, params: Tree, /) -> Any:
        """JAX's lowered computation for these arguments (``.compile().as_text()``: the HLO);
        for a ``PackedState``, of its one compiled call over the flat buffers."""
        if isinstance(state, PackedState):
            return self._packed.lower(state, params)
        return self._jitted.lower(*self._prepare(state, params))


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
    spread = check_placements(
        chunked, arrays, params_arrays, state_split, params_split, commitment=not one_call
    )
    # before the call where arrays span several devices: a deleted one given to a warm
    # compiled call ends the process then (SIGSEGV in XLA, jax 0.10) instead of raising; under
    # an outer jit (the error would come from its lowering, unnamed); and always before the
    # chunked path, whose head donates the step. Elsewhere XLA refuses the call first (and
    # logs a line saying so) and the except below names the array
    if spread or not one_call:
        check_live(arrays, params_arrays, state_split, params_split)
    if one_call:
        try:
            return jitted(arrays, params_arrays, state_split, params_split)
        except Exception:  # JAX refused before donating: name the leaf
            check_live(arrays, params_arrays, state_split, params_split)
            check_devices(arrays, params_arrays, state_split, params_split)
            raise
    key = (state_split, params_split, avals(arrays), avals(params_arrays))
    merge = lambda a, p: (state_split.merge(a), params_split.merge(p))  # noqa: E731
    kinds = chunked.kinds(key, merge, arrays, params_arrays)
    return chunked.run(arrays, params_arrays, kinds)
