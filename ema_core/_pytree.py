"""Open one level of a node registered with ``jax.tree_util`` for ``ema_core._tree``.

The tree walk calls ``children`` only once JAX is imported (``"jax" in sys.modules``); this
module imports JAX inside its functions, so importing it (and ``ema_core``) imports no framework.

flax nnx ``State`` is a Mapping and its ``Variable`` leaves are pytree nodes; equinox modules are
pytree nodes whose static fields live in the tree definition. ``children`` opens such a node one
level: arrays and containers become children that the walk visits (and the update replaces);
every other leaf (an activation function, a Python number) is static: kept as it is, in place,
except the value of an nnx ``Variable``, which is always visited (a Python number there is a
leaf, refused as any non-array leaf is).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat as compat

from ema_core._paths import Path, path_str

#: One step into a nest, as ``ema_core._tree.PathEntry``: ``("attr", name)`` or ``("key", key)``.
Entry = tuple[str, Any]
#: (kind, path entries, children, spec), as ``ema_core._tree._children`` returns them.
Found = tuple[str, tuple[Entry, ...], list[Any], "PytreeSpec"]


@dataclass(frozen=True, eq=False)
class PytreeSpec:
    """How to rebuild a node: its one-level tree definition and its static leaves.

    ``slots[i]`` is True where the i-th child is visited and False where ``statics`` holds it;
    ``entries[i]`` is its path entry (for messages: ``static_mismatch``). Two specs match when
    their tree definitions and slots do; the static values themselves may differ (two equinox
    models built apart hold different ``lambda`` objects), and a rebuilt node keeps the static
    values of the nest it was flattened from.
    """

    treedef: Any
    slots: tuple[bool, ...]
    statics: tuple[Any, ...]
    entries: tuple[Entry, ...]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PytreeSpec):
            return NotImplemented
        return self.slots == other.slots and self.treedef == other.treedef

    def __hash__(self) -> int:
        return hash((self.treedef, self.slots))

    def rebuild(self, kids: Sequence[Any]) -> Any:
        """The node with ``kids`` in the visited slots and the statics in the others."""
        kid, static = iter(kids), iter(self.statics)
        return self.treedef.unflatten([next(kid) if s else next(static) for s in self.slots])


def children(node: Any) -> Found | None:
    """Open ``node`` one level, or None when it is a leaf (an array, a number, an object)."""
    import jax
    import numpy as np

    if isinstance(node, (jax.Array, np.ndarray, np.generic)):
        return None  # nnx Variables look like arrays (__array_namespace__) but are nodes
    pairs, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if jax.tree_util.treedef_is_leaf(treedef):
        return None
    data = _is_nnx_variable(node)  # a Variable's value is data, whatever it holds
    slots = tuple(data or _visited(value) for _, value in pairs)
    entries = tuple(_entry(path[0]) for path, _ in pairs)
    keys = tuple(e for e, s in zip(entries, slots, strict=True) if s)
    kids = [value for (_, value), s in zip(pairs, slots, strict=True) if s]
    statics = tuple(value for (_, value), s in zip(pairs, slots, strict=True) if not s)
    return "pytree", keys, kids, PytreeSpec(treedef, slots, statics, entries)


def static_mismatch(
    ref: PytreeSpec, other: PytreeSpec, names: tuple[str, str], path: Path
) -> str | None:
    """Why two nodes at ``path`` of one type and tree definition do not match when one keeps a
    child as a static field (a ``str``, a number) where the other holds an array, None or a
    container: the message names that child by its full path, as a dict's non-array leaf is
    named (``params['n'].b must be an array, got str``). None when they differ otherwise.
    """
    if ref.treedef != other.treedef or ref.slots == other.slots:
        return None
    specs = (ref, other)
    for i, pair in enumerate(zip(ref.slots, other.slots, strict=True)):
        if pair[0] != pair[1]:
            side = pair.index(False)  # the nest that keeps this child static
            static = specs[side].statics[specs[side].slots[:i].count(False)]
            where, there = (path_str(n, (*path, specs[side].entries[i])) for n in names)
            if side:
                where, there = there, where
            return (
                f"{where} must be an array, got {type(static).__name__} ({there} is an array, "
                "None or a container: a non-array field of a pytree node is kept, unchanged, "
                "only where both nests hold one)"
            )
    return None  # pragma: no cover - unequal slots differ somewhere


def _is_nnx_variable(node: Any) -> bool:
    """A flax nnx ``Variable`` (flax is looked up, never imported): its value is visited even
    when it is not an array, so a ``Param`` holding a Python number is refused by its path
    instead of being kept, unchanged, as a static part of the structure."""
    nnx = sys.modules.get("flax.nnx")
    variable = getattr(nnx, "Variable", None)
    return isinstance(variable, type) and isinstance(node, variable)


def _visited(value: Any) -> bool:
    """Arrays, None and pytree containers are visited; other leaves are static."""
    import jax

    if value is None or compat.is_array_api_obj(value):
        return True
    return not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(value))


def _entry(key: Any) -> Entry:
    """A ``jax.tree_util`` key as an ``ema_core`` path entry (``.name`` or ``[key]``)."""
    import jax

    if isinstance(key, jax.tree_util.GetAttrKey):
        return ("attr", key.name)
    if isinstance(key, jax.tree_util.DictKey):
        return ("key", key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return ("key", key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return ("key", key.key)
    return ("key", str(key))
