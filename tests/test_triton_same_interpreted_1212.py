"""Route "triton-same" (float32 pairs under a host decay, the Triton kernel) run under Triton's
interpreter in a subprocess (as ``test_triton_interpreter``), each update against torch's lerp
rounded once per multiply-add (``_lerp_ends``, computed in float64): through the ``EMA`` class (a
stale launch would read a param's old memory, or a transposed param as contiguous; a
``Parameter`` subclass the watch cannot look at), params with the negative bit, and the
stateless call's cache. The routing decisions: ``test_triton_same_1212``.
"""

from __future__ import annotations

import importlib.util
import json
import traceback

import pytest

torch = pytest.importorskip("torch")

from ema_core.backends.torch import _cuda  # noqa: E402
from tests.test_triton_same_1212 import _Sub  # noqa: E402

F32, F64 = torch.float32, torch.float64


def _float32_usable(like: torch.Tensor) -> bool:
    """``triton_usable`` for CPU tensors: the kernel runs on them under the interpreter."""
    return like.dtype == F32 and _cuda._kernel() is not None


def _want(s: torch.Tensor, p: torch.Tensor, decay: float) -> torch.Tensor:
    """What the route gives: torch's fused lerp at the float32 weight (contiguous pairs), the
    blocked way for a strided one."""
    from tests.test_triton_interpreter import _lerp_ends

    if s.is_contiguous() and p.is_contiguous():
        w32 = float(torch.tensor(1.0 - decay, dtype=F32))
        return _lerp_ends(s, p, w32, None)
    out = s.clone()
    _cuda.blocked_lerp_([out], [p], 1.0 - decay)
    return out


CALLS: list[int] = []  # the child's calls of the kernel's host-decay wrapper


def _patch() -> None:
    """In the child: the kernel usable for CPU float32 shadows, its wrapper's calls counted."""
    blend = _cuda.triton_lerp_
    _cuda.triton_lerp_ = lambda *a, **k: CALLS.append(1) or blend(*a, **k)
    _cuda.triton_usable = _float32_usable


def _child_class() -> None:
    """Five ``EMA.update`` calls of a float32 model through the kernel: the launch made, kept on
    the watch's word, followed to a param's new memory and to a transposed one."""
    from ema_core.torch import EMA

    calls = CALLS
    del calls[:]
    gen = torch.Generator().manual_seed(3)
    model = torch.nn.ParameterList(
        [torch.nn.Parameter(torch.randn(n, n, generator=gen) * 3) for n in (33, 40, 1)]
    )
    average = EMA(model, decay=0.9)

    def step() -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(-1.5).add_(0.25)
        pairs = zip(average.average.items(), model.parameters(), strict=True)
        want = {name: _want(s.clone(), p.detach(), 0.9) for (name, s), p in pairs}
        average.update()
        for name, got in average.average.items():
            assert torch.equal(got.view(torch.int32), want[name].view(torch.int32)), name

    step()
    (group,) = average._bound.store.plan.same
    first = group.launch
    assert calls == [1] and first is not None
    step()
    assert group.launch is first and len(calls) == 2  # vouched: kept, no key compared
    model[1].data = model[1].data.clone()
    step()
    model[0].data = model[0].data.t()  # the same memory, now strided
    step()
    (group,) = average._bound.store.plan.same
    assert len(group.launch.left) == 1 and len(calls) == 4
    step()


def _child_subclass() -> None:
    """A ``Parameter`` subclass's ``.data`` replaced (the old memory alive) and resized: the
    update reads the new memory, and a resized param is refused before any write."""
    from ema_core.torch import EMA

    model = torch.nn.Linear(40, 40)
    model.weight = _Sub(torch.randn(40, 40))
    average = EMA(model, decay=0.5)
    average.update()
    old = model.weight.data  # kept alive: a stale launch would read it without a fault
    model.weight.data = torch.randn(40, 40) * 3
    before = average.average["weight"].clone()
    average.update()
    want = _want(before, model.weight.detach(), 0.5)
    assert torch.equal(average.average["weight"].view(torch.int32), want.view(torch.int32))
    model.weight.data = torch.randn(8, 8)
    before = average.average["weight"].clone()
    try:
        average.update()
    except ValueError as e:
        assert "weight" in str(e), e
    else:
        raise AssertionError("a resized subclass param was not refused")
    assert torch.equal(average.average["weight"], before) and old.shape == (40, 40)


def _child_negative() -> None:
    """Params with the negative bit (``torch._neg_view``: the memory holds ``-p``) are left to
    torch's ops, float32 and bfloat16, host and device decay: the kernel reads raw memory."""
    from ema_core.backends.torch import _foreach

    gen = torch.Generator().manual_seed(6)
    w, d = torch.tensor(0.25), torch.tensor(0.75, dtype=F64)
    for pdtype in (F32, torch.bfloat16):
        for device_decay in (False, True):
            shadows = [torch.randn(64, generator=gen) for _ in range(2)]
            base = (torch.randn(64, generator=gen) * 3).to(pdtype)
            params = [(torch.randn(64, generator=gen) * 3).to(pdtype), torch._neg_view(base)]
            want = shadows[1].clone()
            resolved = [params[1].resolve_neg()]
            if device_decay:
                leftover = _foreach.lerp_ends_ if pdtype == F32 else _cuda.blocked_lerp_ends_
                leftover([want], resolved, w, d)
                _cuda.triton_lerp_ends_(shadows, params, w, d)
            else:
                leftover = _foreach.lerp_ if pdtype == F32 else _cuda.blocked_lerp_
                leftover([want], resolved, 0.25)
                _cuda.triton_lerp_(shadows, params, 0.25)
            got = shadows[1]
            assert torch.equal(got, want), (pdtype, device_decay, (got - want).abs().max())


def _child_flips_and_wrappers() -> None:
    """Through the ``EMA`` class: a param's negative bit set over its memory after the launch
    was made, and a wrapper subclass param (no address); each update against torch's lerp, and
    each bumps the shadows' version counters (as an in-place op does)."""
    from torch.testing._internal.two_tensor import TwoTensor

    from ema_core.torch import EMA

    gen = torch.Generator().manual_seed(8)
    model = torch.nn.ParameterList(
        [torch.nn.Parameter(torch.randn(30, generator=gen) * 3) for _ in range(2)]
    )
    average = EMA(model, decay=0.5)

    def step(expect_kernel: bool) -> None:
        before = {name: s.clone() for name, s in average.average.items()}
        versions = [s._version for s in average._bound.shadows]
        del CALLS[:]
        average.update()
        assert bool(CALLS) is expect_kernel
        for (name, got), p in zip(average.average.items(), model.parameters(), strict=True):
            want = before[name].clone()
            torch._foreach_lerp_([want], [p.detach().resolve_neg()], 0.5)  # w = 1/2: exact
            assert torch.equal(got, want), name
        assert all(s._version > v for s, v in zip(average._bound.shadows, versions, strict=True))

    step(True)
    step(True)
    with torch.no_grad():
        model[1].data = torch._neg_view(model[1].data)  # the memory now reads as -p
    step(True)
    wrapped = TwoTensor(torch.randn(30, generator=gen), torch.randn(30, generator=gen))
    sub = EMA({"w": torch.nn.Parameter(wrapped)}, decay=0.5)
    before = sub.average["w"].clone()
    sub.update()  # the kernel would read address 0
    want = before.clone()
    torch._foreach_lerp_([want], [wrapped.detach()], 0.5)
    assert torch.equal(sub.average["w"], want)


def _child_stateless() -> None:
    """``ema_update`` of a float32 dict, twice through its cache (the launch kept on the cache's
    word), then after a param was transposed over its memory."""
    import ema_core

    del CALLS[:]
    gen = torch.Generator().manual_seed(4)
    params = {k: torch.randn(n, n, generator=gen) for k, n in (("a", 20), ("b", 3))}
    shadow = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    for t in (1, 2, 3):
        if t == 3:
            params["a"] = params["a"].t()
        want = {k: _want(shadow[k].clone(), params[k], 0.75) for k in params}
        ema_core.ema_update(shadow, params, t, decay=0.75)
        for k, got in shadow.items():
            assert torch.equal(got.view(torch.int32), want[k].view(torch.int32)), (t, k)
        assert len(CALLS) == t, CALLS


def _run_all() -> dict[str, str]:
    results = {"kernel": type(_cuda._kernel()).__name__}
    _patch()
    cases = (("class", _child_class), ("subclass", _child_subclass), ("negative", _child_negative))
    cases += (("flips", _child_flips_and_wrappers),)
    for name, case in (*cases, ("stateless", _child_stateless)):
        try:
            case()
            results[name] = "ok"
        except Exception:  # reported to the parent
            results[name] = traceback.format_exc(limit=4)
    return results


@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="triton is not installed (the test group pins it; it runs on CPUs, no GPU needed)",
)
def test_float32_updates_through_the_kernel_under_the_interpreter():
    from tests.test_triton_interpreter import run_interpreted

    results = run_interpreted(__file__)
    assert results["kernel"] == "InterpretedFunction"
    assert results["class"] == "ok", results["class"]
    assert results["subclass"] == "ok", results["subclass"]
    assert results["negative"] == "ok", results["negative"]
    assert results["flips"] == "ok", results["flips"]
    assert results["stateless"] == "ok", results["stateless"]


if __name__ == "__main__":
    print(json.dumps(_run_all()))
