"""The stateless call's plan cache over CuPy arrays (``ema_core.backends.cupy``: ``leaf_signature``,
``plan`` and the ``memo`` that keeps the routes and the in-place multi-tensor tables).

On the CPU: ``plan`` over numpy arrays standing in (routes read dtypes, sizes and contiguity
only), and ``update_leaves`` with a memo through the stand-in CuPy of ``test_mutants_cupy``
(multi-tensor kernel compiled by g++). Marked ``gpu``: ``ema_update`` on real CuPy arrays makes
a cache entry, gives the uncached call's bits, and sees a shadow reshaped in place."""

from __future__ import annotations

import array_api_compat.numpy as xp_np
import numpy as np
import pytest

import ema_core
from ema_core import _stateless
from ema_core.backends import _cupy_kernels as kernels
from ema_core.backends import cupy as fast
from ema_core.backends import generic
from tests.test_cupy_backend import cp, gpu, needs_gxx, same_bits
from tests.test_mutants_cupy import _bits, _dev, _fake_compat, _StandIn

ml_dtypes = pytest.importorskip("ml_dtypes")


def _leaves() -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    z = np.zeros
    shadows = [z(5, np.float32), z(3, np.int32), z(99, np.float32), z(4, np.float64),
               z((4, 4), np.float32).T, z(6, np.float32), z(2, np.complex64)]  # fmt: skip
    params = [z(5, np.float16), z(3, np.int32), z(99, np.float32), z(4, np.float32),
              z((4, 4), np.float16), z(6, np.float32), z(2, np.complex64)]  # fmt: skip
    kinds = ["float", "exact", "float", "float", "float", "float", "float"]
    return shadows, params, kinds


def test_plan_is_each_leafs_route(monkeypatch):
    monkeypatch.setattr(fast, "MULTI_MAX", 64)
    shadows, params, kinds = _leaves()
    for decay, non_float in [(0.5, "copy"), (1.0, "copy"), (0.0, "freeze")]:
        singles, groups = fast.plan(shadows, params, kinds, decay, non_float=non_float)
        routes = [
            fast.route(k, s, p, decay, non_float=non_float)
            for s, p, k in zip(shadows, params, kinds, strict=True)
        ]
        assert singles == [
            (i, r) for i, r in enumerate(routes) if r not in ("multi", "keep", "skip")
        ], decay
        want: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(routes):
            if r == "multi":
                want.setdefault((shadows[i].dtype.name, params[i].dtype.name), []).append(i)
        assert groups == want, decay
    # at a host decay of 0.5 the float pairs split into every route
    assert [r for _, r in fast.plan(shadows, params, kinds, 0.5, non_float="copy")[0]] == [
        "copy", "fused", "fused", "generic"]  # fmt: skip


def test_plan_is_kept_per_decay_kind(monkeypatch):
    monkeypatch.setattr(fast, "MULTI_MAX", 64)
    shadows, params, kinds = _leaves()
    memo: dict = {}
    first = fast.plan(shadows, params, kinds, 0.5, non_float="copy", memo=memo)
    assert fast.plan(shadows, params, kinds, 0.9, non_float="copy", memo=memo) is first
    one = fast.plan(shadows, params, kinds, 1.0, non_float="copy", memo=memo)
    assert one is not first and one[1] == {}  # decay 1 skips the float leaves: no group
    assert fast.plan(shadows, params, kinds, 1.0, non_float="copy", memo=memo) is one
    assert len(memo) == 2
    monkeypatch.setattr(fast, "compat", _fake_compat())  # a stand-in device array
    device = fast.plan(shadows, params, kinds, _dev(np.float64(1.0)), non_float="copy", memo=memo)
    assert device is not one and device[1] == first[1]  # a device 1 is never a skip
    assert len(memo) == 3


@needs_gxx
def test_update_leaves_keeps_routes_and_tables_in_the_memo(tmp_path, monkeypatch):
    cp_ = _StandIn(tmp_path, monkeypatch)
    rng = np.random.default_rng(11)

    def leaf(n, dtype):
        return _dev((rng.standard_normal(n) * 3).astype(np.float32).astype(dtype))

    sizes = [(5, "float32", "float16"), (kernels.CHUNK + 2, "float32", ml_dtypes.bfloat16),
             (7, "float64", "float32"), (4, "int32", "int32")]  # fmt: skip
    shadows = [leaf(n, s) for n, s, _ in sizes]
    params = [leaf(n, p) for n, _, p in sizes]
    kinds = ["exact" if s == "int32" else "float" for _, s, _ in sizes]
    memo: dict = {}
    want = [np.asarray(s).copy() for s in shadows]
    for step, decay in enumerate((0.3, 0.7, 0.7, 0.9), 1):
        kernels._TABLES.clear()  # only the memo can spare a rebuild now
        out = fast.update_leaves(
            None, shadows, params, kinds, decay, 1.0 - decay,
            non_float="copy", writes=[True] * 4, memo=memo,
        )  # fmt: skip
        want = generic.update_leaves(
            xp_np, want, [np.asarray(p) for p in params], kinds, decay, 1.0 - decay,
            non_float="copy", writes=[True] * 4,
        )  # fmt: skip
        assert all(o is s for o, s in zip(out, shadows, strict=True))
        for i, (o, w) in enumerate(zip(out, want, strict=True)):
            assert _bits(o) == _bits(w), (step, i)
        assert len(cp_.builds) == 3, step  # one table per dtype pair, built at the first call
    assert len(cp_.launches) == 3 * 4
    assert sum(1 for key in memo if key[0] == "plan") == 1
    # calls that write new arrays (copy=True on the same shadows) keep no table: their
    # outputs are new each time, and a kept table would write into the last call's
    copies: dict = {}
    for decay in (0.5, 0.25):
        fresh = fast.update_leaves(
            None, shadows, params, kinds, decay, 1.0 - decay,
            non_float="copy", writes=[False] * 4, memo=copies,
        )  # fmt: skip
        expect = generic.update_leaves(
            xp_np, [np.asarray(s).copy() for s in shadows], [np.asarray(p) for p in params],
            kinds, decay, 1.0 - decay, non_float="copy", writes=[False] * 4,
        )  # fmt: skip
        assert all(f is not s for f, s in zip(fresh, shadows, strict=True))
        for i, (f, w) in enumerate(zip(fresh, expect, strict=True)):
            assert _bits(f) == _bits(w), (decay, i)
    assert len(cp_.builds) == 3 + 2 * 3


@pytest.mark.gpu
@gpu
def test_ema_update_on_cupy_arrays_is_cached_and_keeps_its_bits():
    rng = np.random.default_rng(5)
    shapes = [(300,), (17, 3), (fast.MULTI_MAX + 5,), (2, 2)]
    base = {str(i): rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    params = {k: cp.asarray(v) for k, v in base.items()}
    schedule = ema_core.schedules.warmup(0.999)

    def run(cached: bool) -> dict:
        shadow = {k: cp.asarray(v) * 0.5 for k, v in base.items()}
        _stateless.clear()
        for step in range(1, 7):
            for k, p in params.items():  # new values in the same arrays
                p[...] = cp.asarray(base[k]) + 0.01 * step
            if not cached:
                _stateless.clear()
            ema_core.ema_update(shadow, params, step, schedule=schedule)
        return shadow

    cached = run(True)
    (entry,) = _stateless._ENTRIES.values()  # made at step 2, used from step 3
    assert entry.ids == [*map(id, cached.values()), *map(id, params.values())]
    assert entry.memo  # the routes (and tables) the cached calls kept
    uncached = run(False)
    assert not _stateless._ENTRIES
    for k in cached:
        assert same_bits(cached[k], uncached[k]), k
    _stateless.clear()


@pytest.mark.gpu
@gpu
def test_a_cupy_shadow_reshaped_in_place_is_checked_again():
    shadow = {"w": cp.zeros((4, 3), cp.float32)}
    params = {"w": cp.ones((4, 3), cp.float32)}
    _stateless.clear()
    for step in (1, 2, 3):
        ema_core.ema_update(shadow, params, step, decay=0.5)
    assert _stateless._ENTRIES
    before = shadow["w"].copy()
    shadow["w"].shape = (3, 4)  # the same object and memory, another shape
    with pytest.raises(ValueError, match="shape"):
        ema_core.ema_update(shadow, params, 4, decay=0.5)
    assert same_bits(shadow["w"].reshape(4, 3), before)  # nothing written
    _stateless.clear()
