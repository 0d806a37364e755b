"""Host (CPU) work shared out over threads: the numpy backend and torch's CPU kernels use it.

A work item is a job ``(out, shadow, params)`` of numpy arrays, or a list of small jobs done
together. ``run`` cuts large contiguous jobs into flat pieces and deals the items into
``workers`` runs of about equal size: the caller does the first, a shared pool the others.
The kernels release the GIL (numpy ufuncs, numba's ``nogil`` loops), so the runs overlap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["Item", "Job", "flat", "run", "run_shares", "share", "size", "usable_cpus"]

#: A unit of work: (out, shadow, params) views of one leaf.
Job = tuple[np.ndarray, np.ndarray, np.ndarray]
#: A job, or small jobs done together.
Item = Job | list[Job]

_POOL: dict[tuple[int, int], ThreadPoolExecutor] = {}


def flat(job: Job) -> bool:
    """Whether all three arrays are C-contiguous (so ``reshape(-1)`` gives views)."""
    return all(a.flags.c_contiguous for a in job)


def size(item: Item) -> int:
    """Elements in a work item."""
    return item[0].size if isinstance(item, tuple) else sum(j[0].size for j in item)


def run(
    items: list[Item], do: Callable[[Item], None], workers: int, *, least: int, grain: int
) -> None:
    """``do`` every item, on up to ``workers`` threads, at least ``least`` elements each
    (``share`` then ``run_shares``)."""
    run_shares(share(items, workers, least=least, grain=grain), do)


def share(items: list[Item], workers: int, *, least: int, grain: int) -> list[list[Item]]:
    """The items dealt into at most ``workers`` runs of about equal size, in order, with at
    least ``least`` elements per run. Contiguous jobs larger than a quarter of a run are cut
    into flat pieces whose size is a multiple of ``grain`` elements."""
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
    """``do`` the first run on this thread and the others on the shared pool; wait for all."""
    futures = [_pool(len(shares)).submit(_do_all, do, run) for run in shares[1:]]
    _do_all(do, shares[0] if shares else [])
    for future in futures:
        future.result()


def usable_cpus(most: int) -> int:
    """The CPUs this process may run on, at most ``most``."""
    found = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(1, min(most, found))


def _do_all(do: Callable[[Item], None], items: list[Item]) -> None:
    for item in items:
        do(item)


def _split(item: Item, most: int, grain: int) -> Iterator[Item]:
    """A contiguous job larger than ``most`` elements as flat pieces; anything else whole."""
    if not isinstance(item, tuple) or item[0].size <= most or most < grain or not flat(item):
        yield item
        return
    out, shadow, params = (a.reshape(-1) for a in item)
    most -= most % grain
    for i in range(0, out.size, most):
        piece = shadow[i : i + most]  # an in-place job stays one: its pieces too
        yield piece if item[0] is item[1] else out[i : i + most], piece, params[i : i + most]


def _pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool of ``workers - 1`` helpers (the caller is one worker), one per size (the
    numpy backend and torch may ask for different counts); all made anew in a forked child,
    whose copies of the pools have no threads behind them."""
    key = (os.getpid(), workers - 1)
    if key not in _POOL:
        for old_key in [k for k in _POOL if k[0] != key[0]]:
            _POOL.pop(old_key).shutdown(wait=False)
        _POOL[key] = ThreadPoolExecutor(workers - 1, thread_name_prefix="ema_core")
    return _POOL[key]
