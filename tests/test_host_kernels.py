"""ema-core's compiled host kernels (``backends/_numba.py``): exact widening of half params, which
arrays they take, the one-pass path really taken by numpy and CPU torch, and the results equal
to the generic core bit for bit (the same formula, the same float32 steps, no FMA)."""

from __future__ import annotations

import array_api_compat.numpy as np_xp
import numpy as np
import pytest

from ema_core import _settings
from ema_core.backends import _numba, generic
from ema_core.backends import numpy as numpy_backend

numba = pytest.importorskip("numba")
from ema_core.backends import _numba_loops  # noqa: E402


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
    out = s.copy()
    assert _numba.blend_(out, out, p, decay, 1.0 - decay)
    assert out.tobytes() == want.tobytes()
    separate = np.empty_like(s)
    assert _numba.blend_(separate, s, p, decay, 1.0 - decay)
    assert separate.tobytes() == want.tobytes()


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
        assert not _numba.blend_(shadow, shadow, params, 0.9, 0.1, fmt), name
        assert np.array_equal(shadow, before), name
    monkeypatch.setenv("EMA_CORE_NUMBA", "0")
    monkeypatch.setattr(_settings, "_kept", [])  # read again at the next use
    assert not _numba.blend_(s, s, np.zeros(8, np.float32), 0.9, 0.1)
    assert (s == 1).all()


@pytest.mark.parametrize("turned_on", [True, False])
def test_numpy_backend_takes_one_pass_only_when_the_kernels_are_on(monkeypatch, turned_on):
    monkeypatch.setenv("EMA_CORE_NUMBA", "1" if turned_on else "0")
    monkeypatch.setattr(_settings, "_kept", [])  # read again at the next use
    blocks = []
    original = numpy_backend._blocks
    monkeypatch.setattr(numpy_backend, "_blocks", lambda job: blocks.append(job) or original(job))
    s = np.random.default_rng(1).standard_normal(numpy_backend.BLOCK * 3).astype(np.float32)
    p = np.zeros(s.size, np.float16)
    want = _ufuncs(s, p, 0.99)
    numpy_backend.update_leaves(np_xp, [s], [p], ["float"], 0.99, 0.01, non_float="copy",
                                writes=[True])  # fmt: skip
    assert s.tobytes() == want.tobytes()
    assert bool(blocks) is not turned_on


def test_strided_numpy_leaves_still_take_the_block_path(monkeypatch):
    blocks = []
    original = numpy_backend._blocks
    monkeypatch.setattr(numpy_backend, "_blocks", lambda job: blocks.append(job) or original(job))
    s = np.ones((numpy_backend.BLOCK, 2), np.float32)[:, 0]
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


@pytest.mark.parametrize("decay", [0.999, 0.3])
def test_torch_blocked_path_with_a_host_decay_equals_the_generic_core(monkeypatch, decay):
    """The path small leaves take on a group's first update (and every leaf without numba)."""
    torch = pytest.importorskip("torch")
    from ema_core.backends.torch import _mixed

    monkeypatch.setattr(_mixed, "BLOCK", 64)  # packed small leaves and pieces of large ones
    shapes = [(3,), (), (5, 4), (300,), (9, 7), (0, 3)]
    pairs = [_torch_pair(torch.float32, torch.bfloat16, sh, i) for i, sh in enumerate(shapes)]
    pairs += [_torch_pair(torch.float32, torch.float16, (70,), 9)]
    shadows, params = [s for s, _ in pairs[:-1]], [p for _, p in pairs[:-1]]
    want = _torch_generic(shadows, params, decay)
    with torch.no_grad():
        _mixed.lerp_mixed_(shadows, params, 1.0 - decay, decay)
    assert all(torch.equal(g, w) for g, w in zip(shadows, want, strict=True))
    s16, p16 = pairs[-1]
    want = _torch_generic([s16], [p16], decay)
    with torch.no_grad():
        _mixed.lerp_mixed_([s16], [p16], 1.0 - decay, decay)
    assert torch.equal(s16, want[0])


def test_first_update_leaves_small_leaves_to_the_blocked_path_with_the_same_bits():
    torch = pytest.importorskip("torch")
    from ema_core.backends.torch import _host

    shapes = [(8,), (_host.FIRST_MIN + 5,), (3, 3)]
    pairs = [_torch_pair(torch.float32, torch.bfloat16, sh, 20 + i) for i, sh in enumerate(shapes)]
    shadows, params = [s for s, _ in pairs], [p for _, p in pairs]
    first = _host.lerp_([s.clone() for s in shadows], params, 0.9, 0.1)
    assert first.deferred and first.left == [0, 2] and len(first.items) == 1
    again = _host.lerp_(shadows, params, 0.9, 0.1, first)
    assert not again.deferred and not again.left and len(again.items) == 3
    assert _host.lerp_(shadows, params, 0.9, 0.1, again) is again


def _ema_of(torch, shapes, dtype):
    from ema_core.torch import EMA

    params = {f"w{i}": torch.nn.Parameter(torch.randn(s).to(dtype)) for i, s in enumerate(shapes)}
    return params, EMA(params, decay=0.9)


def test_ema_class_reuses_its_views_and_rebuilds_them_when_storage_moves():
    torch = pytest.importorskip("torch")
    params, ema = _ema_of(torch, [(64, 3), (17,)], torch.bfloat16)
    (group,) = ema._bound.store.plan.mixed
    ema.update()  # the first update leaves these small leaves to the blocked path
    assert group.host is not None and group.host.deferred
    ema.update()
    bound = group.host
    assert bound is not None and not bound.left and not bound.deferred
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


def test_strided_torch_leaves_are_left_to_the_torch_path(monkeypatch):
    torch = pytest.importorskip("torch")
    from ema_core.backends.torch import _mixed

    calls = []
    original = _mixed.lerp_mixed_
    monkeypatch.setattr(
        _mixed, "lerp_mixed_", lambda s, p, *rest: calls.append(len(s)) or original(s, p, *rest)
    )
    monkeypatch.setattr("ema_core.backends.torch._routes.lerp_mixed_", _mixed.lerp_mixed_)
    from ema_core.backends.torch._host import FIRST_MIN

    shadow = torch.zeros(6, 4)
    params = {
        "a": torch.ones(4, 6, dtype=torch.bfloat16).t(),
        "b": torch.ones(FIRST_MIN, dtype=torch.bfloat16),  # large enough for a first update
    }
    import ema_core

    new = ema_core.ema_update({"a": shadow, "b": torch.zeros(FIRST_MIN)}, params, 1, decay=0.5)
    assert calls == [1]  # only the strided leaf went to the torch blocks
    assert (new["a"] == 0.5).all() and (new["b"] == 0.5).all()


def test_torch_takes_no_host_kernel_when_they_are_turned_off(monkeypatch):
    torch = pytest.importorskip("torch")
    from ema_core.backends.torch import _host

    monkeypatch.setenv("EMA_CORE_NUMBA", "0")
    monkeypatch.setattr(_settings, "_kept", [])  # read again at the next use
    monkeypatch.setattr(_host, "lerp_", lambda *a: pytest.fail("host kernel used"))
    _, ema = _ema_of(torch, [(8,)], torch.bfloat16)
    ema.update()
    assert ema._bound.store.plan.mixed[0].host is None


def test_thread_pools_of_different_sizes_are_kept_side_by_side():
    from ema_core.backends import _threads

    two, three = _threads._pool(2), _threads._pool(3)
    assert _threads._pool(2) is two and _threads._pool(3) is three  # no churn between sizes
    done = []
    shares = _threads.share([(np.zeros(4),) * 3] * 6, 3, least=1, grain=8)  # too small to cut
    _threads.run_shares(shares, lambda item: done.append(item[0].size))
    assert len(shares) == 3 and sorted(done) == [4] * 6
