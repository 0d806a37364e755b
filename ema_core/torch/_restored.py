"""The writes a copying ``swap()`` undid, so that an enclosing ``swap(copy=False)`` of another
EMA does not take them for writes into its shadows.

Inside ``a.swap(copy=False)`` the model's tensors are ``a``'s shadows; ``b.swap()`` (copying)
writes ``b``'s averages into them and on exit puts the saved values back bit for bit. Their
version counters still moved, which ``a`` reads as "written". Each copying restore records the
versions it started and ended at, per tensor (chained over several in a row), and ``a`` counts
a tensor unwritten when such a run reaches from the version it saw to the current one.
"""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

#: tensor -> the versions at which it held the same values: the start of a run of copying
#: swaps with nothing else in between, and the end of each restore (the last one is the latest).
_RUNS = WeakIdKeyDictionary()
#: Versions kept per tensor (a long run of swaps with no write between them).
_KEEP = 64


def record(live: torch.Tensor, before: int, after: int) -> None:
    """``live`` went from version ``before`` to ``after`` and holds its values of ``before``
    again (a copying put and its restore), extending a run that ended at ``before``.

    >>> t = torch.zeros(2)
    >>> start = t._version
    >>> t.copy_(torch.ones(2)); t.copy_(torch.zeros(2))  # doctest: +ELLIPSIS
    tensor(...)
    tensor(...)
    >>> record(t, start, t._version); undone(t, start)
    True
    """
    run: list[int] | None = _RUNS.get(live)  # type: ignore[no-untyped-call]
    run = run if run is not None and run[-1] == before else [before]
    _RUNS[live] = [*run[-_KEEP:], after]


def undone(live: torch.Tensor, since: int) -> bool:
    """Whether every write to ``live`` after version ``since`` was undone by copying swaps."""
    run: list[int] | None = _RUNS.get(live)  # type: ignore[no-untyped-call]
    return run is not None and run[-1] == live._version and since in run
