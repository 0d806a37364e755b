"""A pytree split for a compiled call: its arrays (JAX and numpy), which enter the function,
and its other leaves (equinox's functions, flags), kept aside as static values; and the arrays'
signature (``avals``) that a path checked once per signature keys on."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

__all__ = ["Split", "avals", "split", "split_avals"]


@dataclass(frozen=True, eq=False)
class Split:
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
            isinstance(other, Split)
            and self._hash == other._hash
            and (self.treedef, self.dynamic, self.statics)
            == (other.treedef, other.dynamic, other.statics)
        )

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its fields: the hash (of a treedef, of str statics) is another process's
        own, so it is computed again there."""
        return (Split, (self.treedef, self.dynamic, self.statics))

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


def split(tree: Any) -> tuple[list[Any], Split]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    dynamic = _dynamic(leaves)
    if False not in dynamic:  # every leaf an array: the common case
        return leaves, Split(treedef, dynamic, ())
    arrays = [x for x, d in zip(leaves, dynamic, strict=True) if d]
    statics = tuple(x for x, d in zip(leaves, dynamic, strict=True) if not d)
    try:
        return arrays, Split(treedef, dynamic, statics)
    except TypeError:  # an unhashable non-array leaf: name it
        _refuse_unhashable(tree)
        raise


def _refuse_unhashable(tree: Any) -> None:
    """Raise a ``TypeError`` naming the first non-array leaf of ``tree`` that is unhashable."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, (jax.Array, np.ndarray)):
            continue
        try:
            hash(leaf)
        except TypeError:
            raise TypeError(
                f"the leaf at {jax.tree_util.keystr(path) or 'the root'} is a "
                f"{type(leaf).__name__}, neither an array nor hashable: the compiled update "
                "passes non-array leaves as compile-time constants, which must be hashable; "
                "mark the field static (equinox: eqx.field(static=True)) or make it hashable "
                "(a frozen dataclass)"
            ) from None


_SHAPE_DTYPE = operator.attrgetter("shape", "dtype")
_AVAL = operator.attrgetter("aval")


def avals(arrays: list[Any]) -> tuple[Any, ...]:
    """The arrays' signature: JAX's ``aval`` of each (shape, dtype, weak type and sharding: one
    read per array, a fifth of the time of reading the shape and the dtype on 20,000 arrays),
    or shape and dtype where some array has no ``aval`` (numpy)."""
    try:
        return tuple(map(_AVAL, arrays))
    except AttributeError:
        return tuple(map(_SHAPE_DTYPE, arrays))


def split_avals(tree: Any) -> tuple[list[Any], Split, tuple[Any, ...]]:
    """``split(tree)`` and ``avals`` of its arrays. Where every leaf has an ``aval`` (JAX arrays
    and tracers: params as a train step returns them), that one read per leaf also says that
    every leaf is an array, so the type of each is not looked up: a quarter less host work than
    ``split`` then ``avals`` on a list of 20,000 arrays."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    try:
        found = tuple(map(_AVAL, leaves))
    except AttributeError:  # a numpy array or a static leaf among them
        arrays, tree_split = split(tree)
        return arrays, tree_split, avals(arrays)
    return leaves, Split(treedef, (True,) * len(leaves), ()), found
