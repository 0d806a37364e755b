"""The shape of a nest and the paths into it: ``TreeDef`` (what ``_tree`` flattens a nest into
and rebuilds it from), path entries, and how a path is written in an error message
(``params['layer1'][2].weight``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: One step into a nest: a dict key, a sequence index or a NamedTuple field name.
PathEntry = tuple[str, Any]
Path = tuple[PathEntry, ...]


@dataclass(frozen=True)
class TreeDef:
    """The shape of a nest without its leaves; ``unflatten`` fills it again."""

    kind: str  # "leaf" | "none" | "dict" | "seq" | "namedtuple" | "pytree"
    node_type: type | None = None
    keys: tuple[Any, ...] = ()
    children: tuple[TreeDef, ...] = ()
    aux: Any = None  # "pytree": the backend's rebuild spec (compared when matching two nests)

    @property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(child.num_leaves for child in self.children)


LEAF = TreeDef("leaf")
NONE = TreeDef("none")


def path_str(root: str, path: Path) -> str:
    """Render a path as Python would index it: ``params['a'][0].field``."""
    parts = [root]
    for kind, key in path:
        parts.append(f".{key}" if kind == "attr" else f"[{key!r}]")
    return "".join(parts)


def entry(kind: str, key: Any) -> PathEntry:
    if kind == "pytree":  # the backend gives ready path entries
        return key  # type: ignore[no-any-return]
    return ("attr" if kind == "namedtuple" else "key", key)


class FlatPaths(Sequence[Path]):
    """The paths of a flat dict or list, made when asked (only errors read them): no tuples per
    leaf on the fast path, which a ``state_dict`` of 100k tensors would otherwise build."""

    def __init__(self, kind: str, keys: tuple[Any, ...]) -> None:
        self.kind, self.keys = kind, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [((self.kind, k),) for k in self.keys[i]]
        return ((self.kind, self.keys[i]),)
