"""Every route of the torch route table (``ema_core.backends.torch._routes``) and of the generic
backend's: for each, the route ``apply`` takes (``_routes.routes``) and its result against its
reference, bit for bit: the generic core (``_core.blend``) for the host engine and "generic",
torch's own ``lerp`` (one tensor at a time) for the fused lerp routes, the params' bits for
"copy" and the shadow's for "skip". The CPU routes run with numba on and off (``host_kernels``);
the CUDA ones are marked ``gpu``. DTensor pairs take the plain routes over their local shards.
"""

from __future__ import annotations

import array_api_compat.numpy as xp_np
import pytest

torch = pytest.importorskip("torch")

import array_api_compat.torch as xp  # noqa: E402
import numpy as np  # noqa: E402

from ema_core import _core  # noqa: E402
from ema_core.backends import generic  # noqa: E402
from ema_core.backends import torch as torch_backend  # noqa: E402
from ema_core.backends.torch import _cuda, _host, _routes  # noqa: E402

pytestmark = pytest.mark.usefixtures("host_kernels")

F16, BF16, F32, F64, C64 = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
)
_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.int64}


def _bits(t):
    t = t.detach().resolve_neg()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.contiguous().view(_INT[t.element_size()]).clone()


def _same_bits(a, b) -> bool:
    return a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


def _pair(sdtype, pdtype, shape, seed):
    gen = torch.Generator().manual_seed(seed)
    s, p = torch.randn(shape, generator=gen), 3 * torch.randn(shape, generator=gen)
    if sdtype.is_complex:
        s, p = torch.complex(s, -s), torch.complex(p, 2 * p)
    return s.to(sdtype), p.to(pdtype)


def _leaves():
    """(shadow dtype, params dtype) -> the pairs of one group: a large leaf (cut over threads),
    small ones, a strided one, and for bf16 params a negative-bit view (no numpy view sees it:
    the host engine leaves it to the core)."""
    groups = {}
    for i, (sd, pd) in enumerate([(F32, F32), (F64, F64), (BF16, BF16), (F32, BF16), (F32, F16),
                                  (F64, F32), (C64, C64), (BF16, F32)]):  # fmt: skip
        pairs = [_pair(sd, pd, shape, 10 * i + k) for k, shape in enumerate([(70_001,), (3, 5)])]
        s, p = _pair(sd, pd, (6, 4), 10 * i + 7)
        pairs.append((s.t(), p.t()))  # strided
        if pd == BF16 and sd == F32:
            s, p = _pair(sd, pd, (9,), 10 * i + 8)
            pairs.append((s, torch._neg_view(p)))
        groups[(sd, pd)] = pairs
    return groups


HOST_ROUTES = {(F32, F32): "foreach-lerp", (F64, F64): "foreach-lerp", (BF16, BF16): "foreach-lerp"}
HOST_ROUTES |= dict.fromkeys([(F32, BF16), (F32, F16), (F64, F32)], "host-engine")
HOST_ROUTES |= {(C64, C64): "generic", (BF16, F32): "generic"}
DEVICE_ROUTES = {(F32, F32): "foreach-lerp-ends", (F64, F64): "foreach-lerp-ends"}
DEVICE_ROUTES |= {key: "generic" for key in HOST_ROUTES if key not in DEVICE_ROUTES}


def _want(way, s, p, decay, rate):
    """The reference of one route for one pair (computed before the update)."""
    if way in ("foreach-lerp", "foreach-lerp-ends"):
        weight = rate if isinstance(rate, float) else rate.to(s.dtype)
        return torch.lerp(s, p, weight)
    return _core.blend(xp, s.clone(), p, decay, rate)


def _plan(groups):
    shadows = [s.clone() for pairs in groups.values() for s, _ in pairs]
    params = [p for pairs in groups.values() for _, p in pairs]
    return _routes.make_plan(shadows, params, ["float"] * len(shadows)), shadows, params


def _taken(plan, decay):
    """The route ``apply`` takes per group, by (shadow dtype, params dtype)."""
    return {(g.shadows[0].dtype, g.params[0].dtype): way for g, way in _routes.routes(plan, decay)}


@pytest.mark.parametrize("decay", [0.999, 0.3], ids=["high", "low"])
@pytest.mark.parametrize("kind", ["host", "device"])
def test_cpu_routes(kind, decay):
    """Every CPU route for a decay strictly between 0 and 1, host and device, applied twice
    (the host engine's views are bound once, then reused); each against its reference."""
    plan, shadows, params = _plan(_leaves())
    d = decay if kind == "host" else torch.tensor(decay, dtype=F64)
    r = 1.0 - d
    assert _taken(plan, d) == (HOST_ROUTES if kind == "host" else DEVICE_ROUTES)
    for _ in range(2):
        before = [s.clone() for s in shadows]
        _routes.apply(xp, plan, d, r)
        for s, b, p in zip(shadows, before, params, strict=True):
            way = _taken(plan, d)[(s.dtype, p.dtype)]
            assert _same_bits(s, _want(way, b, p, d, r)), (way, s.dtype, p.dtype, s.shape)


@pytest.mark.parametrize("decay", [0.999, 0.3], ids=["high", "low"])
@pytest.mark.parametrize(("sd", "pd"), [(F32, BF16), (F32, F16), (F64, F32)])
def test_host_engine_large_leaves(monkeypatch, host_kernels, sd, pd, decay):
    """Large contiguous leaves (without numba: torch's ops, block by block, a partial last
    block included) and the rest (numpy blocks or compiled loops) blend bit-equal to the core,
    twice over the same bound views."""
    monkeypatch.setattr(_host, "LARGE", 2500)
    monkeypatch.setattr(_host, "TORCH_BLOCK", 1000)
    pairs = [_pair(sd, pd, shape, k) for k, shape in enumerate([(2500,), (7, 601), (40,)])]
    s, p = _pair(sd, pd, (60, 50), 9)
    pairs.append((s.t(), p.t()))  # large but strided: the engine's slabs
    shadows, params = [s for s, _ in pairs], [p for _, p in pairs]
    bound = _host.bind(shadows, params)
    assert len(bound.large) == 2 and bound.small == [2, 3]
    for _ in range(2):
        want = [_core.blend(xp, s.clone(), p, decay, 1.0 - decay) for s, p in pairs]
        _host.run(bound, decay, 1.0 - decay)
        assert all(_same_bits(s, w) for s, w in zip(shadows, want, strict=True))


@pytest.mark.parametrize("decay", [1.0, 0.0])
def test_host_decay_ends(decay):
    """A host decay of 1 skips every averaged group (their bits kept), 0 copies the params'
    bits into every one, whatever its dtypes."""
    plan, shadows, params = _plan(_leaves())
    before = [s.clone() for s in shadows]
    assert set(_taken(plan, decay).values()) == {"skip" if decay == 1.0 else "copy"}
    _routes.apply(xp, plan, decay, 1.0 - decay)
    for s, b, p in zip(shadows, before, params, strict=True):
        assert _same_bits(s, b if decay == 1.0 else p.to(s.dtype))


@pytest.mark.parametrize("decay", [1.0, 0.5, "device"])
def test_exact_leaves_copy(decay):
    """Integer and bool leaves take the "copy" route at every decay, a host 1 included."""
    d = torch.tensor(0.5, dtype=F64) if decay == "device" else decay
    shadows = [torch.zeros(4, dtype=torch.int32), torch.zeros(3, dtype=torch.bool)]
    params = [torch.arange(4, dtype=torch.int32), torch.ones(3, dtype=torch.bool)]
    plan = _routes.make_plan(shadows, params, ["exact", "exact"])
    assert [way for _, way in _routes.routes(plan, d)] == ["copy", "copy"]
    _routes.apply(xp, plan, d, 1.0 - d)
    assert all(torch.equal(s, p) for s, p in zip(shadows, params, strict=True))


def test_a_mixed_group_is_checked_also_when_a_host_decay_of_0_copies_it():
    """The copy would broadcast a one-element params tensor: ``ValueError``, nothing written."""
    shadows, params = [torch.zeros(8), torch.zeros(8)], [torch.ones(8), torch.ones(8, dtype=BF16)]
    plan = _routes.make_plan(shadows, params, ["float"] * 2, names=["a", "b"])
    params[1].data = torch.ones(1, dtype=BF16)
    with pytest.raises(ValueError, match=r"params b: shape \(1,\)"):
        _routes.apply(xp, plan, 0.0, 1.0)
    assert not any(bool(s.any()) for s in shadows)


@pytest.fixture
def mesh():
    """A one-process gloo group and a one-device CPU mesh."""
    dist = pytest.importorskip("torch.distributed")
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["host", "device"])
def test_dtensor_pairs_take_the_plain_routes_on_their_shards(mesh, kind):
    """DTensor shadows and params: planned as their local shards (plain tensors), routed as
    such, no collective; the DTensor shadows hold the plain tensors' results bit for bit."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode

    d = 0.75 if kind == "host" else torch.tensor(0.75, dtype=F64)
    plain = [_pair(F32, BF16, (6, 4), 1), _pair(F32, F32, (5,), 2)]
    want = [_want("generic", s, p, d, 1.0 - d) for s, p in plain[:1]]
    want.append(
        _want("foreach-lerp" if kind == "host" else "foreach-lerp-ends", *plain[1], d, 1.0 - d)
    )
    shadows = [distribute_tensor(s.clone(), mesh, [Shard(0)]) for s, _ in plain]
    params = [distribute_tensor(p, mesh, [Shard(0)]) for _, p in plain]
    plan = _routes.make_plan(shadows, params, ["float", "float"])
    taken = [way for _, way in _routes.routes(plan, d)]
    assert taken == (["foreach-lerp", "host-engine"] if kind == "host" else
                     ["foreach-lerp-ends", "generic"])  # fmt: skip
    assert all(
        type(t) is torch.Tensor for g in plan.same + plan.mixed for t in g.shadows + g.params
    )
    with CommDebugMode() as comm:
        _routes.apply(xp, plan, d, 1.0 - d)
        with torch_backend.guard():  # the stateless path: new DTensors, the inputs kept
            out = torch_backend.update_leaves(
                xp, shadows, params, ["float"] * 2, d, 1.0 - d, non_float="copy", writes=[False] * 2
            )
    assert comm.get_total_counts() == 0
    for s, w in zip(shadows, want, strict=True):
        assert _same_bits(s.to_local(), w)
    assert all(type(o) is type(s) and o is not s for o, s in zip(out, shadows, strict=True))
    mismatched = distribute_tensor(plain[1][1], mesh, [Replicate()])
    for other in (mismatched, plain[1][1]):
        with pytest.raises(ValueError, match=r"params #1: a DTensor pair must share"):
            _routes.make_plan(shadows, [params[0], other], ["float", "float"])


@pytest.mark.parametrize("non_float", ["copy", "freeze"])
def test_generic_routes(non_float):
    """The generic backend's table: "blend" for float leaves, "copy" or "keep" for the rest."""
    assert generic.route("float", non_float=non_float) == "blend"
    assert generic.route("exact", non_float=non_float) == (
        "copy" if non_float == "copy" else "keep"
    )
    s, p = np.zeros(3, np.float32), np.ones(3, np.float32)
    n, m = np.zeros(2, np.int64), np.arange(2, dtype=np.int64)
    out = generic.update_leaves(
        xp_np, [s, n], [p, m], ["float", "exact"], 0.75, 0.25, non_float=non_float,
        writes=[True, True],
    )  # fmt: skip
    assert out[0] is s and np.array_equal(
        s, _core.blend(xp_np, np.zeros(3, np.float32), p, 0.75, 0.25)
    )
    assert out[1] is n and np.array_equal(n, m if non_float == "copy" else np.zeros(2, np.int64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("triton", [True, False], ids=["triton", "blocked"])
@pytest.mark.parametrize("decay", [0.3, "device", "device-1", "device-0"])
def test_cuda_routes(monkeypatch, triton, decay):
    """The CUDA mixed routes (Triton, or the blocked way) against a two-pass lerp: within one
    rounding for Triton, bitwise for the blocked way; exact ends with a device decay."""
    if triton and _cuda._kernel() is None:
        pytest.skip("Triton is not installed")
    if not triton:
        monkeypatch.setattr(_cuda, "triton_usable", lambda like: False)
    value = {"device-1": 1.0, "device-0": 0.0}.get(decay, 0.3)
    d = value if decay == 0.3 else torch.tensor(value, dtype=F64, device="cuda")
    shadows = [torch.randn(n, device="cuda") for n in (5000, 7, 0)] + [
        torch.randn(6, 4, device="cuda").t()
    ]
    params = [torch.randn(s.shape, device="cuda").bfloat16() for s in shadows]
    before = [s.clone() for s in shadows]
    plan = _routes.make_plan(shadows, params, ["float"] * 4)
    way = "triton-mixed" if triton else "cuda-mixed"
    assert [w for _, w in _routes.routes(plan, d)] == [way if decay == 0.3 else f"{way}-ends"]
    _routes.apply(xp, plan, d, 1.0 - d)
    for s, b, p in zip(shadows, before, params, strict=True):
        ref = torch.lerp(b, p.float(), 1.0 - value)
        if value in (0.0, 1.0):
            assert _same_bits(s, b if value == 1.0 else p.float())
        elif triton and s.is_contiguous():
            assert bool(
                ((s - ref).abs() <= 1.2e-7 * torch.maximum(ref.abs(), b.abs()).clamp_min(1)).all()
            )
        else:
            assert _same_bits(s, ref)


def _float32_cuda_pairs():
    """Float32 CUDA pairs (large, one Triton block, tiny, empty, strided; inf and NaN in both),
    the shadows as they were, and their plan."""
    shadows = [torch.randn(n, device="cuda") for n in (5000, 1024, 7, 0)] + [
        torch.randn(6, 4, device="cuda").t()
    ]
    params = [torch.randn(s.shape, device="cuda") for s in shadows]
    shadows[0][:2] = torch.tensor([float("inf"), float("nan")])
    params[0][2:4] = torch.tensor([float("-inf"), float("nan")])
    before = [s.clone() for s in shadows]
    return shadows, params, before, _routes.make_plan(shadows, params, ["float"] * len(shadows))


def _apply_twice_allocating_nothing(plan, shadows, before, decay) -> None:
    """Apply ``plan`` once (tables and kernels made), put the shadows back, apply it again:
    the second update allocates nothing."""
    _routes.apply(xp, plan, decay, 1.0 - decay)
    for s, b in zip(shadows, before, strict=True):
        s.copy_(b)
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated()
    _routes.apply(xp, plan, decay, 1.0 - decay)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == allocated


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("decay", [0.3, 0.9, 0.9999])
def test_cuda_same_host(decay):
    """Float32 pairs under a host decay on CUDA take the Triton kernel (route "triton-same"):
    bit for bit torch's own fused ``lerp`` at the same weight (the foreach route they took
    before), inf and NaN where it puts them, strided pairs by the blocked way, nothing allocated
    per update once the launch is kept."""
    if _cuda._kernel() is None:
        pytest.skip("Triton is not installed")
    shadows, params, before, plan = _float32_cuda_pairs()
    assert [w for _, w in _routes.routes(plan, decay)] == ["triton-same"]
    _apply_twice_allocating_nothing(plan, shadows, before, decay)
    for s, b, p in zip(shadows, before, params, strict=True):
        want = b.clone()
        torch._foreach_lerp_([want], [p], 1.0 - decay)  # the route taken before: the bits
        finite = want.isfinite()  # a NaN's sign is the kernel's
        assert _same_bits(s[finite], want[finite]), (decay, tuple(s.shape))
        assert torch.equal(s.isnan(), want.isnan())
        assert torch.equal(s[want.isinf()], want[want.isinf()])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("decay", [0.3, 0.9, 0.9999, 1.0, 0.0])
def test_cuda_same_ends(decay):
    """Float32 pairs under a device decay on CUDA take the Triton kernel in one pass (route
    "triton-ends"): bit for bit torch's fused ``lerp`` at the float32 weight (what a host decay's
    foreach route gives), the ends exact (inf and NaN kept), strided pairs by the blocked way,
    nothing allocated per update."""
    if _cuda._kernel() is None:
        pytest.skip("Triton is not installed")
    d = torch.tensor(decay, dtype=F64, device="cuda")
    shadows, params, before, plan = _float32_cuda_pairs()
    assert [w for _, w in _routes.routes(plan, d)] == ["triton-ends"]
    weight, _ = _routes._on_device(1.0 - d, d, shadows[0])
    _apply_twice_allocating_nothing(plan, shadows, before, d)
    for s, b, p in zip(shadows, before, params, strict=True):
        if decay in (0.0, 1.0):
            assert _same_bits(s, b if decay == 1.0 else p)
        elif not s.is_contiguous():  # the blocked way, as the mixed routes leave it
            want = b.clone()
            _cuda.blocked_lerp_ends_([want], [p], weight, d)
            assert _same_bits(s, want)
        else:
            want = torch.lerp(b, p, weight)
            finite = want.isfinite()  # a NaN's sign is the kernel's
            assert _same_bits(s[finite], want[finite])
            assert torch.equal(s.isnan(), want.isnan())
            assert torch.equal(s[want.isinf()], want[want.isinf()])
