"""The host engine (``ema_core/backends/host``) against the generic core (``_core.blend``), bit for
bit, with numba's compiled loops and with the numpy blocks: batches of small leaves, a large leaf
cut over threads, strided leaves cut into slabs, bfloat16 bit patterns, float16 params, float64
and complex shadows, the exact ends; and CPU torch tensors through ``_host``."""

from __future__ import annotations

import array_api_compat.numpy as np_xp
import numpy as np
import pytest

from ema_core import _core, _settings
from ema_core.backends import host
from ema_core.backends import numpy as fast

pytestmark = pytest.mark.usefixtures("host_kernels")  # every test with the loops on and off

PAIRS = [("f4", "f4"), ("f4", "f2"), ("f8", "f8"), ("f8", "f4"), ("f8", "f2"), ("f2", "f2"),
         ("f2", "f4"), ("f4", "f8"), ("c8", "c8"), ("c16", "c8")]  # fmt: skip
DECAYS = [0.9999, 0.5, 0.4999, 1e-3]


def _random(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3
    if dtype.startswith("c"):
        x = x + 1j * rng.standard_normal(shape)
    return np.asarray(x).astype(dtype)


def _core_of(s: np.ndarray, p: np.ndarray, d: float) -> bytes:
    with np.errstate(invalid="ignore", over="ignore"):
        return np.ascontiguousarray(_core.blend(np_xp, s.copy(), p, d, 1.0 - d)).tobytes()


def _bfloat16_bits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 values cut to bfloat16: (their uint16 bits, the same values as float32)."""
    bits = (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return bits, (bits.astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize(("sdtype", "pdtype"), PAIRS)
@pytest.mark.parametrize("decay", DECAYS)
def test_engine_equals_the_core_bit_for_bit(sdtype, pdtype, decay):
    shapes = [(), (5,), (3, 7), (host.BLOCK + 3,), (host.SMALL,), (2, 3, host.SMALL)]
    shadows = [_random(sh, sdtype, i) for i, sh in enumerate(shapes)]
    shadows.append(_random((60, 40), sdtype, 9)[::2, 1::3])  # strided both ways
    params = [_random(s.shape, pdtype, 20 + i) for i, s in enumerate(shadows)]
    params[-1] = np.asfortranarray(params[-1])
    want = [_core_of(s, p, decay) for s, p in zip(shadows, params, strict=True)]
    host.run(host.plan(shadows, params), decay, 1.0 - decay)
    assert [np.ascontiguousarray(s).tobytes() for s in shadows] == want


def test_complex_leaves_take_the_engine_route():
    s, p = _random((9,), "c8", 1), _random((9,), "c8", 2)
    assert fast.route(s, p, "float", 0.9, "copy") == "engine"
    assert fast.route(s.real.copy(), p, "float", 0.9, "copy") == "generic"  # would drop .imag


def test_many_small_leaves_are_batched_and_exact():
    rng = np.random.default_rng(3)
    sizes = [int(n) for n in rng.integers(1, host.SMALL + 1, size=200)]
    shadows = [_random((n,), "f4", i) for i, n in enumerate(sizes)]
    params = [_random((n,), "f2", 500 + i) for i, n in enumerate(sizes)]
    want = [_core_of(s, p, 0.95) for s, p in zip(shadows, params, strict=True)]
    (items,) = host.plan(shadows, params).shares
    assert all(isinstance(item, host.Batch) for item in items) and len(items) < len(shadows) // 10
    assert sum(len(item.leaves) for item in items) == len(shadows)
    host.run(host.plan(shadows, params), 0.95, 0.05)
    assert [s.tobytes() for s in shadows] == want


@pytest.mark.parametrize("fmt", ["f4", "f2", "bfloat16"])
@pytest.mark.parametrize("decay", [0.95, 0.3])
def test_batches_of_small_leaves_run_by_one_table_call(host_kernels, fmt, decay):
    """With numba a batch is one compiled call over the leaves' addresses (``Batch.table``),
    and each leaf comes out as the core makes it: float32, float16 and bfloat16 params, both
    sides of the blend, leaves of 1 to ``SMALL`` elements, params not adjacent in memory."""
    rng = np.random.default_rng(11)
    sizes = [1, 2, 7, host.SMALL, *map(int, rng.integers(1, host.SMALL, size=60))]
    shadows = [_random((n,), "f4", i) for i, n in enumerate(sizes)]
    if fmt == "bfloat16":
        pairs = [_bfloat16_bits(_random((n + 3,), "f4", 99 + i)[3:]) for i, n in enumerate(sizes)]
        params, values = [b for b, _ in pairs], [v for _, v in pairs]
    else:
        params = values = [_random((n + 3,), fmt, 99 + i)[3:] for i, n in enumerate(sizes)]
    want = [_core_of(s, v, decay) for s, v in zip(shadows, values, strict=True)]
    formats = ["bfloat16" if fmt == "bfloat16" else "float"] * len(sizes)
    work = host.plan(shadows, params, formats)
    batches = [item for share in work.shares for item in share if isinstance(item, host.Batch)]
    assert sum(len(b.leaves) for b in batches) == len(sizes)
    assert all((b.table is not None) == (host_kernels == "numba") for b in batches)
    host.run(work, decay, 1.0 - decay)
    assert [s.tobytes() for s in shadows] == want


@pytest.fixture
def three_threads(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("EMA_CORE_NUMPY_THREADS", "3")
    monkeypatch.setattr(_settings, "_kept", [])  # read again at the next use
    monkeypatch.setattr(host, "LEAST", 1)
    return fast.workers()


@pytest.mark.parametrize("decay", [0.999, 0.2])
def test_a_large_leaf_is_cut_over_the_threads(three_threads, decay):
    big = _random((48 * host.BLOCK + 5,), "f4", 4)
    strided = _random((600, 2 * host.SMALL), "f4", 5)[:, ::2]
    shadows = [big, _random((7,), "f4", 6), strided]
    params = [_random(s.shape, "f2", 10 + i) for i, s in enumerate(shadows)]
    shares = host.plan(shadows, params, workers=three_threads).shares
    assert three_threads == 3 and len(shares) == 3

    def pieces(leaf: np.ndarray) -> list[tuple[int, int]]:
        """(thread, elements) of each piece of ``leaf`` in the plan."""
        return [(i, item.shadow.size) for i, run in enumerate(shares) for item in run
                if isinstance(item, host.Leaf) and np.shares_memory(item.shadow, leaf)]  # fmt: skip

    for leaf in (big, strided):
        found = pieces(leaf)
        assert len(found) > 2 and sum(n for _, n in found) == leaf.size
        assert len({thread for thread, _ in found}) >= 2  # not all on one thread
    want = [_core_of(s, p, decay) for s, p in zip(shadows, params, strict=True)]
    out = fast.update_leaves(np_xp, shadows, params, ["float"] * 3, decay, 1.0 - decay,
                             non_float="copy", writes=[True] * 3)  # fmt: skip
    assert [np.ascontiguousarray(s).tobytes() for s in out] == want
    assert all(o is s for o, s in zip(out, shadows, strict=True))


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("shadow_dtype", ["f4", "f8"])
def test_bfloat16_bit_patterns_equal_the_core_on_the_widened_values(decay, shadow_dtype):
    shapes = [(3,), (host.BLOCK + 9,), (40, 30)]
    shadows = [_random(sh, shadow_dtype, i) for i, sh in enumerate(shapes)]
    pairs = [_bfloat16_bits(_random(sh, "f4", 30 + i)) for i, sh in enumerate(shapes)]
    pairs[0][0][:3] = [0x7F80, 0xFFC1, 0x0001]  # inf, a NaN with a payload, a subnormal
    pairs[0][1][:3] = (pairs[0][0][:3].astype(np.uint32) << 16).view(np.float32)
    bits = [b for b, _ in pairs]
    bits[2] = np.asfortranarray(bits[2])[:, ::2]  # strided bits: the block path
    shadows[2] = shadows[2][:, ::2]
    wide = [w for _, w in pairs[:2]] + [pairs[2][1][:, ::2]]
    want = [_core_of(s, w, decay) for s, w in zip(shadows, wide, strict=True)]
    with np.errstate(invalid="ignore"):  # inf params: inf - inf is NaN on every path
        host.run(host.plan(shadows, bits, ["bfloat16"] * 3), decay, 1.0 - decay)
    assert [np.ascontiguousarray(s).tobytes() for s in shadows] == want


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_exact_ends_with_inf_and_nan_in_the_params(fmt):
    p16 = np.array([np.inf, -np.inf, np.nan, -0.0, 6e-8, 1.5] * 20, np.float16)
    if fmt == "float16":
        params, wide = p16, p16.astype(np.float32)
    else:
        params, wide = _bfloat16_bits(p16.astype(np.float32))
        params[2] = 0x7FC3  # a NaN payload, kept by the exact widening
        wide = (params.astype(np.uint32) << 16).view(np.float32)
    shadow = _random(params.shape, "f4", 7)
    shadow[0] = np.nan
    kept = shadow.tobytes()
    fmts = ["bfloat16" if fmt == "bfloat16" else "float"]
    work = host.plan([shadow], [params], fmts)
    host.run(work, 1.0, 0.0)
    assert shadow.tobytes() == kept
    host.run(work, 0.0, 1.0)
    assert shadow.tobytes() == wide.tobytes()


def test_a_bad_pair_raises_before_anything_is_written():
    shadows = [np.zeros(8, np.float32), np.zeros(8, np.float32)]
    with pytest.raises(ValueError, match=r"params #1: shape \(9,\), but its shadow has shape"):
        host.plan(shadows, [np.ones(8, np.float32), np.ones(9, np.float32)])
    with pytest.raises(ValueError, match=r"params #0: dtype float16 does not hold bfloat16"):
        host.plan(shadows[:1], [np.ones(8, np.float16)], ["bfloat16"])
    assert not any(s.any() for s in shadows)


def test_leaf_signature_sees_what_invalidates_a_plan():
    arrays = [np.zeros((4, 6), np.float32), np.zeros(200)]
    before = fast.leaf_signature(arrays)
    assert fast.same_signature(before, arrays) and len(before.keys) == 2
    arrays[0].shape = (6, 4)
    assert not fast.same_signature(before, arrays)
    arrays[0].shape = (4, 6)
    assert fast.same_signature(before, arrays)
    arrays[1].flags.writeable = False
    assert not fast.same_signature(before, arrays)
    arrays[1].flags.writeable = True
    arrays[1].__setstate__(np.ones(200).__reduce__()[2])  # moved: now a view of the bytes
    assert not fast.same_signature(before, arrays)
    assert not fast.same_signature(before, arrays[:1])


# --- CPU torch tensors through ``_host`` (the engine also runs them without numba) ---------


@pytest.mark.parametrize("pdtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("decay", [0.999, 0.3])
def test_torch_fp32_over_half_params_through_host_equals_the_core(pdtype, decay):
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as t_xp

    from ema_core.backends.torch import _host

    dtype = getattr(torch, pdtype)
    shapes = [(3,), (), (70, 9), (host.BLOCK + 1,), (0, 4)]
    gen = torch.Generator().manual_seed(0)
    shadows = [torch.randn(sh, generator=gen) for sh in shapes]
    params = [(torch.randn(sh, generator=gen) * 3).to(dtype) for sh in shapes]
    shadows.append(torch.zeros(12, 8)[:, ::2])  # strided: a slab view
    params.append(torch.randn(4, 12, generator=gen).to(dtype).t())
    assert all(_host.usable(s, p) for s, p in zip(shadows, params, strict=True))
    want = [
        _core.blend(t_xp, s.clone(), p, decay, 1.0 - decay)
        for s, p in zip(shadows, params, strict=True)
    ]
    bound = _host.lerp_(shadows, params, decay, 1.0 - decay)
    assert bound.left == []
    assert all(torch.equal(s, w) for s, w in zip(shadows, want, strict=True))
    before = shadows[0].clone()
    with pytest.raises(ValueError, match=r"params #0 of shape \(2,\)"):
        _host.lerp_(shadows[:1], [params[0][:2]], decay, 1.0 - decay, bound)
    assert torch.equal(shadows[0], before)
