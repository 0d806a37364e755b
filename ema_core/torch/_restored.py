"""The writes a copying ``swap()`` undid, so that an enclosing ``swap(copy=False)`` of another
EMA does not take them for writes into its shadows.

Inside ``a.swap(copy=False)`` the model's tensors are ``a``'s shadows; ``b.swap()`` (copying)
writes ``b``'s averages into them and on exit puts the saved values back bit for bit, into
the storage it wrote (also where a conversion inside the block gave the param another one).
Their version counters still moved, which ``a`` reads as "written". While ``a`` lends a shadow
it keeps the tensor's version at which the values are its own; a copying restore that starts
at that version moves it to the version the restore ends at (for every open non-copying swap
of the tensor: they share its one version counter), and ``a`` counts the tensor unwritten when
the version it keeps is the current one. Entries are keyed by ``id`` of the live tensor, which
the lending swap holds until it closes its entry: no weak reference is taken
(``torch.utils.swap_tensors``, under torch's conversion flag, refuses a tensor that has one).
"""

from __future__ import annotations

import torch

#: id(live tensor) -> per open ``swap(copy=False)`` lending it, outermost first: the version
#: at which it holds that swap's values (its lending, or the end of a copying restore since).
_KEPT: dict[int, list[int]] = {}


def lend(live: torch.Tensor) -> None:
    """A non-copying swap put a shadow into ``live``: keep its current version.

    >>> t = torch.zeros(2)
    >>> lend(t)
    >>> t.copy_(torch.ones(2)); t.copy_(torch.zeros(2))  # doctest: +ELLIPSIS
    tensor(...)
    tensor(...)
    >>> record(t, t._version - 2, t._version); undone(t), close(t)
    (True, None)
    """
    _KEPT.setdefault(id(live), []).append(live._version)


def lent(live: torch.Tensor) -> bool:
    """Whether a non-copying swap lends ``live`` a shadow now."""
    return id(live) in _KEPT


def record(live: torch.Tensor, before: int, after: int) -> None:
    """``live`` went from version ``before`` to ``after`` and holds its values of ``before``
    again (a copying put and its restore)."""
    kept = _KEPT.get(id(live))
    if kept:
        _KEPT[id(live)] = [after if version == before else version for version in kept]


def undone(live: torch.Tensor) -> bool:
    """Whether every write to ``live`` since the innermost open lending was undone by copying
    swaps."""
    kept = _KEPT.get(id(live))
    return bool(kept) and kept[-1] == live._version  # type: ignore[index]


def close(live: torch.Tensor) -> None:
    """The innermost non-copying swap that lent ``live`` a shadow ends: drop its entry."""
    kept = _KEPT.get(id(live))
    if kept:
        kept.pop()
    if not kept:
        _KEPT.pop(id(live), None)
