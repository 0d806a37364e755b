"""``make_update`` on a ``PackedState``: the checks, then one compiled call per packed block and
the loose leaves in chunks, all after the whole call was validated (nothing is donated before).

Per call: the params are split (their arrays in the state's order), checked on the state's
device, and validated against the layout by ``ema_core.update``'s checks on abstract values
once per signature (the same errors, naming the same paths, as the unpacked update), as are
the state's own flat buffers and loose shadows (``check_arrays``: one swapped in by hand). Then the
decay is computed once (a head that donates nothing), each block's flat buffer is blended with
its params concatenated into a new buffer (``block``: the flats hold only small leaves,
and a new buffer spares reading 20,000 params' liveness first, which on a 2-core CPU costs
about as much), and only then are the loose shadows updated in place (donated). A deleted
param of a block makes its block's call fail before anything was donated; it is then named.
The loose leaves' params, and the state's own arrays, are checked alive beforehand.
"""

from __future__ import annotations

import operator
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
    leaf_decay,
    update_compiled,
    update_donated,
)
from ema_core.jax._call_checks import check_finite_params, check_not_donated, check_step
from ema_core.jax._chunked import CHUNK, Chunked
from ema_core.jax._packed import Layout, PackedState, size
from ema_core.jax._placement import commit_state, read_shardings
from ema_core.jax._split import Split, avals, split

#: Params signatures whose check is kept (a new one clears them all).
SIGNATURES = 64
_IS_DELETED = operator.methodcaller("is_deleted")


class PackedUpdate:
    """Updates a ``PackedState`` under ``chunked``'s config (its head and its signature check)."""

    def __init__(self, chunked: Chunked, guard: bool) -> None:
        self._chunked = chunked
        self._non_float = chunked.config.non_float
        self._head = jax.jit(chunked._decay)  # donates nothing: a block may still fail after it
        self._guard = guard
        self._placed: list[Any] = []  # the params' shardings at the last call that passed
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
        if state.step is not self._made():  # a step this update made is valid: not read again
            check_not_donated(state.step, "state", "this update (make_update donates by default)")
            check_step(state.step)  # on the CPU, waits for the update that made it
        params_arrays, params_split = split(params)
        traced = any(isinstance(x, jax.core.Tracer) for x in (state.step, *params_arrays[:1]))
        if not traced:  # inside a transformation the arrays have no buffers to check
            loose_params = [params_arrays[i] for i in layout.loose]
            _check_live(jax.tree_util.tree_leaves(state), loose_params)
        if self._guard:
            check_finite_params(params)
        key = (layout, params_split, avals(params_arrays), avals([*state.flats, *state.loose]))
        kinds = self._kinds.get(key)
        if kinds is None:
            check_arrays(state)
            kinds = self._check(state, params_split, params_arrays)
            if len(self._kinds) >= SIGNATURES:
                self._kinds.clear()
            self._kinds[key] = kinds
        found = None if traced else read_shardings([], params_arrays)  # None: some are traced
        shardings = found[1] if found else []
        if found and not _same(shardings, self._placed):  # steady: the same objects
            _check_devices(state, shardings, params)
            self._placed = shardings
        if not traced:  # a shared or repeated loose shadow copied, a fresh init's committed
            placed = commit_state([state.step, *state.loose, state.weight], params_arrays, donate)
            state = state._replace(step=placed[0], loose=tuple(placed[1:-1]), weight=placed[-1])
        t, d, r, weight = self._head(state.step, state.weight)
        try:
            groups = zip(state.flats, block_params(params_arrays, layout), strict=True)
            flats = tuple(block(flat, group, d, r) for flat, group in groups)
        except Exception:
            if not traced:
                _check_live([], params_arrays)  # a deleted param, named; nothing was donated
            raise
        leaf = update_donated if donate else update_compiled
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
        if not traced:
            self._made = weakref.ref(t)
        return PackedState(t, flats, tuple(loose), weight, layout)


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


def _block_impl(flat: Any, params: tuple[Any, ...], decay: Any, rate: Any) -> Any:
    """One packed block's update: the params concatenated in the compute dtype, then the leaf
    update's own blend (elementwise, so each element gets the bits its leaf would)."""
    wide = jnp.result_type(float)
    gates = _Gates(leaf_decay(decay, rate, wide), jnp.asarray(rate, dtype=wide))
    ct = compute_dtype(jnp, flat.dtype)
    return _blend(flat, jnp.concatenate([p.ravel().astype(ct) for p in params]), gates)


#: Not donated: a block's result is a new buffer (see the module's docstring).
block = jax.jit(_block_impl)


def block_params(params: Sequence[Any], layout: Layout) -> list[tuple[Any, ...]]:
    """The params of each block, in the block's order."""
    return [take(params) for take in layout.takers]


def _check_live(state_arrays: list[Any], params_arrays: list[Any]) -> None:
    """Refuse a state or params array deleted (donated to an earlier call) before any call."""
    for what, group in (("state", state_arrays), ("params", params_arrays)):
        try:
            dead = any(map(_IS_DELETED, group))
        except AttributeError:  # a numpy array: looked at one by one
            dead = any(isinstance(x, jax.Array) and x.is_deleted() for x in group)
        if dead:
            raise ValueError(
                f"an array of the {what} was deleted (donated to an earlier call that donates "
                "it, such as make_update, or deleted by hand): pass the state that call "
                "returned, or use donate=False; nothing was donated"
            )


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _check_devices(state: PackedState, shardings: list[Any], params: Tree) -> None:
    """Params committed to another device than the packed state's are refused by name (JAX
    would refuse them at their block's or loose chunk's call without naming them, and after
    the earlier loose chunks were donated); uncommitted ones are moved by JAX, as the unpacked
    update moves them."""
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
