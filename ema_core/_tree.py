"""Flatten and rebuild nests of dicts, lists, tuples and NamedTuples (no pytree library).

A nest is walked depth first; dicts in their own key order. Any Mapping is a dict node, rebuilt
as its own type (``_mappings``: a defaultdict keeps its factory, a MappingProxyType becomes a new
proxy). ``None`` is an empty node (it holds no leaf), as in JAX. Once JAX is imported, any other
node registered with ``jax.tree_util`` (a flax nnx ``Variable``, an equinox ``Module``) is opened
one level by ``_pytree``, which keeps its non-array leaves as static parts of the structure.
Anything else is a leaf. Paths are kept so that errors can name the first place where two nests
differ, for example ``params['layer1'][2]``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import array_api_compat as compat

from ema_core import _pytree
from ema_core._mappings import UnbuildableError, mapping_builder
from ema_core._ops import is_host_array
from ema_core._paths import LEAF, NONE, FlatPaths, Path, PathEntry, TreeDef, entry, path_str
from ema_core._types import Tree

__all__ = [
    "Path",
    "PathEntry",
    "TreeDef",
    "flatten",
    "path_str",
    "unflatten",
]


def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(type(node), "_fields")


_Found = tuple[str, tuple[Any, ...], list[Any], Any]


#: Array types seen so far: always leaves, recognised with one set lookup (hot for 20k leaves).
_ARRAY_TYPES: set[type] = set()


def _children(node: Any, rebuild: bool = True) -> _Found | None:
    """(kind, keys, children, aux) of a container node, or None for a leaf. ``rebuild``: find
    how to rebuild a mapping (its aux), refusing one that cannot be rebuilt."""
    cls = type(node)
    if cls in _ARRAY_TYPES:
        return None
    found = _builtin_children(node, rebuild)
    if found is None and _is_plain_array(node):
        _ARRAY_TYPES.add(cls)
    elif found is None and "jax" in sys.modules:  # maybe a node registered with jax.tree_util
        found = _pytree.children(node)
    return found


def _is_plain_array(node: Any) -> bool:
    """An array of a known namespace (not a wrapper such as a flax nnx Variable, which also
    speaks the Array API but is a pytree node)."""
    return bool(
        is_host_array(node)  # numpy, array-api-strict
        or compat.is_torch_array(node)
        or compat.is_jax_array(node)
        or compat.is_cupy_array(node)
    )


def _builtin_children(node: Any, rebuild: bool) -> _Found | None:
    if type(node) is dict or isinstance(node, Mapping):
        keys = tuple(node.keys())
        aux = mapping_builder(node) if rebuild else None
        return "dict", keys, [node[k] for k in keys], aux
    if _is_namedtuple(node):
        return "namedtuple", tuple(type(node)._fields), list(node), None
    if isinstance(node, (list, tuple)):
        return "seq", tuple(range(len(node))), list(node), None
    return None


def _flat(tree: Any) -> tuple[list[Any], Sequence[Path], TreeDef] | None:
    """The fast path of ``flatten``: a plain dict, list or tuple whose values are all arrays of
    types seen before (one C-level pass over the values; None when it does not apply)."""
    cls = type(tree)
    if cls is dict:
        keys, leaves, kind = tuple(tree), list(tree.values()), "key"
    elif cls is list or cls is tuple:
        keys, leaves, kind = tuple(range(len(tree))), list(tree), "key"
    else:
        return None
    if not leaves or not set(map(type, leaves)) <= _ARRAY_TYPES:
        return None
    node = TreeDef("dict" if cls is dict else "seq", cls, keys, (LEAF,) * len(keys))
    return leaves, FlatPaths(kind, keys), node


def flatten(tree: Tree, name: str = "tree") -> tuple[list[Any], Sequence[Path], TreeDef]:
    """Leaves, their paths and the tree definition of a nest (``name`` is used in errors).

    Raises ``TypeError`` for a mapping node that ``unflatten`` could not rebuild, and
    ``ValueError`` for a nest that contains itself (or is nested past the recursion limit).
    """
    fast = _flat(tree)
    if fast is not None:
        return fast
    leaves: list[Any] = []
    paths: list[Path] = []
    try:
        treedef = _walk(tree, (), name, leaves, paths)
    except RecursionError:  # a nest that holds itself, or one past the recursion limit
        raise ValueError(f"{name} contains itself or is nested too deeply to walk") from None
    return leaves, paths, treedef


def _walk(node: Any, path: Path, name: str, leaves: list[Any], paths: list[Path]) -> TreeDef:
    """``flatten``'s walk: ``node``'s definition, its leaves and paths appended. A function of
    the module, not a closure over ``leaves``: a closure that calls itself is a reference cycle,
    which would keep the caller's arrays alive after the call until the next garbage collection
    (so would ``unflatten``'s and ``flatten_pair``'s)."""
    if node is None:
        return NONE
    try:
        found = _children(node)
    except UnbuildableError as err:
        raise TypeError(f"{path_str(name, path)} is {err}; use a dict") from None
    if found is None:
        leaves.append(node)
        paths.append(path)
        return LEAF
    kind, keys, kids, aux = found
    defs = tuple(
        _walk(kid, (*path, entry(kind, key)), name, leaves, paths)
        for key, kid in zip(keys, kids, strict=True)
    )
    return TreeDef(kind, type(node), keys, defs, aux)


def unflatten(treedef: TreeDef, leaves: list[Any]) -> Tree:
    """Rebuild a nest from its definition and leaves (in ``flatten`` order)."""
    return _build(treedef, iter(leaves))


def _build(node: TreeDef, it: Iterator[Any]) -> Any:
    if node.kind == "leaf":
        return next(it)
    if node.kind == "none":
        return None
    return _make(node, [_build(child, it) for child in node.children])


def _make(node: TreeDef, kids: list[Any]) -> Any:
    cls = node.node_type
    if cls is None:  # pragma: no cover - only leaves and None have no type
        raise RuntimeError("a container TreeDef without a type")
    if node.kind == "pytree":
        return node.aux.rebuild(kids)
    if node.kind == "dict":
        pairs = zip(node.keys, kids, strict=True)
        return cls(pairs) if node.aux is None else node.aux(pairs)
    if node.kind == "namedtuple":
        return cls(*kids)
    return cls(kids)
