"""The writes a copying ``swap()`` undid, so that an enclosing ``swap(copy=False)`` of another
EMA does not take them for writes into its shadows.

Inside ``a.swap(copy=False)`` the model's tensors are ``a``'s shadows; ``b.swap()`` (copying)
writes ``b``'s averages into them and on exit puts the saved values back bit for bit. Their
version counters still moved, which ``a`` reads as "written". While ``a`` lends a shadow it
opens a run at the tensor's version; each copying restore that starts where the run ends
extends it to the version it ends at, and ``a`` counts the tensor unwritten when its run ends
at the current version. Runs are keyed by ``id`` of the live tensor, which the lending swap
holds until it closes the run: no weak reference is taken (``torch.utils.swap_tensors``, under
torch's conversion flag, refuses a tensor that has one).
"""

from __future__ import annotations

import torch

#: id(live tensor) -> a run per open ``swap(copy=False)`` lending it, innermost last: the
#: version it lent at, then the end of each copying restore that followed with no other write.
_RUNS: dict[int, list[list[int]]] = {}


def lend(live: torch.Tensor) -> None:
    """A non-copying swap put a shadow into ``live``: open its run at the current version.

    >>> t = torch.zeros(2)
    >>> lend(t)
    >>> t.copy_(torch.ones(2)); t.copy_(torch.zeros(2))  # doctest: +ELLIPSIS
    tensor(...)
    tensor(...)
    >>> record(t, t._version - 2, t._version); undone(t), close(t)
    (True, None)
    """
    _RUNS.setdefault(id(live), []).append([live._version])


def record(live: torch.Tensor, before: int, after: int) -> None:
    """``live`` went from version ``before`` to ``after`` and holds its values of ``before``
    again (a copying put and its restore): extend the innermost open run that ends at
    ``before``."""
    runs = _RUNS.get(id(live))
    if runs and runs[-1][-1] == before:
        runs[-1].append(after)


def undone(live: torch.Tensor) -> bool:
    """Whether every write to ``live`` since the innermost open run began was undone by copying
    swaps."""
    runs = _RUNS.get(id(live))
    return bool(runs) and runs[-1][-1] == live._version  # type: ignore[index]


def close(live: torch.Tensor) -> None:
    """The non-copying swap that lent ``live`` a shadow ends: drop its run."""
    runs = _RUNS.get(id(live))
    if runs:
        runs.pop()
    if not runs:
        _RUNS.pop(id(live), None)
