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


def escape_key(key: str) -> str:
    """One key of a path as it appears in a file's tensor name, escaped as in a JSON pointer:
    ``~`` -> ``~0``, ``/`` -> ``~1`` (so ``/`` can join the keys)."""
    return key.replace("~", "~0").replace("/", "~1")


def unescape_key(part: str) -> str:
    """The inverse of ``escape_key``."""
    return part.replace("~1", "/").replace("~0", "~")


def leaf_names(
    paths: Sequence[Path], what: str, *, prefix: str = "", verb: str = "named"
) -> list[str]:
    """The file names of the leaves at ``paths`` of the nest ``what``: ``prefix`` then the keys,
    each escaped (``escape_key``), joined by ``/``. The names checkpoints and post-hoc snapshots
    give their arrays.

    Raises:
        ValueError: two paths would share a name (the int ``0`` and the str ``"0"`` as keys of
            one dict); the message says they would both be ``verb`` that name.
    """
    head = [prefix] if prefix else []
    names = ["/".join([*head, *(escape_key(str(key)) for _, key in path)]) for path in paths]
    if len(set(names)) < len(names):
        seen: dict[str, Path] = {}
        for name, path in zip(names, paths, strict=True):
            if name in seen:
                raise ValueError(
                    f"{path_str(what, seen[name])} and {path_str(what, path)} would both be "
                    f"{verb} {name!r}; give every array of the nest a distinct key"
                )
            seen[name] = path
    return names


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
