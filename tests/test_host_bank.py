"""The host bank (``backends/host/_bank.py``, ``_bank_loops.py``): K shadows of the same params
in one pass, each bit-equal to the single engine with its own decay (compiled loops and numpy
blocks), exact at both ends per shadow, cut over threads, and refusing bad pairs before any
write."""

from __future__ import annotations

import numpy as np
import pytest

from ema_core import _settings
from ema_core.backends import host
from ema_core.backends.host import _bank, _numba

pytestmark = pytest.mark.usefixtures("host_kernels")

PAIRS = [("f4", "f4"), ("f4", "f2"), ("f4", "bf16"), ("f8", "f8"), ("f8", "f4"), ("f8", "f2")]


def _params(rng: np.random.Generator, n: int, kind: str) -> tuple[np.ndarray, str]:
    values = rng.standard_normal(n) * 3
    if n > 8:
        values[:4] = [np.inf, -np.inf, 0.0, -0.0]
    if kind == "bf16":  # the top 16 bits of float32s: bfloat16 bit patterns
        return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16), "bfloat16"
    return values.astype(kind), "float"


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint8)


def _case(pair: tuple[str, str], sizes: list[int], k: int, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    made = [_params(rng, n, pair[1]) for n in sizes]
    params, formats = [p for p, _ in made], [f for _, f in made]
    shadows = [[rng.standard_normal(n).astype(pair[0]) for n in sizes] for _ in range(k)]
    return params, formats, shadows


DECAYS = [[0.9999, 0.3, 1.0], [0.5, 0.0, 0.4999], [1.0, 1.0, 0.999], [0.0, 0.7, 1e-3]]


@pytest.mark.parametrize("pair", PAIRS)
def test_each_shadow_equals_its_own_engine_update_bit_for_bit(pair):
    sizes = [1, 3, 100, 4096, 70_001, 17]
    params, formats, shadows = _case(pair, sizes, 3)
    want = [[s.copy() for s in group] for group in shadows]
    work = _bank.plan(shadows, params, formats)
    with np.errstate(invalid="ignore"):  # inf params: inf - inf is NaN on every path
        for decays in DECAYS:
            rates = [1.0 - d for d in decays]
            _bank.run(work, decays, rates)
            for group, d in zip(want, decays, strict=True):
                host.run(host.plan(group, params, formats), d, 1.0 - d)
    for got_group, want_group in zip(shadows, want, strict=True):
        for got, ref in zip(got_group, want_group, strict=True):
            assert np.array_equal(_bits(got), _bits(ref))


def test_a_large_leaf_is_cut_over_threads_and_stays_bit_equal():
    n = 2 * _bank.LEAST + 12_345
    params, formats, shadows = _case(("f4", "bf16"), [n, 5, 300], 2, seed=1)
    for p in params:  # no inf: the numpy blocks' threads do not see the test's errstate
        p[:4] = 0
    want = [[s.copy() for s in group] for group in shadows]
    work = _bank.plan(shadows, params, formats, workers=2)
    assert len(work.shares) == 2 and all(work.shares)
    assert sum(piece.params.size for share in work.shares for piece in share) == n + 305
    _bank.run(work, [0.99, 0.2], [0.01, 0.8])
    for group, d in zip(want, [0.99, 0.2], strict=True):
        host.run(host.plan(group, params, formats), d, 1.0 - d)
    for got_group, want_group in zip(shadows, want, strict=True):
        for got, ref in zip(got_group, want_group, strict=True):
            assert np.array_equal(_bits(got), _bits(ref))


def test_decay_one_writes_nothing_and_decay_zero_copies_exactly_per_shadow():
    p = np.array([np.nan, np.inf, -0.0, 1e-40, 3.5, -2.0], np.float32)
    keep = np.array([np.nan, 1.0, 0.0, -1.0, np.inf, 7.0], np.float32)
    shadows = [[keep.copy()], [np.zeros(6, np.float32)], [np.ones(6, np.float32)]]
    work = _bank.plan(shadows, [p])
    _bank.run(work, [1.0, 0.0, 0.5], [0.0, 1.0, 0.5])
    assert np.array_equal(_bits(shadows[0][0]), _bits(keep))  # NaN and inf untouched
    assert np.array_equal(_bits(shadows[1][0]), _bits(p))  # NaN, -0.0, subnormal copied
    assert shadows[2][0][4] == np.float32(1.0 + 0.5 * 2.5)


def test_a_size_mismatch_raises_before_anything_is_written():
    params, formats, shadows = _case(("f4", "f4"), [10, 20], 2)
    shadows[1][1] = np.zeros(21, np.float32)
    before = [[s.copy() for s in group] for group in shadows]
    with pytest.raises(ValueError, match=r"shadow set 1, array #1: shape \(21,\)"):
        _bank.plan(shadows, params, formats)
    for got_group, want_group in zip(shadows, before, strict=True):
        for got, ref in zip(got_group, want_group, strict=True):
            assert np.array_equal(got, ref)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no_sets", "K >= 1 sequences"),
        ("short_set", "got lengths"),
        ("read_only", "writeable"),
        ("mixed_dtypes", "writeable float32 or float64"),
        ("wider_params", "no wider than the shadows"),
    ],
)
def test_bad_plans_are_refused(change, message):
    params, formats, shadows = _case(("f4", "f4"), [10, 20], 2)
    if change == "no_sets":
        shadows = []
    elif change == "short_set":
        shadows[1] = shadows[1][:1]
    elif change == "read_only":
        shadows[0][0].flags.writeable = False
    elif change == "mixed_dtypes":
        shadows[1][0] = shadows[1][0].astype(np.float64)
    else:
        params[0] = params[0].astype(np.float64)
    with pytest.raises(ValueError, match=message):
        _bank.plan(shadows, params, formats)


def test_run_needs_one_decay_per_shadow_set():
    params, formats, shadows = _case(("f4", "f4"), [10], 2)
    work = _bank.plan(shadows, params, formats)
    before = [s.copy() for s in shadows[0]]
    with pytest.raises(ValueError, match="2 each are needed, got 1, 1"):
        _bank.run(work, [0.5], [0.5])
    assert np.array_equal(shadows[0][0], before[0])


# --- the compiled loops themselves ---------------------------------------------------------


@pytest.fixture
def loops(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.setenv("EMA_CORE_NUMBA", "1")
    monkeypatch.setattr(_settings, "_kept", [])
    from ema_core.backends.host import _bank_loops

    return _bank_loops


@pytest.mark.parametrize("pair", PAIRS)
def test_the_kernels_equal_the_single_shadow_loops_bit_for_bit(loops, pair):
    params, formats, shadows = _case(pair, [1, 50, 9_999], 3, seed=2)
    want = [[s.copy() for s in group] for group in shadows]
    decays = [0.9999, 0.25, 1.0]
    pieces = [
        _bank.Piece(p, tuple(group[j] for group in shadows), f)
        for j, (p, f) in enumerate(zip(params, formats, strict=True))
    ]
    ((kernel, dtype, part, typed_shadows, typed_params),) = loops.typed_groups(pieces)
    assert part == slice(0, 3)
    arguments = _bank.modes("core", dtype, decays, [1.0 - d for d in decays])
    assert arguments[1:] == ((True, False, True), (False, False, True), False)
    with np.errstate(invalid="ignore"):
        kernel(typed_shadows, typed_params, *arguments)
        for group, d in zip(want[:2], decays[:2], strict=True):
            for s, p, f in zip(group, params, formats, strict=True):
                prepared = _numba.prepare(s, p, f)
                assert prepared is not None
                _numba.apply(prepared, d, 1.0 - d)
    for got_group, want_group in zip(shadows, want, strict=True):
        for got, ref in zip(got_group, want_group, strict=True):
            assert np.array_equal(_bits(got), _bits(ref))


def test_the_kernel_checks_every_size_before_writing(loops):
    good, bad = np.zeros(8, np.float32), np.zeros(9, np.float32)
    p = np.ones(8, np.float32)
    half = (np.float32(0.5),) * 2
    with pytest.raises(ValueError, match="differ in size"):
        loops.bank_float(
            loops.List([(good, good), (good, bad)]), loops.List([p, p]), half, (True,) * 2,
            (False,) * 2, False,
        )  # fmt: skip
    assert not good.any()  # the shadows that fit were not written either


def test_the_fma_form_rounds_once(loops):
    # In [1, 2) with w = float32(1/3): s + w * (p - s) is exact in float64, so rounding it
    # once to float32 is the fused multiply-add; the unfused form rounds twice.
    rng = np.random.default_rng(3)
    s = rng.uniform(1.0, 2.0, 1000).astype(np.float32)
    p = rng.uniform(1.0, 2.0, 1000).astype(np.float32)
    w = np.float32(1 / 3)
    exact = s.astype(np.float64) + np.float64(w) * (p.astype(np.float64) - s)
    unfused = s + w * (p - s)
    assert (exact.astype(np.float32) != unfused).any()  # the data tells the two forms apart
    arguments = _bank.modes("lerp-fma", np.dtype(np.float32), [1.0 - float(w)], [float(w)])
    assert arguments == ((w,), (True,), (False,), True)
    loops.bank_float(loops.List([(s,)]), loops.List([p]), *arguments)
    assert np.array_equal(s, exact.astype(np.float32))
