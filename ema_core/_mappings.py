"""How ``unflatten`` rebuilds a mapping node, decided while flattening (before any write).

A plain dict, an ``OrderedDict`` and dict subclasses that keep dict's constructor are rebuilt as
``cls(pairs)``; other dict subclasses (``defaultdict`` keeps its factory, ``Counter``) as a copy
of the emptied original filled key by key; other mappings (``MappingProxyType``, ``ChainMap``)
as ``cls(dict(pairs))``, which a read-only proxy allows: a new proxy over the updated leaves.
A mapping that none of these can rebuild is refused here, so nothing has been written yet.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class UnbuildableError(TypeError):
    """A Mapping node that ``unflatten`` could not rebuild (raised while flattening)."""


@dataclass(frozen=True, eq=False)
class _Refill:
    """Rebuilds a dict subclass whose constructor does not take pairs (``defaultdict``,
    ``Counter``): a copy of the emptied original, filled key by key."""

    empty: Any

    def __call__(self, pairs: Any) -> Any:
        new = copy.copy(self.empty)
        for key, value in pairs:
            new[key] = value
        return new


#: Mapping types that are not dicts, by whether ``cls(dict)`` builds one (asked once per type).
_FROM_DICT: dict[type, bool] = {}


def mapping_builder(node: Any) -> Callable[[Any], Any] | None:
    """How to rebuild a mapping node: None for ``cls(pairs)`` (dict, OrderedDict and subclasses
    that keep their constructor), else a builder. Found before anything is written; a mapping
    that cannot be rebuilt raises ``UnbuildableError`` here."""
    cls = type(node)
    if cls is dict or cls.__init__ in (dict.__init__, OrderedDict.__init__):
        return None
    if isinstance(node, dict):
        try:
            empty = copy.copy(node)
            empty.clear()
        except Exception as err:  # a subclass whose copy fails: refuse before any write
            raise UnbuildableError(f"a {cls.__name__} that cannot be copied ({err})") from err
        return _Refill(empty)
    ok = _FROM_DICT.get(cls)
    if ok is None:
        try:
            ok = _FROM_DICT[cls] = isinstance(cls({}), Mapping)
        except Exception:
            ok = _FROM_DICT[cls] = False
    if not ok:
        raise UnbuildableError(f"a {cls.__name__}, which cannot be built from a dict")
    return lambda pairs: cls(dict(pairs))
