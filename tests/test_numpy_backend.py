"""The numpy backend against the generic backend: the same bits on every dtype pair, shape,
layout and decay; in place where asked and nothing mutated where not. Every test runs twice:
with the compiled one-pass kernels (numba) and with the block-wise ufunc path."""

from __future__ import annotations

import array_api_compat.numpy as xp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ema_core
from ema_core import _settings
from ema_core.backends import generic, get_backend, host
from ema_core.backends import numpy as fast

DECAYS = [0.0, 1e-8, 0.25, 0.4999, 0.5, 0.9, 0.9999, 1.0]
#: (shadow dtype, params dtype): the core computes in float32 or wider, whatever the pair.
PAIRS = [
    ("float32", "float32"),
    ("float32", "float16"),
    ("float16", "float16"),
    ("float16", "float32"),
    ("float64", "float64"),
    ("float64", "float32"),
    ("float32", "float64"),
    ("complex64", "complex64"),
    ("complex128", "complex64"),
]
SHAPES = [(), (0,), (3, 0), (1,), (7,), (3, 5), (host.BLOCK + 3,), (2, host.BLOCK // 2 + 1, 1)]


pytestmark = pytest.mark.usefixtures("host_kernels")  # every test with the loops on and off


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (NaN payloads and signed zeros included)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def random(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3.0
    if dtype.startswith("complex"):
        x = x + 1j * rng.standard_normal(shape)
    return np.asarray(x).astype(dtype)


def both(shadows, params, decay, *, kinds=None, non_float="copy", writes=None):
    """(generic result, numpy result, the numpy backend's shadows) on separate copies."""
    kinds = kinds or ["float"] * len(shadows)
    writes = writes or [True] * len(shadows)
    ref_in = [s.copy() for s in shadows]
    ref = generic.update_leaves(
        xp, ref_in, params, kinds, decay, 1.0 - decay, non_float=non_float, writes=writes
    )
    fast_in = [s.copy() for s in shadows]
    got = fast.update_leaves(
        xp, fast_in, params, kinds, decay, 1.0 - decay, non_float=non_float, writes=writes
    )
    return ref, got, fast_in


def test_registry_picks_the_numpy_backend():
    assert get_backend(xp) is fast


@pytest.mark.parametrize(("sdtype", "pdtype"), PAIRS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("decay", DECAYS)
def test_equals_generic_bit_for_bit(sdtype, pdtype, shape, decay):
    s, p = random(shape, sdtype, 1), random(shape, pdtype, 2)
    ref, got, shadows = both([s], [p], decay)
    assert same_bits(got[0], ref[0]), (sdtype, pdtype, shape, decay)
    assert got[0] is shadows[0]


@pytest.mark.parametrize(("sdtype", "pdtype"), [("float32", "float16"), ("float64", "float32")])
def test_decay_zero_copies_and_one_keeps_exactly(sdtype, pdtype):
    s, p = random((1000,), sdtype, 3), random((1000,), pdtype, 4)
    s[0], p[1] = np.nan, np.inf
    kept = s.copy()
    out = fast.update_leaves(xp, [s], [p], ["float"], 1.0, 0.0, non_float="copy", writes=[True])
    assert out[0] is s and same_bits(s, kept)
    out = fast.update_leaves(xp, [s], [p], ["float"], 0.0, 1.0, non_float="copy", writes=[True])
    assert out[0] is s and same_bits(s, p.astype(sdtype))


def test_writes_false_returns_new_arrays_and_mutates_nothing():
    shadows = [random((50,), "float32", 5), np.arange(4), random((host.BLOCK * 2,), "float32", 6)]
    params = [random((50,), "float16", 7), np.arange(4) + 10, random((host.BLOCK * 2,), "f4", 8)]
    before = [s.copy() for s in shadows]
    kinds = ["float", "exact", "float"]
    out = fast.update_leaves(
        xp, shadows, params, kinds, 0.9, 0.1, non_float="copy", writes=[False] * 3
    )
    ref = generic.update_leaves(
        xp, before, params, kinds, 0.9, 0.1, non_float="copy", writes=[False] * 3
    )
    for s, b, o, r in zip(shadows, before, out, ref, strict=True):
        assert same_bits(s, b) and o is not s and same_bits(o, r)
        assert not np.shares_memory(o, s)


@pytest.mark.parametrize("dtype", ["int64", "int8", "uint16", "bool"])
def test_integer_and_bool_leaves_are_copied(dtype):
    s, p = np.zeros(6, dtype), np.ones(6, dtype)
    out = fast.update_leaves(xp, [s], [p], ["exact"], 0.9, 0.1, non_float="copy", writes=[True])
    assert out[0] is s and same_bits(s, p)
    s2 = np.zeros(6, dtype)  # decay 1 skips the float leaves; integer ones are still copied
    out = fast.update_leaves(xp, [s2], [p], ["exact"], 1.0, 0.0, non_float="copy", writes=[True])
    assert out[0] is s2 and same_bits(s2, p)
    s3 = np.zeros(6, dtype)
    out = fast.update_leaves(xp, [s3], [p], ["exact"], 0.5, 0.5, non_float="freeze", writes=[True])
    assert out[0] is s3 and not s3.any()


@pytest.mark.parametrize("decay", [0.0, 0.3, 0.99])
def test_non_contiguous_views_are_updated_in_place(decay):
    base = random((40, host.BLOCK // 8), "float32", 9)
    parent = base.copy()
    view = parent[::3, 1::2]  # strided both ways: no flat view exists
    params = random(view.shape[::-1], "float16", 10).T  # Fortran-ordered params
    ref, got, _ = both([view.copy()], [params], decay, writes=[True])
    out = fast.update_leaves(
        xp, [view], [params], ["float"], decay, 1.0 - decay, non_float="copy", writes=[True]
    )
    assert out[0] is view and same_bits(view, ref[0]) and same_bits(got[0], ref[0])
    untouched = np.ones(parent.shape, bool)
    untouched[::3, 1::2] = False
    assert same_bits(parent[untouched], base[untouched])


def test_read_only_shadows_get_new_arrays_through_the_public_api():
    shadow = {"w": random((8,), "float32", 11)}
    shadow["w"].flags.writeable = False
    before = shadow["w"].copy()
    params = {"w": random((8,), "float32", 12)}
    new = ema_core.ema_update(shadow, params, 1, decay=0.75)
    assert new["w"] is not shadow["w"] and same_bits(shadow["w"], before)
    ref = generic.update_leaves(xp, [before], [params["w"]], ["float"], 0.75, 0.25,
                                non_float="copy", writes=[False])  # fmt: skip
    assert same_bits(new["w"], ref[0])
    with pytest.raises(ValueError, match=r"copy=False needs writeable arrays.*shadow\['w'\]"):
        ema_core.ema_update(shadow, params, 1, decay=0.75, copy=False)
    assert same_bits(shadow["w"], before)


def test_public_api_copy_true_leaves_inputs_untouched():
    shadow = {"a": random((300,), "float32", 13), "n": np.array(3)}
    params = {"a": random((300,), "float16", 14), "n": np.array(4)}
    before = {k: v.copy() for k, v in shadow.items()}
    new = ema_core.ema_update(shadow, params, 1, decay=0.9, copy=True)
    for k, value in shadow.items():
        assert same_bits(value, before[k]) and new[k] is not value
    assert int(new["n"]) == 4
    ref = generic.update_leaves(xp, [before["a"]], [params["a"]], ["float"], 0.9, 0.1,
                                non_float="copy", writes=[False])  # fmt: skip
    assert same_bits(new["a"], ref[0])


def test_decay_given_as_a_0d_array_matches_the_float():
    s, p = random((100,), "float32", 15), random((100,), "float32", 16)
    a = ema_core.ema_update([s.copy()], [p], 1, decay=np.asarray(0.9, dtype=np.float32))
    d = float(np.float32(0.9))
    ref = generic.update_leaves(xp, [s], [p], ["float"], d, 1.0 - d, non_float="copy",
                                writes=[False])  # fmt: skip
    assert same_bits(a[0], ref[0])


def test_many_small_leaves_of_mixed_dtypes_are_grouped_and_exact():
    rng = np.random.default_rng(17)
    pairs = [PAIRS[i % 4] for i in range(300)]
    sizes = [int(n) for n in rng.integers(1, host.SMALL + 1, size=len(pairs))]
    shadows = [random((n,), sd, i) for i, ((sd, _), n) in enumerate(zip(pairs, sizes, strict=True))]
    params = [
        random((n,), pd, 9 + i) for i, ((_, pd), n) in enumerate(zip(pairs, sizes, strict=True))
    ]
    (items,) = host.plan(shadows, params).shares
    batches = [it for it in items if isinstance(it, host.Batch)]
    assert len(batches) >= 4 and all(b.size <= host.BLOCK for b in batches)
    assert all(b.size == sum(j.shadow.size for j in b.leaves) for b in batches)
    assert sum(len(b.leaves) for b in batches) == len(shadows)  # every leaf is small: all batched
    ref, got, mine = both(shadows, params, 0.95)
    assert all(g is m and same_bits(g, r) for g, m, r in zip(got, mine, ref, strict=True))


def test_worker_threads_give_the_same_bits(monkeypatch):
    monkeypatch.setenv("EMA_CORE_NUMPY_THREADS", "3")
    monkeypatch.setattr(_settings, "_kept", [])  # read again at the next use
    monkeypatch.setattr(host, "LEAST", 2)
    shapes = [(host.BLOCK * 5 + 7,), (300, 700), (9,), (host.BLOCK * 3,)]
    shadows = [random(s, "float32", i) for i, s in enumerate(shapes)]
    params = [random(s, "float16", 50 + i) for i, s in enumerate(shapes)]
    for decay in (0.2, 0.999):
        ref, got, mine = both(shadows, params, decay)
        assert all(g is m and same_bits(g, r) for g, m, r in zip(got, mine, ref, strict=True))


@pytest.mark.parametrize("value", ["0", "two", "-1", ""])
def test_bad_thread_count_is_rejected_before_any_write(monkeypatch, value):
    monkeypatch.setenv("EMA_CORE_NUMPY_THREADS", value)
    monkeypatch.setattr(_settings, "_kept", [])  # read again at the next use
    s = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"EMA_CORE_NUMPY_THREADS must be an integer >= 1"):
        fast.update_leaves(xp, [s], [np.ones(4)], ["float"], 0.0, 1.0, non_float="copy",
                           writes=[True])  # fmt: skip
    assert not s.any()


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


def elements(dtype: str) -> st.SearchStrategy[float]:
    """Finite values that the dtype holds without overflow."""
    return st.floats(-6e4, 6e4, width=16) if dtype == "float16" else finite


decays = st.floats(0.0, 1.0) | st.sampled_from([0.0, 0.5, 1.0, 0.999, 1e-3])


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(PAIRS[:6]),
    hnp.array_shapes(min_dims=0, max_dims=3, max_side=9),
    decays,
    st.data(),
)
def test_property_fast_equals_generic(pair, shape, decay, data):
    narrow = "float16" if "float16" in pair else "float32"
    s = data.draw(hnp.arrays(pair[0], shape, elements=elements(narrow)))
    p = data.draw(hnp.arrays(pair[1], shape, elements=elements(narrow)))
    ref, got, _ = both([s], [p], decay)
    assert same_bits(got[0], ref[0])


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, max_side=20), elements=finite),
       hnp.arrays(np.float32, 1, elements=finite), decays)  # fmt: skip
def test_property_bounds_and_fixed_point(s, shift, decay):
    p = s[::-1].copy() + shift[0] if s.ndim == 1 else s + shift[0]
    out = fast.update_leaves(xp, [s.copy()], [p], ["float"], decay, 1.0 - decay,
                             non_float="copy", writes=[True])[0]  # fmt: skip
    assert np.all(out >= np.minimum(s, p)) and np.all(out <= np.maximum(s, p))
    fixed = fast.update_leaves(xp, [s.copy()], [s], ["float"], decay, 1.0 - decay,
                               non_float="copy", writes=[True])[0]  # fmt: skip
    assert np.array_equal(fixed, s)  # by value: -0.0 may come back as +0.0


class _Sub(np.ndarray):
    """An ndarray subclass: numpy's namespace, but not the plain arrays the engine views."""


@pytest.mark.parametrize("decay", [0.999, 0.3, 0.0])
def test_subclass_leaves_take_the_generic_route(decay: float) -> None:
    """The table's "generic" row: an ndarray subclass is blended by the core, written back in
    place (or into a new array), bit for bit as the generic backend; also when the stateless
    call's cache keeps the routes of a nest that holds one."""
    rng = np.random.default_rng(3)
    s = rng.random((5, 4)).astype(np.float32).view(_Sub)
    p = rng.random((5, 4)).astype(np.float32).view(_Sub)
    assert fast.route(s, p, "float", decay, "copy") == "generic"
    want = generic.update_leaves(xp, [s.copy()], [p], ["float"], decay, 1.0 - decay,
                                 non_float="copy", writes=[False])[0]  # fmt: skip
    new = fast.update_leaves(xp, [s], [p], ["float"], decay, 1.0 - decay,
                             non_float="copy", writes=[False])[0]  # fmt: skip
    assert new is not s and np.array_equal(np.asarray(new).view(np.uint32),
                                           np.asarray(want).view(np.uint32))  # fmt: skip
    shadow = {"sub": s, "plain": rng.random(7)}
    params = {"sub": p, "plain": rng.random(7)}
    expect = {k: np.array(v, copy=True) for k, v in shadow.items()}
    for t in (1, 2, 3):  # the third call runs the kept routes
        expect = {k: np.asarray(generic.update_leaves(xp, [expect[k]], [params[k]], ["float"],
                                                      decay, 1.0 - decay, non_float="copy",
                                                      writes=[True])[0])
                  for k in expect}  # fmt: skip
        out = ema_core.ema_update(shadow, params, t, decay=decay)
        assert out["sub"] is s
        for k in shadow:
            assert np.array_equal(np.asarray(out[k]).view(np.uint8), expect[k].view(np.uint8))


def test_the_engine_refuses_a_read_only_shadow_before_planning() -> None:
    s = np.zeros(4, np.float32)
    s.flags.writeable = False
    with pytest.raises(ValueError, match=r"shadow #0: a writeable float array is needed"):
        host.plan([s], [np.ones(4, np.float32)])
