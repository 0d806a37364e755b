"""The torch backend's fused leaf update against the generic core path.

Tolerance: the fast path runs ``lerp_(p, w)`` with ``w = 1 - d`` (one fused blend), the generic
path ``s + r * (p - s)`` or ``p - d * (p - s)`` as separate ops. Both round ``p - s`` the same
way; they differ in the weight (``d`` vs ``1 - fl(1 - d)``: at most 3/8 eps apart), in the
rounding of the product (at most 1/4 eps of ``|p - s|`` each) and in the final rounding (1/2 eps
of the result each). So they agree to within ``eps * (max(|s|, |p|) + |p - s|)`` element by
element, plus two units of the subnormal range (``2 * eps * tiny``, where every rounding is
absolute). The tests assert that bound; hypothesis found cases beyond ``eps * max(|s|, |p|)``
alone (a large ``|p - s|``, subnormals). Where the same formula runs on the same values
(foreach vs per-tensor loop, blocked mixed precision vs a two-pass ``lerp_``) the results must
be bitwise equal. Decay 1 and decay 0 are exact everywhere.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import array_api_compat.torch as xp  # noqa: E402
import numpy as np  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import ema_core  # noqa: E402
from ema_core.backends import generic, get_backend  # noqa: E402
from ema_core.backends import torch as torch_backend  # noqa: E402
from ema_core.backends.torch import _cuda, _foreach  # noqa: E402

# (shadow dtype, params dtype) pairs and the shapes of one model's leaves
DTYPES = [
    (torch.float32, torch.float32),
    (torch.float64, torch.float64),
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
    (torch.float64, torch.float32),
    (torch.bfloat16, torch.bfloat16),
]
SHAPES = [(7, 5), (), (0,), (300,), (4, 3, 2)]
DECAYS = [0.9999, 0.9, 0.5, 0.3, 1e-3]


pytestmark = pytest.mark.usefixtures("host_kernels")  # every test with the loops on and off


def _leaves(sdtype, pdtype, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    shadows = [torch.randn(s, generator=gen).to(sdtype) for s in shapes]
    params = [(torch.randn(s, generator=gen) * 3).to(pdtype) for s in shapes]
    return shadows, params


def _fast(shadows, params, decay, rate, kinds=None, writes=None):
    kinds = kinds or ["float"] * len(shadows)
    writes = [True] * len(shadows) if writes is None else writes
    with torch_backend.guard():
        return torch_backend.update_leaves(
            xp, shadows, params, kinds, decay, rate, non_float="copy", writes=writes
        )


def _generic(shadows, params, decay, rate, kinds=None):
    kinds = kinds or ["float"] * len(shadows)
    with torch.no_grad():
        return generic.update_leaves(
            xp, shadows, params, kinds, decay, rate, non_float="copy", writes=[False] * len(kinds)
        )


def _assert_within_one_rounding(fast, ref, shadows, params):
    for f, r, s, p in zip(fast, ref, shadows, params, strict=True):
        assert f.dtype == r.dtype and f.shape == r.shape
        info = torch.finfo(f.dtype)
        s64, p64 = s.double(), p.double()
        span = torch.maximum(s64.abs(), p64.abs()) + (p64 - s64).abs()
        bound = info.eps * (span + 2 * info.tiny)
        err = (f.double() - r.double()).abs()
        assert bool((err <= bound).all()), float((err / bound).max())


def test_the_registry_serves_torch_tensors_with_this_backend():
    assert get_backend(xp) is torch_backend


@pytest.mark.parametrize(("sdtype", "pdtype"), DTYPES, ids=str)
@pytest.mark.parametrize("decay", DECAYS)
def test_fast_path_matches_generic_path_host_decay(sdtype, pdtype, decay):
    shadows, params = _leaves(sdtype, pdtype)
    originals = [s.clone() for s in shadows]
    ref = _generic(originals, params, decay, 1.0 - decay)
    out = _fast(shadows, params, decay, 1.0 - decay)
    assert all(o is s for o, s in zip(out, shadows, strict=True))  # written in place
    _assert_within_one_rounding(out, ref, originals, params)


@pytest.mark.parametrize(("sdtype", "pdtype"), DTYPES, ids=str)
@pytest.mark.parametrize("decay", [0.9999, 0.3])
def test_fast_path_matches_generic_path_device_decay(sdtype, pdtype, decay):
    shadows, params = _leaves(sdtype, pdtype, seed=1)
    originals = [s.clone() for s in shadows]
    d = torch.tensor(decay, dtype=torch.float64)
    ref = _generic(originals, params, d, 1.0 - d)
    out = _fast(shadows, params, d, 1.0 - d)
    _assert_within_one_rounding(out, ref, originals, params)


@pytest.mark.parametrize(("sdtype", "pdtype"), DTYPES, ids=str)
@pytest.mark.parametrize("as_tensor", [False, True], ids=["host", "device"])
def test_decay_one_keeps_and_decay_zero_copies_bit_exactly(sdtype, pdtype, as_tensor):
    shadows, params = _leaves(sdtype, pdtype, seed=2)
    before = [s.clone() for s in shadows]
    one = torch.tensor(1.0, dtype=torch.float64) if as_tensor else 1.0
    _fast(shadows, params, one, 1.0 - one)
    for s, b in zip(shadows, before, strict=True):
        assert torch.equal(s, b)
    zero = torch.tensor(0.0, dtype=torch.float64) if as_tensor else 0.0
    _fast(shadows, params, zero, 1.0 - zero)
    for s, p in zip(shadows, params, strict=True):
        assert torch.equal(s, p.to(s.dtype))


@pytest.mark.parametrize("as_tensor", [False, True], ids=["host", "device"])
def test_integer_leaves_are_copied_on_every_call(as_tensor):
    """Also at decay 1, where the float leaves skip (issue 14: copied leaves follow the params
    on every call)."""
    params = [torch.tensor(7), torch.arange(4, dtype=torch.int32), torch.ones(2, dtype=torch.bool)]
    kinds = ["exact"] * 3
    for decay in (1.0, 0.5):
        shadows = [
            torch.tensor(3),
            torch.zeros(4, dtype=torch.int32),
            torch.zeros(2, dtype=torch.bool),
        ]
        d = torch.tensor(decay, dtype=torch.float64) if as_tensor else decay
        _fast(shadows, params, d, 1.0 - d, kinds)
        for s, p in zip(shadows, params, strict=True):
            assert torch.equal(s, p), decay


def test_copy_semantics_return_new_tensors_and_mutate_nothing():
    shadows, params = _leaves(torch.float32, torch.bfloat16, seed=3)
    before = [s.clone() for s in shadows]
    out = _fast(shadows, params, 0.9, 0.1, writes=[False] * len(shadows))
    for o, s, b in zip(out, shadows, before, strict=True):
        assert o is not s and torch.equal(s, b)
    ref = _generic(before, params, 0.9, 0.1)
    _assert_within_one_rounding(out, ref, before, params)


def test_foreach_and_per_tensor_fallback_are_bitwise_equal(monkeypatch):
    for sdtype, pdtype in DTYPES:
        a, params = _leaves(sdtype, pdtype, seed=4)
        b = [s.clone() for s in a]
        _fast(a, params, 0.8, 0.2)
        with monkeypatch.context() as patch:
            patch.setattr(_foreach, "HAS_FOREACH", False)
            _fast(b, params, 0.8, 0.2)
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def _two_pass(shadows, params, weight):
    return [s.clone().lerp_(p.to(s.dtype), weight) for s, p in zip(shadows, params, strict=True)]


@pytest.mark.parametrize("weight", [1e-4, 0.7, "tensor"])
def test_blocked_mixed_precision_equals_two_pass_lerp(monkeypatch, weight):
    """The CUDA routes' blocked way (``_cuda``, plain torch) on CPU tensors. Tiny blocks force
    every path: packed small leaves, contiguous leaves cut in pieces, strided leaves cut by
    rows and by single rows; the result is bitwise a two-pass lerp (with a device weight and a
    device decay strictly inside (0, 1), the selects keep the lerp)."""
    monkeypatch.setattr(_cuda, "BLOCK", 16)
    gen = torch.Generator().manual_seed(5)
    shapes = [(3,), (), (5, 4), (40,), (9, 7), (0, 3), (2, 30)]
    params = [torch.randn(s, generator=gen).bfloat16() for s in shapes]
    shadows = [torch.randn(s, generator=gen) for s in shapes]
    params += [torch.randn(6, 10, generator=gen).bfloat16().t()]  # strided, rows of 6
    shadows += [torch.randn(10, 6, generator=gen)]
    params += [torch.randn(20, 2, generator=gen).bfloat16().t()]  # strided, rows of 20 > 16
    shadows += [torch.randn(2, 20, generator=gen).t().contiguous().t()]
    w = torch.tensor(0.25) if weight == "tensor" else weight
    want = _two_pass(shadows, params, w)
    if isinstance(w, float):
        _cuda.blocked_lerp_(shadows, params, w)
    else:
        _cuda.blocked_lerp_ends_(shadows, params, w, torch.tensor(0.75, dtype=torch.float64))
    for got, ref in zip(shadows, want, strict=True):
        assert torch.equal(got, ref)


def test_blocked_mixed_precision_reuses_one_scratch_block(monkeypatch):
    shadows, params = _leaves(torch.float32, torch.bfloat16, seed=6)
    with monkeypatch.context() as patch:
        patch.setattr(_cuda, "BLOCK", 8)  # a small block first: a larger one must replace it
        _cuda.blocked_lerp_(shadows, params, 0.1)
    monkeypatch.setattr(_cuda, "BLOCK", 64)  # not the 64 MiB of the real one on a CPU
    _cuda.blocked_lerp_(shadows, params, 0.1)
    first = _cuda._scratch(shadows[0], _cuda.BLOCK)
    assert first.numel() >= _cuda.BLOCK
    _cuda.blocked_lerp_(shadows, params, 0.1)
    assert _cuda._scratch(shadows[0], _cuda.BLOCK) is first


@settings(max_examples=40, deadline=None)
@given(
    decay=st.floats(0.0, 1.0),
    values=st.lists(st.floats(-1e3, 1e3, width=32), min_size=2, max_size=24),
    mixed=st.booleans(),
)
def test_property_fast_equals_generic_and_stays_between(decay, values, mixed):
    half = len(values) // 2
    s = torch.tensor(values[:half], dtype=torch.float32)
    p = torch.tensor(values[half : 2 * half], dtype=torch.float32)
    if mixed:
        p = p.bfloat16()
    ref = _generic([s.clone()], [p], decay, 1.0 - decay)
    out = _fast([s.clone()], [p], decay, 1.0 - decay)
    _assert_within_one_rounding(out, ref, [s], [p])
    low, high = torch.minimum(s, p.float()), torch.maximum(s, p.float())
    assert bool(((out[0] >= low) & (out[0] <= high)).all())


def test_ema_update_on_torch_matches_a_float64_reference():
    rng = np.random.default_rng(7)
    s_np, p_np = rng.standard_normal((2, 50)).astype(np.float32)
    shadow = {"w": torch.from_numpy(s_np.copy())}
    params = {"w": torch.from_numpy(p_np).bfloat16()}
    p64 = params["w"].double().numpy()
    want = s_np.astype(np.float64)
    for t in range(1, 6):
        want = want + (1 - 0.9) * (p64 - want)
        shadow = ema_core.ema_update(shadow, params, t, decay=0.9)
    np.testing.assert_allclose(shadow["w"].numpy(), want, rtol=0, atol=8 * 1.2e-7 * 3)


@settings(max_examples=30, deadline=None)
@given(
    decay=st.floats(0.0, 1.0),
    values=st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=16),
    device_decay=st.booleans(),
)
def test_property_params_equal_to_the_shadow_are_a_fixed_point(decay, values, device_decay):
    params = torch.tensor(values, dtype=torch.bfloat16)
    shadows = [params.float(), params.clone()]  # a mixed and a same-dtype group
    before = [s.clone() for s in shadows]
    d = torch.tensor(decay, dtype=torch.float64) if device_decay else decay
    _fast(shadows, [params, params], d, 1.0 - d)
    for s, b in zip(shadows, before, strict=True):
        assert torch.equal(s, b)
