"""The leaf kernels under hostile input (issue 13, items 2.1 and 2.4).

2.1: a params tensor that no longer fits its shadow (``param.data = ...`` after the EMA was
built) must raise ``ValueError`` before anything is written, on every mixed-precision path:
the host engine (whose loops index the params by the shadow's size, without bounds checks),
the CUDA routes' blocks (whose cast-copy would broadcast) and the Triton launchers.

2.4: a device decay (a 0-d tensor, or one computed from a tensor step) of exactly 1 keeps the
shadow bit for bit and exactly 0 gives the params bit for bit, whatever the other side holds
(inf, NaN with a sign and payload), on every path that takes one: the kernel layer (fused
lerp groups, the blocked mixed path, the generic core for half and narrowing pairs, integer
copies), ``ema_update`` and the ``EMA`` class. Comparisons are of bits (``view`` as integers).
"""

from __future__ import annotations

import array_api_compat.numpy as xp_np
import pytest

torch = pytest.importorskip("torch")

import array_api_compat.torch as xp  # noqa: E402
import numpy as np  # noqa: E402

import ema_core  # noqa: E402
from ema_core import _core  # noqa: E402
from ema_core.backends import torch as torch_backend  # noqa: E402
from ema_core.backends.torch import _cuda, _host, _routes  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
#: (shadow, params) dtypes: one of each plan bucket (same, mixed, half same, narrowing)
PAIRS = [(F32, F32), (F64, F64), (F32, BF16), (F32, F16), (F64, F32), (BF16, BF16), (F16, F16)]
PAIRS += [(F16, F32)]
_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}
#: a NaN with its sign bit set and a payload, per dtype (the canonical one is positive, no payload)
_ODD_NAN = {F16: 0xFE01, BF16: 0xFFC1, F32: 0xFFC00001, F64: 0xFFF8000000000001}
#: elements of the large leaves: several host-engine pieces
N = 1 << 17


def _bits(t):
    return t.detach().view(_INT[t.element_size()]).clone()


def _same_bits(a, b) -> bool:
    return a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


def _specials(dtype, flip=False):
    """Finite values, both infinities, NaN and a signed NaN with a payload, zeros of both signs."""
    values = [1.5, float("inf"), -3.0, float("-inf"), float("nan"), 0.0, -0.0, 2.25, 0.0]
    t = torch.tensor(values[::-1] if flip else values, dtype=dtype)
    bits = t.view(_INT[t.element_size()])
    bits[0 if flip else 8] = _ODD_NAN[dtype] - (1 << (8 * t.element_size()))  # as signed
    return t


def _device_decay(value):
    decay = torch.tensor(value, dtype=torch.float64)
    return decay, 1.0 - decay


# --- 2.4: the ends of a device decay ---------------------------------------------------------


@pytest.mark.parametrize("decay", [1.0, 0.0])
def test_kernel_layer_device_decay_ends_are_bit_exact(decay):
    """Every pair at once through ``update_leaves`` (one group per pair), plus integer leaves:
    inf or NaN params never reach a kept shadow, a NaN shadow never survives a copy."""
    shadows = [_specials(s) for s, _ in PAIRS] + [torch.arange(4, dtype=torch.int32)]
    params = [_specials(p, flip=True) for _, p in PAIRS] + [torch.arange(4, 8, dtype=torch.int32)]
    kinds = ["float"] * len(PAIRS) + ["exact"]
    before = [s.clone() for s in shadows]
    d, r = _device_decay(decay)
    with torch_backend.guard():
        out = torch_backend.update_leaves(
            xp, shadows, params, kinds, d, r, non_float="copy", writes=[True] * len(kinds)
        )
    for got, s, p in zip(out, before, params, strict=True):
        want = s if decay == 1.0 and s.is_floating_point() else p.to(s.dtype)
        assert _same_bits(got, want), (s.dtype, p.dtype, got, want)


@pytest.mark.parametrize("decay", [1.0, 0.0])
@pytest.mark.parametrize(("sdtype", "pdtype"), [(F32, BF16), (F32, F16), (F64, F32)], ids=str)
def test_blocked_mixed_path_device_decay_ends_are_bit_exact(monkeypatch, sdtype, pdtype, decay):
    """The blocked way of the CUDA routes (without Triton, or strided leaves), called directly
    on CPU tensors: packed small leaves, a leaf cut in pieces and a strided one."""
    monkeypatch.setattr(_cuda, "BLOCK", 16)
    shadows = [_specials(sdtype), _specials(sdtype).repeat(5), _specials(sdtype).repeat(4)]
    params = [_specials(pdtype, flip=True), _specials(pdtype, flip=True).repeat(5)]
    params += [_specials(pdtype, flip=True).repeat(4).view(4, 9).t().contiguous().t()]
    shadows[2] = shadows[2].view(4, 9).t().contiguous().t()
    before = [s.clone() for s in shadows]
    d, r = _device_decay(decay)
    _cuda.blocked_lerp_ends_(shadows, params, r.to(sdtype), d)
    for got, s, p in zip(shadows, before, params, strict=True):
        assert _same_bits(got, s if decay == 1.0 else p.to(sdtype))


@pytest.mark.parametrize("decay", [1.0, 0.0])
@pytest.mark.parametrize("namespace", ["numpy", "torch"])
def test_core_blend_and_copy_ends_are_bit_exact(namespace, decay):
    """The generic core with a 0-d array decay, in the shadow's own dtype: a half shadow's NaN
    keeps its sign and payload at decay 1."""
    for sdtype, pdtype in PAIRS:
        s, p = _specials(sdtype), _specials(pdtype, flip=True)
        want = s if decay == 1.0 else p.to(sdtype)
        d, r = _device_decay(decay)
        if namespace == "numpy":
            if BF16 in (sdtype, pdtype):
                continue  # no bfloat16 in numpy
            s, p, want = s.numpy(), p.numpy(), want.numpy()
            d, r = d.numpy(), r.numpy()
            with np.errstate(all="ignore"):  # the blend's arithmetic meets inf and NaN
                got = _core.blend(xp_np, s, p, d, r)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (sdtype, pdtype)
        else:
            assert _same_bits(_core.blend(xp, s, p, d, r), want), (sdtype, pdtype)
    ints = torch.arange(3, 6)  # integer leaves take the params at every decay, 1 included
    copied = _core.copy_exact(xp, ints)
    assert torch.equal(copied, ints) and copied.data_ptr() != ints.data_ptr()


@pytest.mark.parametrize(("sdtype", "pdtype"), [(F32, F32), (F32, BF16), (F64, F64)], ids=str)
def test_ema_update_with_tensor_decays_and_steps_keeps_the_ends_exact(sdtype, pdtype):
    """``ema_update``: a 0-d tensor decay of 1 and 0, a first update under ``init="copy"``
    (decay 0) and a skipped step under ``interval=2`` (decay 1), each with a tensor step."""
    step = torch.tensor(1)
    cases = [
        ({"decay": torch.tensor(1.0, dtype=F64)}, True),
        ({"decay": torch.tensor(0.0, dtype=F64)}, False),
        ({"config": ema_core.Config(schedule=0.9, init="copy")}, False),
        ({"config": ema_core.Config(schedule=0.9, interval=2)}, True),
    ]
    for kwargs, keeps in cases:
        shadow, params = {"w": _specials(sdtype)}, {"w": _specials(pdtype, flip=True)}
        before = shadow["w"].clone()
        new = ema_core.ema_update(shadow, params, step, **kwargs)
        want = before if keeps else params["w"].to(sdtype)
        assert _same_bits(new["w"], want), kwargs


@pytest.mark.parametrize("dtype", [F32, BF16, F64])
def test_ema_class_tensor_step_keeps_the_ends_exact(dtype):
    """The ``EMA`` class with a tensor step: the first update of ``init="copy"`` takes the
    params over a NaN shadow; a step skipped by ``interval=2`` keeps the shadow while the
    params hold inf and NaN."""
    params = {"w": torch.nn.Parameter(_specials(dtype)), "n": torch.arange(3)}
    ema = EMA(params, config=ema_core.Config(schedule=0.9, init="copy"))
    with torch.no_grad():
        params["w"].copy_(_specials(dtype, flip=True))
        params["n"].add_(10)
    ema.update(torch.tensor(1))
    assert _same_bits(ema.average["w"], params["w"].detach().to(ema.average["w"].dtype))
    assert torch.equal(ema.average["n"], params["n"])

    ema = EMA(params, config=ema_core.Config(schedule=0.9, interval=2))
    before = {k: v.clone() for k, v in ema.average.items()}
    with torch.no_grad():
        params["w"].copy_(_specials(dtype))
        params["n"].add_(10)
    ema.update(torch.tensor(1))
    assert _same_bits(ema.average["w"], before["w"])
    assert torch.equal(ema.average["n"], params["n"])  # integers are copied on every call


# --- 2.1: a params tensor that no longer fits its shadow -------------------------------------


def _tracked(n):
    """A float32 param (a fused lerp group), two bf16 ones large enough for the host loops on
    a first update, and an integer buffer."""
    return {
        "a": torch.nn.Parameter(torch.randn(8)),
        "b": torch.nn.Parameter(torch.randn(n).bfloat16()),
        "c": torch.nn.Parameter(torch.randn(n).bfloat16()),
        "n": torch.arange(4),
    }


@pytest.mark.usefixtures("host_kernels")
@pytest.mark.parametrize("replacement", ["smaller", "one", "view"])
def test_ema_with_a_replaced_half_param_raises_and_writes_nothing(replacement):
    """The second bf16 param of the group replaced after the views were bound: before, the
    compiled loop read past its end (garbage; SIGSEGV at 2**26 elements) and the torch blocks
    broadcast a one-element param. Now ``ValueError`` and every shadow keeps its bits."""
    n = N
    params = _tracked(n)
    ema = EMA(params, decay=0.5)
    ema.update()
    ema.update()  # the host loops' views are bound for every leaf now (numba on)
    with torch.no_grad():
        params["a"].add_(1.0)  # an update would change every shadow
        params["b"].add_(1.0)
        params["n"].add_(1)
    c = params["c"]
    c.data = {
        "smaller": torch.ones(16, dtype=BF16),
        "one": torch.ones(1, dtype=BF16),
        "view": c.data[:16],  # the same storage: the data pointer does not move
    }[replacement]
    before = {k: v.clone() for k, v in ema.average.items()}
    with pytest.raises(ValueError, match=r"shape \((16|1),\)"):
        ema.update()
    assert all(_same_bits(ema.average[k], before[k]) for k in before)


def test_kernel_layer_names_the_tensor_and_checks_every_pair_on_rebinding():
    """A plan's mixed group checks every pair, not only the first, whenever its views are
    (re)made, and the error names the tensor."""
    n = N
    shadows = [torch.zeros(8), torch.zeros(n), torch.zeros(n)]
    params = [torch.ones(8), torch.ones(n, dtype=BF16), torch.ones(n, dtype=BF16)]
    plan = _routes.make_plan(shadows, params, ["float"] * 3, names=["l.a", "l.b", "l.c"])
    _routes.apply(xp, plan, 0.5, 0.5)
    params[2].data = torch.ones(n // 2, dtype=BF16)
    before = [s.clone() for s in shadows]
    with pytest.raises(ValueError, match=r"params l\.c: shape \(65536,\)"):
        _routes.apply(xp, plan, 0.5, 0.5)
    d, r = _device_decay(0.5)
    with pytest.raises(ValueError, match=r"params l\.c:"):
        _routes.apply(xp, plan, d, r)  # the device-decay path checks too
    assert all(_same_bits(s, b) for s, b in zip(shadows, before, strict=True))


@pytest.mark.parametrize("launcher", ["host", "triton", "triton-ends"])
def test_launchers_check_every_pair_before_the_first_write(launcher):
    """``_host.lerp_`` and the Triton launchers called directly: the first pair fits, the
    second does not (Triton: checked before a kernel is even looked up; there is none here)."""
    shadows = [torch.zeros(N), torch.zeros(N)]
    params = [torch.ones(N, dtype=BF16), torch.ones(16, dtype=BF16)]
    d, r = _device_decay(0.5)
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        if launcher == "host":
            _host.lerp_(shadows, params, 0.5, 0.5)
        elif launcher == "triton":
            _cuda.triton_lerp_(shadows, params, 0.5)
        else:
            _cuda.triton_lerp_ends_(shadows, params, r.float(), d)
    assert not any(bool(s.any()) for s in shadows)


@pytest.mark.parametrize("name", ["lerp_float", "lerp_float16", "lerp_bfloat16"])
def test_compiled_loops_refuse_params_of_another_size(name):
    """The loops run without bounds checks: each checks the sizes itself first."""
    pytest.importorskip("numba")
    from ema_core.backends.host import _numba_loops

    shadow = np.zeros(64, np.float32)
    params = np.ones(8, np.float32 if name == "lerp_float" else np.uint16)
    with pytest.raises(ValueError, match="differ in size"):
        getattr(_numba_loops, name)(shadow, params, np.float32(0.5), True)
    assert not shadow.any()


# --- on a CUDA device ------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("decay", [1.0, 0.0])
def test_cuda_device_decay_ends_are_bit_exact(decay):
    """The Triton kernel (when installed) and the fused groups on CUDA, with a CUDA decay."""
    pairs = [(F32, BF16), (F32, F16), (F32, F32), (F64, F64), (BF16, BF16)]
    shadows = [_specials(s).repeat(300).cuda() for s, _ in pairs]
    params = [_specials(p, flip=True).repeat(300).cuda() for _, p in pairs]
    before = [s.clone() for s in shadows]
    d, r = (t.cuda() for t in _device_decay(decay))
    with torch_backend.guard():
        torch_backend.update_leaves(
            xp, shadows, params, ["float"] * len(pairs), d, r, non_float="copy",
            writes=[True] * len(pairs),
        )  # fmt: skip
    for got, s, p in zip(shadows, before, params, strict=True):
        assert _same_bits(got, s if decay == 1.0 else p.to(s.dtype))
