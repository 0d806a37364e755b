"""The plan cache of the stateless ``ema_update``: repeated calls with the same nests skip the
checks (namespace, shapes, devices, dtypes, writeability, shared memory) and, on torch, the
grouping of the leaves into a plan.

An entry is made the second time in a row that the same leaf objects come (a one-off call, or a
``copy=True`` chain whose shadows are new arrays each call, pays only one ``id`` per leaf). It
is found again only when all of these are equal:

* the leaf objects: their ids, made safe against reuse by weak references whose callback drops
  the entry as soon as any leaf dies (while the entry lives, each id names its same live object);
* the tree definition of the shadow (keys, order, container types) and the call's options:
  ``non_float``, ``copy`` and whether the decay is a 0-d array (what the checks depend on);
* per leaf, what could make the same object fail a check or need another plan, as the
  backend's ``leaf_signature`` records it and its ``same_signature`` (or ``==``) compares it.
  torch: storage, offset, sizes and strides (``is_set_to`` against a kept alias, which also
  fixes the device), dtype, inference flag, and whether inference mode is on; this catches
  ``resize_``, ``set_``, ``as_strided_``, ``param.data = other`` and ``module.to(...)``.
  torch also keeps each storage's size in bytes (a storage resized smaller may keep its
  address). numpy: shape, strides, dtype, the writeable flag and the base, compared by identity
  (and the data pointer under numpy < 2; from numpy 2 only ``ndarray.__setstate__`` moves a live
  array's memory, and it changes the base but for a small owner, ``_numpy_memory``). CuPy:
  data address, shape, strides and dtype (no read-only arrays). The weak references make
  ``torch.utils.swap_tensors`` refuse a cached tensor: ``clear()`` first. A backend without
  ``leaf_signature`` (JAX, array-api-strict) is not cached.

torch's version counter is not in the key: it counts writes to values, which no check reads
(``guard_finite`` reads values and runs on every call), and every update bumps it on the
shadows, so keyed on it no entry would ever be found again. Metadata changes that bypass it
(``param.data = other`` does not bump it) are caught by the layout above.

The cache holds no strong reference to a caller's leaf: torch's plan is made over aliases.
At most ``SIZE`` entries are kept, the least recently used dropped first.

A leaf may die while a call walks the entries (the cyclic collector runs at any allocation, and
another thread may be in a call). The weak-reference callback then never changes the dict
under the walk: it frees the entry's memory (plan and aliases) at once, marks it dead and
leaves its removal to the walker, which drops it before it releases the cache's lock. A call
that finds the lock held by another thread checks its leaves in full and keeps nothing.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ema_core._paths import TreeDef
from ema_core._types import Array, LeafKind, Namespace

#: Entries kept (different nests used in turn, e.g. several EMAs of one model).
SIZE = 4


@dataclass(eq=False)
class Entry:
    """What the checks found for one pair of nests, and the backend's memo (its plan)."""

    ids: list[int]
    treedef: TreeDef
    options: tuple[Any, ...]
    backend: Any
    signature: tuple[Any, Any]
    xp: Namespace
    kinds: list[LeafKind]
    writes: list[bool]
    memo: dict[Any, Any] = field(default_factory=dict)
    refs: list[weakref.ref[Any]] = field(default_factory=list)
    dead: bool = False

    def release(self) -> None:
        """A leaf died: free the plan and the kept aliases now; the entry is never found."""
        self.dead = True
        self.memo = {}
        self.signature = (None, None)


_ENTRIES: OrderedDict[int, Entry] = OrderedDict()
_SERIALS = itertools.count()
#: The leaf ids of the last call not found in the cache (only a hint: an entry is checked fully).
_last: list[list[int]] = [[]]
#: Whether the call being checked now came with the same leaf ids as the one before it.
_again: list[bool] = [False]
#: Held while a call walks or changes the entries (taken without waiting, never by a callback
#: that would wait: a leaf can die inside a walk, on the walking thread).
_LOCK = threading.Lock()
#: Serials of entries whose leaf died while the lock was held: the holder drops them.
_DEAD: set[int] = set()


def _ids(shadows: Sequence[Array], params: Sequence[Array]) -> list[int]:
    ids = list(map(id, shadows))
    ids += map(id, params)
    return ids


def find(
    shadows: Sequence[Array], params: Sequence[Array], treedef: TreeDef, options: tuple[Any, ...]
) -> Entry | None:
    """The entry for these leaves, or None (then ``remember`` after the checks)."""
    ids = _ids(shadows, params)
    with _held() as held:
        if not held:
            return None  # another thread is in the cache: this call checks in full
        for serial, entry in _ENTRIES.items():
            if (
                entry.dead
                or entry.ids != ids
                or entry.options != options
                or entry.treedef != treedef
            ):
                continue
            if _same(entry.backend, entry.signature[0], shadows) and _same(
                entry.backend, entry.signature[1], params
            ):
                _ENTRIES.move_to_end(serial)
                return entry
            _ENTRIES.pop(serial, None)  # changed behind our back: checked again, maybe kept anew
            break
        _again[0] = ids == _last[0]  # the same leaves as the call before: ``remember`` keeps them
        _last[0] = ids
        return None


def remember(
    backend: Any,
    shadows: Sequence[Array],
    params: Sequence[Array],
    treedef: TreeDef,
    options: tuple[Any, ...],
    found: tuple[Namespace, list[LeafKind], list[bool]],
) -> Entry | None:
    """Keep what the checks ``found`` (namespace, kinds, writes) for these leaves, if they came
    in the call before too and the backend can record their layout; the entry or None."""
    ids = _ids(shadows, params)
    sign = getattr(backend, "leaf_signature", None)
    if sign is None or not _again[0] or ids != _last[0]:
        return None
    signature = (sign(shadows), sign(params))
    if signature[0] is None or signature[1] is None:
        return None
    serial = next(_SERIALS)
    forget = functools.partial(_forget, serial)
    try:
        refs = [weakref.ref(leaf, forget) for leaf in itertools.chain(shadows, params)]
    except TypeError:  # a leaf type without weak references (a numpy scalar)
        return None
    entry = Entry(ids, treedef, options, backend, signature, *found, refs=refs)
    with _held() as held:
        if not held:
            return None  # another thread is in the cache: nothing kept
        _ENTRIES[serial] = entry
        while len(_ENTRIES) > SIZE:
            _ENTRIES.popitem(last=False)
        _last[0] = []
    return entry


@contextlib.contextmanager
def _held() -> Iterator[bool]:
    """``with _held() as held:`` the lock if no other call holds it (``held``), never waiting;
    entries whose leaves died meanwhile are dropped on the way in and out."""
    if not _LOCK.acquire(blocking=False):
        yield False
        return
    try:
        _drop_dead()
        yield True
    finally:
        _drop_dead()
        _LOCK.release()


def _forget(serial: int, _ref: object) -> None:
    """A leaf of entry ``serial`` died: its id may be reused, so the entry goes (now, or when
    the call that holds the lock, maybe this thread's own walk, lets it go)."""
    if _LOCK.acquire(blocking=False):
        try:
            _ENTRIES.pop(serial, None)
        finally:
            _LOCK.release()
        return
    entry = _ENTRIES.get(serial)  # a lookup changes nothing under a walk
    if entry is not None:
        entry.release()
    _DEAD.add(serial)


def _drop_dead() -> None:
    """Drop the entries whose leaves died while the lock was held (the lock is held)."""
    while _DEAD:
        _ENTRIES.pop(_DEAD.pop(), None)


def _same(backend: Any, kept: Any, leaves: Sequence[Array]) -> bool:
    same = getattr(backend, "same_signature", None)
    if same is not None:
        return bool(same(kept, leaves))
    return bool(backend.leaf_signature(leaves) == kept)


def clear() -> None:
    """Drop every entry (tests, and before ``torch.utils.swap_tensors`` on cached tensors; also
    frees the torch aliases at once)."""
    with _LOCK:
        _ENTRIES.clear()
        _DEAD.clear()
        _last[0] = []
