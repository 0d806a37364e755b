"""ema-core's compiled host kernels (``backends/host/_numba.py``): exact widening of half
params, which arrays they take, the one-pass path really taken by numpy and CPU torch, and the
results equal to the generic core bit for bit (the same formula, the same float32 steps, no FMA)."""

from __future__ import annotations

import array_api_compat.numpy as np_xp
import numpy as np
import pytest

from ema_core import _settings
from ema_core.backends import generic, host
from ema_core.backends import numpy as numpy_backend
from ema_core.backends.host import _blocks, _numba, _threads

numba = pytest.importorskip("numba")
from ema_core.backends.host import _numba_loops  # noqa: E402


@pytest.fixture(autouse=True)
def numba_on(monkeypatch):
    monkeypatch.setenv("EMA_CORE_NUMBA", "1")
    monkeypatch.setattr(_settings, "_kept", [])  # read again at the next use


@numba.njit
def _widen_all(bits, out, bfloat16):
    for i in range(bits.size):
        if bfloat16:
            out[i] = _numba_loops._widen_bfloat16(bits[i])
        else:
            out[i] = _numba_loops._widen_float16(bits[i])


ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def _same_or_both_nan(got: np.ndarray, want: np.ndarray) -> None:
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert np.array_equal(np.signbit(got), np.signbit(want))


def test_float16_widening_is_exact_for_every_bit_pattern():
    got = np.empty(ALL_BITS.size, np.float32)
    _widen_all(ALL_BITS, got, False)
    _same_or_both_nan(got, ALL_BITS.view(np.float16).astype(np.float32))


def test_bfloat16_widening_is_exact_for_every_bit_pattern():
    torch = pytest.importorskip("torch")
    got = np.empty(ALL_BITS.size, np.float32)
    _widen_all(ALL_BITS, got, True)
    want = torch.from_numpy(ALL_BITS.view(np.int16)).view(torch.bfloat16).float().numpy()
    _same_or_both_nan(got, want)


def _ufuncs(s: np.ndarray, p: np.ndarray, d: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # inf params: inf - inf is NaN on both paths
        ref = generic.update_leaves(np_xp, [s], [p], ["float"], d, 1.0 - d, non_float="copy",
                                    writes=[False])  # fmt: skip
    return np.asarray(ref[0])


@pytest.mark.parametrize(
    ("sdtype", "pdtype"),
    [("f4", "f4"), ("f4", "f2"), ("f8", "f8"), ("f8", "f4"), ("f8", "f2")],
)
@pytest.mark.parametrize("decay", [0.9999, 0.5, 0.4999, 1e-3])
def test_kernel_equals_the_generic_core_bit_for_bit(sdtype, pdtype, decay):
    rng = np.random.default_rng(0)
    s = (rng.standard_normal(10_001) * 3).astype(sdtype)
    p = (rng.standard_normal(10_001) * 3).astype(pdtype)
    p[:4] = [np.inf, -np.inf, 0.0, -0.0]
    p[4:8] = np.array([6e-8, -6e-6, 1e-30, 3e-39]).astype(pdtype)  # subnormals of both types
    want = _ufuncs(s, p, decay)
    prepared = _numba.prepare(s, p)
    assert prepared is not None
    _numba.apply(prepared, decay, 1.0 - decay)
    assert s.tobytes() == want.tobytes()


def test_arrays_no_kernel_takes_are_refused_and_left_alone(monkeypatch):
    s = np.ones(8, np.float32)
    refused = {
        "strided": (np.ones(16, np.float32)[::2], np.ones(8, np.float32)),
        "2-d": (np.ones((2, 4), np.float32), np.ones((2, 4), np.float32)),
        "read-only": (np.ones(8, np.float32), np.ones(8, np.float32)),
        "wider params": (s.copy(), np.ones(8, np.float64)),
        "complex": (np.ones(8, np.complex64), np.ones(8, np.complex64)),
        "half shadow": (np.ones(8, np.float16), np.ones(8, np.float16)),
        "sizes": (s.copy(), np.ones(9, np.float32)),
        "bfloat16 not uint16": (s.copy(), np.ones(8, np.float16)),
    }
    refused["read-only"][0].flags.writeable = False
    for name, (shadow, params) in refused.items():
        before = shadow.copy()
        fmt = "bfloat16" if name.startswith("bfloat16") else "float"
        assert _numba.prepare(shadow, params, fmt) is None, name
        assert np.array_equal(shadow, before), name
    monkeypatch.setenv("EMA_CORE_NUMBA", "0")
    monkeypatch.setattr(_settings, "_kept", [])  # read again at the next use
    assert _numba.prepare(s, np.zeros(8, np.float32)) is None


@pytest.mark.parametrize("turned_on", [True, False])
def test_numpy_backend_takes_one_pass_only_when_the_kernels_are_on(monkeypatch, turned_on):
    monkeypatch.setenv("EMA_CORE_NUMBA", "1" if turned_on else "0")
    monkeypatch.setattr(_settings, "_kept", [])  # read again at the next use
    blocks = []
    original = _blocks.blend_
    monkeypatch.setattr(_blocks, "blend_", lambda *a: blocks.append(a) or original(*a))
    s = np.random.default_rng(1).standard_normal(host.BLOCK * 3).astype(np.float32)
    p = np.zeros(s.size, np.float16)
    want = _ufuncs(s, p, 0.99)
    numpy_backend.update_leaves(np_xp, [s], [p], ["float"], 0.99, 0.01, non_float="copy",
                                writes=[True])  # fmt: skip
    assert s.tobytes() == want.tobytes()
    assert bool(blocks) is not turned_on


def test_strided_numpy_leaves_still_take_the_block_path(monkeypatch):
    blocks = []
    original = _blocks.blend_
    monkeypatch.setattr(_blocks, "blend_", lambda *a: blocks.append(a) or original(*a))
    s = np.ones((host.BLOCK, 2), np.float32)[:, 0]
    numpy_backend.update_leaves(np_xp, [s], [np.zeros(s.shape, np.float32)], ["float"], 0.5, 0.5,
                                non_float="copy", writes=[True])  # fmt: skip
    assert blocks and (s == 0.5).all()


# --- CPU torch tensors: numpy views of their storage, no copies --------------------------------


def _torch_pair(sdtype, pdtype, shape, seed):
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(sdtype), (torch.randn(shape, generator=gen) * 3).to(
        pdtype
    )


def _torch_generic(shadows, params, decay):
    import array_api_compat.torch as t_xp

    n, rate = len(params), 1.0 - decay
    copies = [s.clone() for s in shadows]
    return generic.update_leaves(
        t_xp, copies, params, ["float"] * n, decay, rate, non_float="copy", writes=[False] * n
    )


@pytest.mark.parametrize("decay", [0.999, 0.3])
def test_torch_mixed_groups_equal_the_generic_core_bit_for_bit(decay):
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as t_xp

    from ema_core.backends import torch as torch_backend

    pairs = [
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float16),
        (torch.float64, torch.float32),
        (torch.float64, torch.bfloat16),
    ]
    shapes = [(300, 7), (5,), (), (0, 4)]
    shadows, params = [], []
    for i, (sd, pd) in enumerate(pairs):
        for j, shape in enumerate(shapes):
            s, p = _torch_pair(sd, pd, shape, 10 * i + j)
            shadows.append(s)
            params.append(p)
    want = _torch_generic(shadows, params, decay)
    with torch_backend.guard():
        torch_backend.update_leaves(t_xp, shadows, params, ["float"] * len(params), decay,
                                    1.0 - decay, non_float="copy",
                                    writes=[True] * len(params))  # fmt: skip
    for got, ref in zip(shadows, want, strict=True):
        assert torch.equal(got, ref) and got.dtype == ref.dtype


def _ema_of(torch, shapes, dtype):
    from ema_core.torch import EMA

    params = {f"w{i}": torch.nn.Parameter(torch.randn(s).to(dtype)) for i, s in enumerate(shapes)}
    return params, EMA(params, decay=0.9)


def test_ema_class_reuses_its_views_and_rebuilds_them_when_storage_moves():
    torch = pytest.importorskip("torch")
    params, ema = _ema_of(torch, [(64, 3), (17,)], torch.bfloat16)
    (group,) = ema._bound.store.plan.mixed
    ema.update()  # the first update binds every leaf, small ones included
    bound = group.host
    assert bound is not None and not bound.left and len(bound.shadows) == 2
    ema.update()
    assert group.host is bound  # same storage: the views are reused
    expected = _torch_generic(list(ema.average.values()), [params["w0"], params["w1"]], 0.9)
    ema.update()
    assert all(torch.equal(a, b) for a, b in zip(ema.average.values(), expected, strict=True))
    params["w0"].data = torch.full((64, 3), 5.0, dtype=torch.bfloat16)  # new storage
    expected = _torch_generic(list(ema.average.values()), [params["w0"], params["w1"]], 0.9)
    ema.update()
    assert group.host is not bound
    assert all(torch.equal(a, b) for a, b in zip(ema.average.values(), expected, strict=True))


def test_a_transposed_square_param_rebinds_its_views():
    """Same storage, same shape, other strides: the views must be made again."""
    torch = pytest.importorskip("torch")
    params, ema = _ema_of(torch, [(8, 8)], torch.bfloat16)
    ema.update()
    (group,) = ema._bound.store.plan.mixed
    bound = group.host
    params["w0"].data = params["w0"].data.t()
    expected = _torch_generic(list(ema.average.values()), [params["w0"]], 0.9)
    ema.update()
    assert group.host is not bound
    assert torch.equal(ema.average["w0"], expected[0])


def test_the_views_key_sees_every_change_of_memory():
    """``_host.stale``: a changed pointer, element count (``resize_`` to fewer elements keeps
    the pointer), dtype, contiguity, or a non-contiguous tensor's strides make new views; a
    contiguous tensor read as another shape over the same memory keeps its flat view valid."""
    torch = pytest.importorskip("torch")
    from ema_core.backends.torch import _host

    def fresh():
        shadows = [torch.zeros(64), torch.zeros(8, 8).t()]
        return shadows, [torch.ones(64).bfloat16(), torch.ones(8, 8).bfloat16().t()]

    shadows, params = fresh()
    bound = _host.bind(shadows, params)
    assert not _host.stale(bound, shadows, params)
    params[0].data = params[0].data.view(8, 8)  # same memory, contiguous: the flat view holds
    assert not _host.stale(bound, shadows, params)
    changes = [
        lambda s, p: p[0].resize_(32),  # fewer elements, same pointer
        lambda s, p: p.__setitem__(0, p[0].clone()),  # another storage
        lambda s, p: p.__setitem__(0, p[0].half()),  # another dtype
        lambda s, p: p.__setitem__(1, p[1].t()),  # contiguous now (same memory)
        lambda s, p: s[1].as_strided_((4, 16), (1, 4)),  # other non-contiguous layout, same size
    ]
    for change in changes:
        shadows, params = fresh()
        bound = _host.bind(shadows, params)
        change(shadows, params)
        assert _host.stale(bound, shadows, params)


@pytest.mark.parametrize("decay", [0.999, 0.3])
def test_strided_torch_leaves_are_blended_by_the_engine(decay):
    torch = pytest.importorskip("torch")
    from ema_core.backends.torch import _host

    shadows = [torch.zeros(4, 6).t(), torch.zeros(300), torch.zeros(10, 8)[:, ::2]]
    params = [torch.randn(6, 4).bfloat16(), torch.randn(4, 300).bfloat16()[1],
              torch.randn(4, 20).half().t()[::2]]  # fmt: skip
    want = _torch_generic(shadows, params, decay)
    bound = _host.lerp_(shadows, params, decay, 1.0 - decay)
    assert bound.left == [] and len(bound.shadows) == 3
    assert all(torch.equal(g, w) for g, w in zip(shadows, want, strict=True))


def test_torch_runs_the_engine_blocks_when_numba_is_turned_off(monkeypatch):
    torch = pytest.importorskip("torch")

    monkeypatch.setenv("EMA_CORE_NUMBA", "0")
    monkeypatch.setattr(_settings, "_kept", [])  # read again at the next use
    monkeypatch.setattr(_numba, "apply", lambda *a: pytest.fail("compiled loop used"))
    params, ema = _ema_of(torch, [(8,), (70, 3)], torch.bfloat16)
    expected = _torch_generic(list(ema.average.values()), list(params.values()), 0.9)
    ema.update()
    assert ema._bound.store.plan.mixed[0].host is not None
    assert all(torch.equal(a, b) for a, b in zip(ema.average.values(), expected, strict=True))


def test_thread_pools_of_different_sizes_are_kept_side_by_side():
    two, three = _threads._pool(2), _threads._pool(3)
    assert _threads._pool(2) is two and _threads._pool(3) is three  # no churn between sizes
    done = []
    leaf = _threads.Leaf(np.zeros(4), np.zeros(4), "float")
    shares = _threads.share([leaf] * 6, 3, least=1, grain=8)  # too small to cut
    _threads.run_shares(shares, lambda item: done.append(_threads.size(item)))
    assert len(shares) == 3 and sorted(done) == [4] * 6
