"""The layout of a packed JAX state (which shadow lives where: static, hashable) and the
``PackedState`` pytree that holds its arrays; ``_packed`` makes and reads them."""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ema_core.jax._split import Split

__all__ = ["Layout", "PackedState", "size"]


@dataclass(frozen=True)
class Layout:
    """Where each shadow array of a packed state lives (static, hashable).

    ``split``: the shadow tree split into arrays and static leaves. ``blocks[b]``: the indices
    of the shadow arrays packed into flat buffer b, in order; ``offsets[i]``: where the i-th
    shadow array starts in its block's buffer (-1 for a loose one). ``loose``: the indices of
    the loose shadow arrays, in order. ``shapes`` and ``dtypes``: each shadow array's shape and
    dtype name.
    """

    split: Split
    blocks: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    loose: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @functools.cached_property
    def _hash(self) -> int:
        return hash((self.split, self.blocks, self.offsets, self.loose, self.shapes, self.dtypes))

    def __hash__(self) -> int:  # computed once: the update looks its signature up every call
        return self._hash

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the cached properties (``takers`` holds lambdas, and ``_hash`` of
        str names differs in another process): they are made again on first use."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @functools.cached_property
    def takers(self) -> list[Callable[[Sequence[Any]], tuple[Any, ...]]]:
        """Per block, a function that picks its members out of a list (one C call; made once)."""
        return [_taker(members) for members in self.blocks]

    @functools.cached_property
    def structs(self) -> list[jax.ShapeDtypeStruct]:
        """The shadow arrays as abstract values (for checking params against them; made once)."""
        return [
            jax.ShapeDtypeStruct(s, jnp.dtype(d))  # type: ignore[no-untyped-call]
            for s, d in zip(self.shapes, self.dtypes, strict=True)
        ]


class PackedState(NamedTuple):
    """A state whose small shadows live in flat buffers (``pack``; read it with ``unpack``).

    Attributes:
        step: as ``EMAState.step``.
        flats: one 1-d buffer per block of packed shadows (one dtype per block).
        loose: the shadows that were not packed (large or integer leaves), raveled (1-d), in
            tree order.
        weight: as ``EMAState.weight``.
        layout: where each shadow lives (static: not a pytree child).
    """

    step: Any
    flats: tuple[Any, ...]
    loose: tuple[Any, ...]
    weight: Any
    layout: Layout


def _children(s: PackedState) -> tuple[tuple[Any, ...], Layout]:
    return (s.step, s.flats, s.loose, s.weight), s.layout


def _rebuilt(layout: Layout, children: Any) -> PackedState:
    step, flats, loose, weight = children
    return PackedState(step, flats, loose, weight, layout)


_KEYS = tuple(jax.tree_util.GetAttrKey(k) for k in ("step", "flats", "loose", "weight"))
jax.tree_util.register_pytree_with_keys(  # paths name the fields: state.flats[1]
    PackedState,
    lambda s: (tuple(zip(_KEYS, _children(s)[0], strict=True)), s.layout),
    _rebuilt,
    _children,
)


def _taker(members: tuple[int, ...]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    if members == tuple(range(members[0], members[-1] + 1)):  # a run of leaves: one slice
        run = slice(members[0], members[-1] + 1)
        return lambda arrays: tuple(arrays[run])
    return operator.itemgetter(*members)  # two or more: a run covers every single one


def size(shape: tuple[int, ...]) -> int:
    """The number of elements of an array of ``shape``."""
    return int(np.prod(shape, dtype=np.int64))
