"""Two nests flattened leaf for leaf (``flatten_pair``): the shadow against the params, matched
by dict key, NamedTuple field and position, with the first difference named by its path.

A flat container of known arrays takes a bulk path (``_flat_match``); anything else is walked
against the first nest's ``TreeDef`` (``_tree``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ema_core._paths import FlatPaths, Path, TreeDef, entry, path_str
from ema_core._pytree import static_mismatch
from ema_core._tree import _ARRAY_TYPES, _children, _Found, flatten
from ema_core._types import Tree

__all__ = ["Pair", "flatten_pair"]


def _mismatch(a_name: str, b_name: str, path: Path, what: str) -> str:
    return f"{b_name} does not match the structure of {a_name} at {path_str(b_name, path)}: {what}"


def _flat_match(treedef: TreeDef, other: Any) -> list[Any] | None:
    """``other``'s leaves when ``treedef`` is flat and ``other`` is the same plain container of
    known arrays with the same keys or length; None sends the caller to the full walk (which
    names any difference)."""
    cls: Any = type(other)
    if cls is not treedef.node_type or len(other) != len(treedef.keys):
        return None
    if treedef.node_type is dict:
        try:
            leaves = list(map(other.__getitem__, treedef.keys))
        except KeyError:
            return None
    else:
        leaves = list(other)
    return leaves if set(map(type, leaves)) <= _ARRAY_TYPES else None


class Pair(NamedTuple):
    """Two nests flattened leaf for leaf: ``ref``'s leaves, ``other``'s in the same order, the
    paths (for messages) and ``ref``'s tree definition (to rebuild the result)."""

    ref: list[Any]
    other: list[Any]
    paths: Sequence[Path]
    treedef: TreeDef


def flatten_pair(ref: Tree, other: Tree, ref_name: str, other_name: str) -> Pair:
    """Flatten two nests of the same structure, leaf for leaf in ``ref``'s order.

    Dicts match by key (order may differ), NamedTuples by their fields (same names in the same
    order, any class), lists and tuples by position. Raises ``ValueError`` naming the first
    path where the nests differ in keys or lengths, ``TypeError`` where container types or
    NamedTuple fields differ.
    """
    ref_leaves, paths, treedef = flatten(ref, ref_name)
    if isinstance(paths, FlatPaths):
        matched = _flat_match(treedef, other)
        if matched is not None:
            return Pair(ref_leaves, matched, paths, treedef)
    other_leaves: list[Any] = []
    fail: Callable[[Path, str], str] = lambda p, w: _mismatch(ref_name, other_name, p, w)  # noqa: E731

    _walk(treedef, other, (), (ref_name, other_name), fail, other_leaves)
    return Pair(ref_leaves, other_leaves, paths, treedef)


def _walk(
    node: TreeDef,
    value: Any,
    path: Path,
    names: tuple[str, str],
    fail: Callable[[Path, str], str],
    other_leaves: list[Any],
) -> None:
    """``flatten_pair``'s walk of ``other`` along ``ref``'s definition, its leaves appended (a
    function of the module, not a closure that calls itself: see ``_tree._walk``)."""
    if node.kind == "leaf":
        if value is None or _children(value, rebuild=False) is not None:
            raise TypeError(fail(path, f"expected an array, got {type(value).__name__}"))
        other_leaves.append(value)
        return
    if node.kind == "none":
        if value is not None:
            raise TypeError(fail(path, f"expected None, got {type(value).__name__}"))
        return
    found = _children(value, rebuild=False)
    if found is None or found[0] != node.kind or (node.kind == "pytree" and found[3] != node.aux):
        if found is not None and found[0] == node.kind == "pytree":
            odd = static_mismatch(node.aux, found[3], names, path)
            if odd is not None:  # a str where the other holds an array: named at its path
                raise TypeError(odd)
        want = node.node_type.__name__ if node.node_type else node.kind
        same = " with other static fields" if type(value) is node.node_type else ""
        raise TypeError(fail(path, f"expected a {want}, got {type(value).__name__}{same}"))
    kids = _match_children(node, value, found, path, fail)
    for key, child, kid in zip(node.keys, node.children, kids, strict=True):
        _walk(child, kid, (*path, entry(node.kind, key)), names, fail, other_leaves)


def _match_children(
    node: TreeDef,
    value: Any,
    found: _Found,
    path: Path,
    fail: Callable[[Path, str], str],
) -> list[Any]:
    kind, keys, kids, _ = found
    if kind == "namedtuple" and keys != node.keys:  # matched by field, never by position
        want = f"{getattr(node.node_type, '__name__', kind)} with fields {node.keys}"
        raise TypeError(fail(path, f"expected a {want}, got {type(value).__name__} with {keys}"))
    if kind == "dict":
        for key in node.keys:
            if key not in value:
                raise ValueError(fail((*path, ("key", key)), "key is missing"))
        if len(keys) != len(node.keys):  # every expected key is there: the others are extra
            known = set(node.keys)
            extra = next(key for key in keys if key not in known)
            raise ValueError(fail((*path, ("key", extra)), "unexpected key"))
        return [value[k] for k in node.keys]
    if len(kids) != len(node.keys):
        where = (*path, entry(kind, min(len(kids), len(node.keys))))
        raise ValueError(fail(where, f"length {len(kids)} != {len(node.keys)}"))
    return kids
