"""Mutation audit of the CuPy backend: tests for the mutants its CPU tests let through.

Audited: ``ema_core/backends/cupy.py`` (the routes, ``_decay_args``, ``_pair``, ``_multi_ok``,
``_multi``) and ``ema_core/backends/_cupy_kernels.py`` (``host_table`` and the table cache, the
rounded blend ``ema_lerp`` and its ends, the fused body's ends and ``ema_take``, the
multi-tensor kernel's table reads, chunking and half loads, ``_C_TYPES``), by hand-made mutants
run against ``tests/test_cupy_backend.py`` without a GPU. What each test here pins:

* ``test_multi_kernel_ends_keep_special_values``: the multi-tensor kernel returns the shadow
  bit for bit at a (device) decay of 1 and the params at a decay of 0, also where the blend
  would make a NaN (infinities) or flip a zero's sign: the ends are taken, not computed.
* ``test_multi_kernel_in_place_touches_each_element_once``: in place (out = shadow, the
  ``writes=True`` case), with several blocks, every element is blended exactly once and nothing
  past a leaf's end is written: chunks are shared out by ``gridDim``, threads stop at ``stop``.
* ``test_fused_body_ends_keep_special_values``: the fused body takes the ends in the shadow's
  dtype: a half shadow's signalling NaN survives decay 1, same-dtype params (a signalling NaN,
  -0.0, infinities) are taken as they are at decay 0.
* ``test_routes_the_cpu_tests_missed``: contiguous params are needed for "multi" as well as a
  contiguous shadow; a bfloat16 shadow over float64 params and a real shadow over non-float
  params go to "generic"; a device decay of 1 is never read (nor skipped) by ``route``.
* ``test_update_leaves_with_a_stand_in_cupy``: ``update_leaves`` end to end on the CPU, with a
  stand-in CuPy (numpy arrays that have ``.data.ptr``), the multi-tensor kernel compiled by
  g++ and launched with the arguments ``_multi`` passes, checked against the kernel's
  signature (pointers where it takes pointers, float64 host decays by value, a grid of one
  block per chunk, never an empty grid) and the results against the generic backend, for host
  and device decays, in place and not (new results in one flat buffer, not overlapping),
  float16 and bfloat16 params (the bf16 flag), a leaf too large for "multi" and integer leaves.
* ``test_table_cache_keys``: the table cache is keyed by device, pointers and sizes: the same
  arrays again upload nothing, shorter views of the same memory or another device build a new
  table, and a stale table is never used (results stay right).

Mutants the CPU cannot catch: ``ema_take``'s specialisation for equal dtypes and its cast
through the compute type (g++ folds ``(half)(float)h`` into ``h``, and no routed pair tells
``(S)(float)p`` from ``(S)p`` on the CPU; on a GPU they go through CuPy's ``float16`` /
``bfloat16`` classes, which only a GPU test with NaN payloads or cross-half pairs would see), a
rounding intrinsic the stubs do not define (``__fmul_rz``, ``__fmaf_rn``: a compile error here,
a changed result only on a GPU), the real ``cvt.f32.f16`` asm (a ``_Float16`` cast here),
races between threads, and the launch shape's effect on speed (``_THREADS``, the grid cap's
value). ``_leaf_dtypes``' ``_cupy_bfloat16`` / ``_complex`` need a CuPy namespace: only the
``gpu`` test ``test_public_api_averages_bfloat16_params`` runs them.
"""

from __future__ import annotations

import collections
import types

import array_api_compat.numpy as xp_np
import numpy as np
import pytest

from ema_core.backends import _cupy_kernels as kernels
from ema_core.backends import cupy as fast
from ema_core.backends import generic
from tests.test_cupy_backend import (
    _reference,
    fused_body_runner,
    multi_launcher,
    needs_gxx,
)

ml_dtypes = pytest.importorskip("ml_dtypes")


def _bits(a):
    return np.ascontiguousarray(a).tobytes()


@needs_gxx
def test_multi_kernel_ends_keep_special_values(tmp_path):
    launch = multi_launcher(tmp_path, "float32", "float32")
    inf, nan = np.inf, np.nan
    s = np.array([inf, -inf, -0.0, 0.0, 1.5, inf, nan, -0.0], np.float32)
    p = np.array([inf, 2.0, 1.0, -0.0, -inf, -inf, 3.0, -0.0], np.float32)
    for decay in (1.0, 0.0):
        for on_device in (0, 1):
            out = np.full(s.size, 7.0, np.float32)
            table, n_chunks = fast.host_table(
                [(s.ctypes.data, p.ctypes.data, out.ctypes.data)], [8]
            )
            d, r = np.array([decay]), np.array([1.0 - decay])
            dh, rh = (0.0, 0.0) if on_device else (decay, 1.0 - decay)
            launch(table.ctypes.data, 1, n_chunks, d.ctypes.data, r.ctypes.data, on_device,
                   dh, rh, 0, 1)  # fmt: skip
            assert _bits(out) == _bits(s if decay == 1.0 else p), (decay, on_device)


@needs_gxx
def test_multi_kernel_in_place_touches_each_element_once(tmp_path):
    launch = multi_launcher(tmp_path, "float32", "float16")
    rng = np.random.default_rng(3)
    sizes = [5, kernels.CHUNK, 2 * kernels.CHUNK + 3, 0, 1, 3 * kernels.CHUNK]
    guard = 4
    buf = np.full(sum(sizes) + guard * (len(sizes) + 1), -123.0, np.float32)
    shadows, at = [], guard
    for n in sizes:  # leaves in one buffer, guards between them
        shadows.append(buf[at : at + n])
        at += n + guard
    for s in shadows:
        s[...] = rng.standard_normal(s.size).astype(np.float32) * 3
    params = [(rng.standard_normal(n) * 3).astype(np.float16) for n in sizes]
    for decay in (0.3, 0.9):
        before = [s.copy() for s in shadows]
        guards = buf.copy()
        want = _reference(before, params, decay)
        pairs = zip(shadows, params, strict=True)
        ptrs = [(s.ctypes.data, p.ctypes.data, s.ctypes.data) for s, p in pairs]
        table, n_chunks = fast.host_table(ptrs, sizes)
        d, r = np.array([decay]), np.array([1.0 - decay])
        launch(table.ctypes.data, len(sizes), n_chunks, d.ctypes.data, r.ctypes.data, 0,
               decay, 1.0 - decay, 0, 4)  # fmt: skip
        for got, w in zip(shadows, want, strict=True):
            assert _bits(got) == _bits(w), decay
        mask = np.ones(buf.size, bool)
        at = guard
        for n in sizes:
            mask[at : at + n] = False
            at += n + guard
        assert _bits(buf[mask]) == _bits(guards[mask])  # nothing past a leaf's end


@needs_gxx
@pytest.mark.parametrize(("sdtype", "pdtype"), [("float16", "float16"), ("float32", "float32")])
def test_fused_body_ends_keep_special_values(tmp_path, sdtype, pdtype):
    run = fused_body_runner(tmp_path, f"fused_ends_{sdtype}_{pdtype}", sdtype, pdtype)
    bits = {"float16": (np.uint16, 0x7D01), "float32": (np.uint32, 0x7F800001)}
    utype, snan = bits[sdtype]
    s = np.array([np.inf, -np.inf, 1.0, -0.0, 2.0, np.inf], sdtype)
    p = np.array([np.inf, 2.0, -0.0, 1.0, -np.inf, 0.0], pdtype)
    s[4:5].view(utype)[0] = snan  # signalling NaNs: lose their bits on a trip through float
    p[1:2].view(utype)[0] = snan
    for decay in (1.0, 0.0):
        out = np.zeros(s.size, sdtype)
        run(s.ctypes.data, p.ctypes.data, decay, 1.0 - decay, out.ctypes.data, s.size)
        assert _bits(out) == _bits(_reference([s], [p], decay)[0]), decay
        assert _bits(out) == _bits(s if decay == 1.0 else p), decay


class _Dev(np.ndarray):
    """A numpy array standing in for a CuPy one: ``.data.ptr`` is its address."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def __float__(self):
        raise AssertionError("a device decay was read on the host")


def _dev(a):
    return np.asarray(a).view(_Dev)


def _fake_compat():
    return types.SimpleNamespace(is_cupy_array=lambda x: isinstance(x, _Dev))


def test_routes_the_cpu_tests_missed(monkeypatch):
    monkeypatch.setattr(fast, "MULTI_MAX", 64)
    z, bf16 = np.zeros, ml_dtypes.bfloat16
    cases = [
        (("float", z((4, 4), np.float32), z((4, 4), np.float16).T, 0.5), "fused"),
        (("float", z(3, bf16), z(3, np.float64), 0.5), "generic"),
        (("float", z(3, bf16), z(3, np.float32), 0.5), "fused"),
        (("float", z(3, np.float32), z(3, np.complex64), 0.5), "generic"),
        (("float", z(3, np.float32), z(3, np.int32), 0.5), "generic"),
        (("exact", z(3, np.int8), z(3, np.int8), 1.0), "copy"),
    ]
    for (kind, s, p, decay), want in cases:
        assert fast.route(kind, s, p, decay, non_float="copy") == want, (s.dtype, p.dtype)
    monkeypatch.setattr(fast, "compat", _fake_compat())
    one = _dev(np.float64(1.0))  # a device decay of 1: never read, so never a skip
    assert fast.route("float", z(3, np.float32), z(3, np.float32), one, non_float="copy") == "multi"
    assert fast.route("float", z(99, np.float32), z(99, np.float32), one, non_float="x") == "fused"


class _StandIn:
    """A stand-in CuPy for ``cupy.py`` on the CPU; ``launches`` records each multi launch."""

    def __init__(self, tmp, monkeypatch):
        self.tmp, self.device, self.launches, self.builds = tmp, 0, [], []
        self._launchers: dict[tuple[str, str], object] = {}
        self.float64 = np.float64
        self.cuda = types.SimpleNamespace(Device=lambda: types.SimpleNamespace(id=self.device))
        monkeypatch.setattr(fast, "_cupy", lambda: self)
        monkeypatch.setattr(fast, "compat", _fake_compat())
        monkeypatch.setattr(kernels, "_multi_kernel", self.kernel)
        monkeypatch.setattr(fast, "_fused", lambda: self.fused)
        monkeypatch.setattr(kernels, "_cupy", lambda: self)  # the tables' uploads
        monkeypatch.setattr(kernels, "_TABLES", collections.OrderedDict())
        real = kernels.host_table
        monkeypatch.setattr(kernels, "host_table", lambda *a: self.builds.append(a) or real(*a))

    def asarray(self, a, dtype=None):
        return _dev(np.array(a, dtype))

    def empty(self, n, dtype):
        return _dev(np.full(n, np.nan if np.dtype(dtype).kind == "f" else 0, dtype))

    def empty_like(self, a):
        return self.empty(a.shape, a.dtype)

    def fused(self, s, p, d, r, o):
        assert isinstance(d, np.float64) or (isinstance(d, _Dev) and d.dtype == np.float64)
        o[...] = _reference([np.asarray(s)], [np.asarray(p)], float(np.asarray(d)))[0]
        return o

    def kernel(self, sname, pname):
        key = (sname, pname)
        if key not in self._launchers:
            self._launchers[key] = multi_launcher(self.tmp, sname, pname)
        launch = self._launchers[key]

        def call(grid, block, args):
            table, n, n_chunks, d_ptr, r_ptr, on_device, dh, rh, bf16 = args
            assert len(grid) == 1 and 1 <= grid[0] <= 1 << 20  # CUDA refuses an empty grid
            assert block == (256,)
            assert isinstance(table, _Dev) and table.dtype == np.int64
            assert isinstance(d_ptr, _Dev) and isinstance(r_ptr, _Dev)  # pointer arguments
            assert all(isinstance(x, np.int32) for x in (n, on_device, bf16))
            assert isinstance(n_chunks, np.int64)
            assert isinstance(dh, np.float64) and isinstance(rh, np.float64)  # by value
            self.launches.append((key, int(grid[0]), int(n_chunks), int(bf16), int(on_device)))
            launch(table.ctypes.data, n, n_chunks, d_ptr.ctypes.data, r_ptr.ctypes.data,
                   on_device, dh, rh, bf16, grid[0])  # fmt: skip

        return call


def _update(shadows, params, kinds, decay, writes, device):
    if device:
        d, r = _dev(np.float64(decay)), _dev(np.float64(1.0 - decay))
    else:
        d, r = decay, 1.0 - decay
    return fast.update_leaves(None, shadows, params, kinds, d, r, non_float="copy", writes=writes)


@needs_gxx
def test_update_leaves_with_a_stand_in_cupy(tmp_path, monkeypatch):
    cp = _StandIn(tmp_path, monkeypatch)
    monkeypatch.setattr(fast, "MULTI_MAX", 3 * kernels.CHUNK)
    rng = np.random.default_rng(7)

    def leaf(n, dtype):
        return _dev((rng.standard_normal(n) * 3).astype(np.float32).astype(dtype))

    pairs = [(5, "float32", "float16"), (kernels.CHUNK + 2, "float32", "float16"),
             (9, "float32", ml_dtypes.bfloat16), (kernels.CHUNK, "float32", ml_dtypes.bfloat16),
             (3 * kernels.CHUNK + 1, "float32", "float16"),  # too large: fused
             (7, "float64", "float32"), (0, "float64", "float32"), (4, "int32", "int32"),
             (0, "float64", "float64")]  # a group with nothing to do: no launch  # fmt: skip
    shadows = [leaf(n, s) for n, s, _ in pairs]
    params = [leaf(n, p) for n, _, p in pairs]
    kinds = ["exact" if s == "int32" else "float" for _, s, _ in pairs]
    for device in (False, True):
        for decay in (0.0, 0.3, 0.75, 1.0):
            for writes in ([True] * len(pairs), [False] * len(pairs),
                           [i % 2 == 0 for i in range(len(pairs))]):  # fmt: skip
                mine = [s.copy() for s in shadows]
                cp.launches.clear()
                out = _update(mine, params, kinds, decay, writes, device)
                want = generic.update_leaves(
                    xp_np, [np.asarray(s).copy() for s in shadows], [np.asarray(p) for p in params],
                    kinds, decay, 1.0 - decay, non_float="copy", writes=writes,
                )  # fmt: skip
                for i, (o, w) in enumerate(zip(out, want, strict=True)):
                    assert _bits(o) == _bits(w), (i, decay, device, writes[i])
                    skipped = decay == 1.0 and not device and kinds[i] == "float"
                    assert (o is mine[i]) == (writes[i] or skipped), i
                    if not writes[i]:
                        assert _bits(mine[i]) == _bits(shadows[i])  # left as it was
                if decay == 1.0 and not device:
                    assert cp.launches == []  # a host decay of 1 skips the float leaves
                    continue
                launched = sorted(cp.launches)
                assert [(k, b) for k, _, _, b, _ in launched] == [
                    (("float32", "bfloat16"), 1), (("float32", "float16"), 0),
                    (("float64", "float32"), 0)]  # fmt: skip
                assert all(g == c and dev == device for _, g, c, _, dev in launched)


@needs_gxx
def test_table_cache_keys(tmp_path, monkeypatch):
    cp = _StandIn(tmp_path, monkeypatch)
    rng = np.random.default_rng(8)
    base_s = _dev((rng.standard_normal(3 * kernels.CHUNK) * 3).astype(np.float32))
    base_p = _dev((rng.standard_normal(3 * kernels.CHUNK) * 3).astype(np.float32))
    for n, device, builds in [(2 * kernels.CHUNK + 5, 0, 1), (2 * kernels.CHUNK + 5, 0, 1),
                              (10, 0, 2), (10, 1, 3), (2 * kernels.CHUNK + 5, 0, 3)]:  # fmt: skip
        cp.device = device
        s, p = base_s[:n], base_p[:n]
        before, whole = np.asarray(s).copy(), np.asarray(base_s).copy()
        want = _reference([before], [np.asarray(p)], 0.5)[0]
        out = _update([s], [p], ["float"], 0.5, [True], False)
        assert out[0] is s and _bits(s) == _bits(want), (n, device)
        assert len(cp.builds) == builds, (n, device)
        assert _bits(base_s[n:]) == _bits(whole[n:])  # nothing past the view
