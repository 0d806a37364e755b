"""The stateless call's plan cache while leaves die under it: the cyclic collector runs at any
allocation, also while ``ema_update`` walks the cache's entries, and a dying leaf's weak
reference then drops its entry. Before 2026-12-03 that removal changed the dict under the walk
and the call raised ``RuntimeError: OrderedDict mutated during iteration`` (seen once in
``make test``, in the doctest of ``ema_core.testing.assert_ema_properties``)."""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from typing import Any

import numpy as np

import ema_core as ema
from ema_core import _stateless


def _cached_garbage(holder: list[Any]) -> None:
    """A cache entry whose leaves only the cyclic collector can free, once ``holder`` goes."""
    shadow, params = np.zeros(3, np.float32), np.ones(3, np.float32)
    ema.ema_update(shadow, params, 1, decay=0.5)
    ema.ema_update(shadow, params, 1, decay=0.5)  # the second call in a row keeps the entry
    cycle: list[Any] = [shadow, params]
    cycle.append(cycle)
    holder.append(cycle)


def test_a_collection_at_any_point_of_a_call_changes_nothing() -> None:
    """The collector is made to run at the 1st, 2nd, ... allocation of one call (a sweep that
    covers the walk over the entries) while ``SIZE`` entries' leaves are unreachable: every
    call returns the right shadow, and the dead leaves' entries are gone after it."""
    threshold = gc.get_threshold()
    shadow, params = np.zeros(3, np.float32), np.full(3, 2.0, np.float32)
    try:
        for k in range(1, 150):
            _stateless.clear()
            gc.disable()
            gc.collect(0)
            holder: list[Any] = []
            for _ in range(_stateless.SIZE):
                _cached_garbage(holder)
            assert len(_stateless._ENTRIES) == _stateless.SIZE
            del holder
            pad = [(i, -i) for i in range(5000)]  # small tuples come from the allocator now
            shadow[:] = 0.0
            gc.set_threshold(gc.get_count()[0] + k)  # the k-th allocation from here collects
            gc.enable()
            out = ema.ema_update(shadow, params, 1, decay=0.25)
            gc.set_threshold(*threshold)
            del pad
            gc.collect(0)
            assert out is shadow and np.array_equal(shadow, np.full(3, 1.5, np.float32)), k
            assert all(not e.dead for e in _stateless._ENTRIES.values()), k
            assert len(_stateless._ENTRIES) <= 1, k  # the dead leaves' entries went
    finally:
        gc.set_threshold(*threshold)
        gc.enable()
        _stateless.clear()


def test_threads_updating_their_own_nests_while_entries_die() -> None:
    """Three threads update their own nests 2000 times each while the main thread keeps making
    and dropping cached entries (their leaves die as the main thread lets them go, maybe while a
    worker walks the entries): each thread's shadow is what 2000 updates give, and no call
    raised. A stress test: a callback that changed the dict under another thread's walk fails
    it in some runs, not all."""
    errors: list[BaseException] = []
    decay = 0.5
    n_updates = 2000

    def worker(seed: int) -> None:
        try:
            shadow = np.zeros(4, np.float64)
            params = np.full(4, float(seed), np.float64)
            for _ in range(n_updates):
                ema.ema_update(shadow, params, 1, decay=decay)
            want = seed * (1.0 - decay**n_updates)
            np.testing.assert_allclose(shadow, want, rtol=1e-12)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2, 3)]
    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(50)
    sys.setswitchinterval(1e-6)  # threads take turns inside each other's walks
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            shadow, params = np.zeros(3, np.float32), np.ones(3, np.float32)
            ema.ema_update(shadow, params, 1, decay=0.5)
            ema.ema_update(shadow, params, 1, decay=0.5)  # an entry, gone with these arrays
            del shadow, params
    finally:
        for t in threads:
            t.join()
        gc.set_threshold(*threshold)
        sys.setswitchinterval(interval)
        _stateless.clear()
    assert not errors, errors


def test_a_call_leaves_no_cycle_that_keeps_the_callers_arrays() -> None:
    """With the collector off, the arrays of a nested nest die with the caller's last
    reference after ``ema_update`` (flatten, flatten_pair, unflatten) and after ``init`` /
    ``update`` / ``average``: no call leaves a reference cycle holding them (a closure that
    called itself did, so they lived on until the next collection, and their cache entry's
    weak references fired from inside the collector)."""

    def nest(value: float) -> dict[str, Any]:
        return {"a": {"b": np.full(3, value)}, "c": [np.full(2, value), (np.full(1, value),)]}

    def leaves(tree: dict[str, Any]) -> list[np.ndarray]:
        return [tree["a"]["b"], tree["c"][0], tree["c"][1][0]]

    gc.collect()
    gc.disable()
    try:
        shadow, params = nest(0.0), nest(1.0)
        out = ema.ema_update(shadow, params, 1, decay=0.5)
        config = ema.Config(0.5, init="zeros")
        state = ema.update(ema.init(params, config), params, config)
        average = ema.average(state, config)
        assert out["a"]["b"][0] == 0.5 and average["c"][0][0] == 1.0
        refs = [weakref.ref(x) for x in leaves(shadow) + leaves(params) + leaves(average)]
        refs += [weakref.ref(x) for x in leaves(state.shadow)]
        del shadow, params, out, state, average
        assert [r() is None for r in refs] == [True] * len(refs)
    finally:
        gc.enable()
        _stateless.clear()
