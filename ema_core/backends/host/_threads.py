"""The host engine's work, cut into pieces and dealt over threads.

A work item is a ``Leaf`` (a shadow blended in place with its params: a whole leaf, or a piece
of one) or a ``Batch`` of small leaves blended together (by one compiled call over a table of
their addresses, or through a gathered block). ``share`` deals the
items into ``workers`` runs of about equal size, cutting large leaves into pieces: a contiguous
leaf (seen flat) into flat pieces, a strided one into slabs along its first axis. ``run_shares``
does the first run on the calling thread and the others on a shared pool; the kernels release
the GIL (numpy ufuncs, numba's ``nogil`` loops), so the runs overlap.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import NamedTuple

import numpy as np

from ema_core.backends.host._numba import ParamsFormat, Table

__all__ = ["Batch", "Item", "Leaf", "run_shares", "share", "size", "usable_cpus"]


class Leaf(NamedTuple):
    """One shadow blended in place with its params: flat views when both are C-contiguous,
    else the arrays as they are; ``params_format`` says how the params' elements are stored."""

    shadow: np.ndarray
    params: np.ndarray
    params_format: ParamsFormat


class Batch(NamedTuple):
    """Small flat leaves of equal dtypes done together: through ``table``, one compiled call
    over their addresses (None without numba, or with no loop that fits: then gathered)."""

    leaves: list[Leaf]
    table: Table | None
    size: int  # elements in all


#: A leaf or a piece of one, or small flat leaves done together.
Item = Leaf | Batch

_POOL: dict[tuple[int, int], ThreadPoolExecutor] = {}
#: Held while a pool is made (two threads asking at once would make two, or change ``_POOL``
#: under the other's walk); made anew in a forked child, where another thread may have held it.
_POOL_LOCK = [threading.Lock()]


def _new_pool_lock() -> None:
    _POOL_LOCK[0] = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_pool_lock)


def size(item: Item) -> int:
    """Elements in a work item."""
    return item.shadow.size if isinstance(item, Leaf) else item.size


def share(items: list[Item], workers: int, *, least: int, grain: int) -> list[list[Item]]:
    """The items dealt into at most ``workers`` runs of about equal size, in order, with at
    least ``least`` elements per run. Leaves larger than a quarter of a run are cut into pieces
    (flat ones: a multiple of ``grain`` elements; strided ones: whole slabs of rows)."""
    total = sum(size(item) for item in items)
    workers = min(workers, max(1, total // max(least, 1)))
    if workers == 1:
        return [list(items)]
    shares: list[list[Item]] = [[] for _ in range(workers)]
    done = 0
    for item in items:
        for piece in _split(item, total // (4 * workers), grain):
            shares[min(workers - 1, done * workers // total)].append(piece)
            done += size(piece)
    return shares


def run_shares(shares: list[list[Item]], do: Callable[[Item], None]) -> None:
    """``do`` the first run on this thread and the others on the shared pool; wait for all,
    also when a run raised (this thread's own: Ctrl-C, a MemoryError): no run still writes the
    caller's arrays when the call ends. The first run's error, else a pool run's, is raised."""
    futures = [_pool(len(shares)).submit(_do_all, do, run) for run in shares[1:]]
    try:
        _do_all(do, shares[0] if shares else [])
    finally:
        wait(futures)
    for future in futures:
        future.result()


def usable_cpus(most: int) -> int:
    """The CPUs this process may run on, at most ``most``."""
    found = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(1, min(most, found))


def _do_all(do: Callable[[Item], None], items: list[Item]) -> None:
    """``do`` each item under IEEE settings: numpy's error state is per thread (pool threads do
    not inherit the caller's), and a warning or ``FloatingPointError`` raised part-way would
    leave an update half written."""
    with np.errstate(all="ignore"):
        for item in items:
            do(item)


def _split(item: Item, most: int, grain: int) -> Iterator[Item]:
    """A leaf larger than ``most`` elements as pieces; anything else whole."""
    if not isinstance(item, Leaf) or item.shadow.size <= most or most < grain:
        yield item
        return
    s, p, fmt = item
    if s.ndim == 1 and s.flags.c_contiguous:  # a flat leaf: pieces of whole grains
        step = most - most % grain
    else:  # a strided leaf: slabs of whole rows along the first axis
        step = max(1, most // max(1, s.size // s.shape[0]))
    for i in range(0, s.shape[0], step):
        yield Leaf(s[i : i + step], p[i : i + step], fmt)


def _pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool of ``workers - 1`` helpers (the caller is one worker), one per size (the
    numpy backend and torch may ask for different counts); all made anew in a forked child,
    whose copies of the pools have no threads behind them."""
    key = (os.getpid(), workers - 1)
    pool = _POOL.get(key)
    if pool is not None:
        return pool
    with _POOL_LOCK[0]:
        for old_key in [k for k in _POOL if k[0] != key[0]]:
            _POOL.pop(old_key).shutdown(wait=False)
        if key not in _POOL:
            _POOL[key] = ThreadPoolExecutor(workers - 1, thread_name_prefix="ema_core")
        return _POOL[key]
