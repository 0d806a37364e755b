"""``make_update`` on a ``PackedState``: the checks, then the update, all after the whole call
was validated (nothing is donated before).

Per call: the params are split (their arrays in the state's order), checked on the state's
device, and validated against the layout by ``ema_core.update``'s checks on abstract values
once per signature (the same errors, naming the same paths, as the unpacked update), as are
the state's own flat buffers and loose shadows (``_packed_checks.check_arrays``: one swapped in
by hand). Then, as the unpacked update:

* up to ``CHUNK`` params (models of a few hundred arrays): one compiled call computes the decay,
  blends each block's params (concatenated) into its flat buffer and each loose shadow, the
  whole state donated (``_whole``). JAX checks every argument before it donates any, so a
  deleted param fails the call with nothing donated; it is then named. One call, not three (a
  head, the blocks, the loose leaves), spares the host two dispatches per update (README,
  Performance, "JAX");
* past it (models of thousands of arrays): a head computes the decay and donates nothing, each
  block is blended into a new buffer (``block``: the flats hold only small leaves, and a new
  buffer spares reading 20,000 params' liveness first, which on a 2-core CPU costs about as
  much; a deleted param fails its block's call before anything was donated), and only then are
  the loose shadows updated in place, in donated chunks of ``CHUNK`` (``_in_chunks``). The loose
  leaves' params, and the state's own arrays, are checked alive beforehand.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ema_core._checks import check_state, check_weight
from ema_core._core import compute_dtype
from ema_core._leaf_checks import check_leaves
from ema_core._tree_pair import flatten_pair
from ema_core._types import EMAState, LeafKind, Tree
from ema_core.backends.jax._leaves import (
    _blend,
    _Gates,
    _update_impl,
    leaf_decay,
    update_compiled,
    update_donated,
    widen,
)
from ema_core.jax._call_checks import DONATED_BY, host_checked
from ema_core.jax._chunked import CHUNK, Chunked
from ema_core.jax._finite_params import check_finite_params
from ema_core.jax._packed_checks import check_arrays, check_devices, check_live, same
from ema_core.jax._packed_layout import Layout, PackedState
from ema_core.jax._placement import commit_state, read_shardings
from ema_core.jax._split import Split, avals, split_avals

#: Params signatures whose check is kept (a new one clears them all).
SIGNATURES = 64


class PackedUpdate:
    """Updates a ``PackedState`` under ``chunked``'s config (its head and its signature check)."""

    def __init__(self, chunked: Chunked, guard: bool) -> None:
        self._chunked = chunked
        self._non_float = chunked.config.non_float
        self._head = jax.jit(chunked._decay)  # donates nothing: a block may still fail after it
        donated = (0, 1, 2, 3) if chunked.donate else ()
        self._one = jax.jit(self._one_impl, static_argnames=("kinds",), donate_argnums=donated)
        self._guard = guard
        self._placed: list[Any] = []  # the loose params' shardings at the last long call
        self._kinds: dict[Any, tuple[LeafKind, ...]] = {}
        self._made: Callable[[], Any] = lambda: None  # the step this update last returned

    def _check(
        self, state: PackedState, params_split: Split, params_arrays: list[Any]
    ) -> tuple[LeafKind, ...]:
        """What ``ema_core.update`` checks before it writes (the state, the trees, each leaf's
        shape and dtype, the weight), on abstract values: the same errors, naming the same
        paths, without tracing 20,000 leaf updates. Returns each array's kind, by its param's
        dtype (as the chunked update's)."""
        layout = state.layout

        def check(a: list[Any], p: list[Any]) -> None:
            abstract = EMAState(a[0], layout.split.merge(a[1:-1]), a[-1])
            check_state(abstract)
            shadows, leaves, paths, _ = flatten_pair(
                abstract.shadow, params_split.merge(p), "state.shadow", "params"
            )
            check_leaves(shadows, leaves, paths, ("state.shadow", "params"), self._non_float)
            check_weight(abstract.weight)

        jax.eval_shape(check, [state.step, *layout.structs, state.weight], params_arrays)
        kinds: tuple[LeafKind, ...] = tuple(
            "float" if jnp.issubdtype(p.dtype, jnp.inexact) else "exact" for p in params_arrays
        )
        return kinds

    def __call__(self, state: PackedState, params: Tree) -> PackedState:
        layout, donate = state.layout, self._chunked.donate
        kept = (state.step, *state.flats, *state.loose, state.weight)
        if not all(isinstance(x, jax.Array) for x in kept):
            bad = next(type(x).__name__ for x in kept if not isinstance(x, jax.Array))
            raise TypeError(
                f"a PackedState holds JAX arrays, got a {bad} (a state fetched with "
                "jax.device_get): put it back with jax.device_put(state, device)"
            )
        # a step this update made is valid: not read again (on the CPU, reading it waits for
        # the update that made it); a state packed under x64 is refused with x64 off
        host_checked(state, state.step is self._made(), "state", DONATED_BY)
        params_arrays, params_split, params_avals = split_avals(params)
        traced = any(isinstance(x, jax.core.Tracer) for x in (state.step, *params_arrays[:1]))
        key = (layout, params_split, params_avals, avals([*state.flats, *state.loose]))
        kinds = self._kinds.get(key)
        if kinds is None:  # the trees first: a missing param is named by its path
            check_arrays(state)
            kinds = self._check(state, params_split, params_arrays)
            if len(self._kinds) >= SIGNATURES:
                self._kinds.clear()
            self._kinds[key] = kinds
        loose_params = [params_arrays[i] for i in layout.loose]
        if not traced:  # inside a transformation the arrays have no buffers to check
            check_live(jax.tree_util.tree_leaves(state), loose_params, state, params)
        if self._guard:
            check_finite_params(params)
        # params committed to another device: the one compiled call, or a block's call, fails
        # before anything was donated, and they are named then (below); the loose chunks of the
        # longer path are checked here, before the first of them is donated
        one_call = len(params_arrays) <= CHUNK
        found = None if traced or one_call else read_shardings([], loose_params)
        if found and not same(found[1], self._placed):  # steady: the same objects
            check_devices(state, found[1], params)
            self._placed = found[1]
        if not traced:  # a shared or repeated shadow copied, a fresh init's committed
            state = _placed(state, params_arrays, donate)
        run = self._whole if one_call else self._in_chunks
        try:
            new = run(state, params_arrays, kinds)
        except Exception:
            if not traced:  # a deleted param, or one on another device, named; nothing donated
                check_live([], params_arrays, state, params)
                found = read_shardings([], params_arrays)
                if found:
                    check_devices(state, found[1], params)
            raise
        if not traced:
            self._made = weakref.ref(new.step)
        return new

    def lower(self, state: PackedState, params: Tree) -> Any:
        """The lowered single compiled call of ``_whole`` for these arguments (checked first)."""
        params_arrays, params_split, _ = split_avals(params)
        check_arrays(state)
        kinds = self._check(state, params_split, params_arrays)
        args, static = self._whole_args(state, params_arrays, kinds)
        return self._one.lower(*args, **static)

    def _whole_args(
        self, state: PackedState, params_arrays: list[Any], kinds: tuple[LeafKind, ...]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        layout = state.layout
        loose_params = tuple(params_arrays[i] for i in layout.loose)
        groups = tuple(block_params(params_arrays, layout))
        args = (state.step, state.weight, state.flats, state.loose, groups, loose_params)
        return args, {"kinds": tuple(kinds[i] for i in layout.loose)}

    def _whole(
        self, state: PackedState, params_arrays: list[Any], kinds: tuple[LeafKind, ...]
    ) -> PackedState:
        """Up to ``CHUNK`` params: the decay, the blocks and the loose leaves in one compiled
        call, every shadow donated (JAX checks every argument before it donates any)."""
        args, static = self._whole_args(state, params_arrays, kinds)
        t, flats, loose, weight = self._one(*args, **static)
        return PackedState(t, flats, loose, weight, state.layout)

    def _one_impl(
        self,
        step: Any,
        weight: Any,
        flats: tuple[Any, ...],
        loose: tuple[Any, ...],
        groups: tuple[tuple[Any, ...], ...],
        loose_params: tuple[Any, ...],
        *,
        kinds: tuple[LeafKind, ...],
    ) -> tuple[Any, tuple[Any, ...], tuple[Any, ...], Any]:
        t, d, r, new_weight = self._chunked._decay(step, weight)
        new_flats = tuple(_block_impl(f, g, d, r) for f, g in zip(flats, groups, strict=True))
        new_loose = _update_impl(loose, loose_params, d, r, kinds=kinds, non_float=self._non_float)
        return t, new_flats, new_loose, new_weight

    def _in_chunks(
        self, state: PackedState, params_arrays: list[Any], kinds: tuple[LeafKind, ...]
    ) -> PackedState:
        """More params: the decay by a head that donates nothing, each block into a new buffer
        (a block's call fails on a deleted param before anything was donated), then the loose
        leaves in chunks of ``CHUNK``, donated."""
        layout = state.layout
        t, d, r, weight = self._head(state.step, state.weight)
        groups = zip(state.flats, block_params(params_arrays, layout), strict=True)
        flats = tuple(block(flat, group, d, r) for flat, group in groups)
        leaf = update_donated if self._chunked.donate else update_compiled
        loose: list[Any] = []
        for k in range(0, len(layout.loose), CHUNK):
            part = layout.loose[k : k + CHUNK]
            loose += leaf(
                tuple(state.loose[k : k + CHUNK]),
                tuple(params_arrays[i] for i in part),
                d,
                r,
                kinds=tuple(kinds[i] for i in part),
                non_float=self._non_float,
            )
        return PackedState(t, flats, tuple(loose), weight, layout)


def _placed(state: PackedState, params_arrays: list[Any], donate: bool) -> PackedState:
    """``state`` with its arrays as ``commit_state`` places them (a shadow also passed as a
    param, or twice in the state, copied before it is donated; uncommitted ones committed)."""
    blocks = len(state.flats)
    arrays = [state.step, *state.flats, *state.loose, state.weight]
    placed = commit_state(arrays, params_arrays, donate)
    return state._replace(
        step=placed[0],
        flats=tuple(placed[1 : 1 + blocks]),
        loose=tuple(placed[1 + blocks : -1]),
        weight=placed[-1],
    )


def _block_impl(flat: Any, params: tuple[Any, ...], decay: Any, rate: Any) -> Any:
    """One packed block's update: the params concatenated in the compute dtype, then the leaf
    update's own blend (elementwise, so each element gets the bits its leaf would).

    The concatenation is kept out of the blend's loop (``optimization_barrier``): fused into it,
    XLA on the CPU picks each element's param among the block's 256 in the loop, which cost more
    than writing the params once into a block-sized buffer and reading them back."""
    wide = jnp.result_type(float)
    gates = _Gates(leaf_decay(decay, rate, wide), jnp.asarray(rate, dtype=wide))
    ct = compute_dtype(jnp, flat.dtype)
    joined = jnp.concatenate([widen(p.ravel(), ct) for p in params])
    return _blend(flat, jax.lax.optimization_barrier(joined), gates)  # type: ignore[no-untyped-call]


#: Not donated: a block's result is a new buffer (see the module's docstring).
block = jax.jit(_block_impl)


def block_params(params: Sequence[Any], layout: Layout) -> list[tuple[Any, ...]]:
    """The params of each block, in the block's order."""
    return [take(params) for take in layout.takers]
