"""Route "triton-same": float32 pairs under a host decay take the Triton kernel where it runs (a
CUDA float32 shadow, Triton installed), one launch per group, with torch's fused ``lerp``
arithmetic; the ``EMA`` class's watch covers those pairs, so its vouching keeps the launch, and a
param moved or transposed over the same memory is seen and the launch made again.

The routing decisions here run on plain CPU tensors with ``triton_usable`` told to say yes; the
blends, under Triton's interpreter, are in ``test_triton_same_interpreted_1212``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ema_core.backends.torch import _cuda, _prewrite, _routes  # noqa: E402

F32, F64 = torch.float32, torch.float64


def _yes(like: torch.Tensor) -> bool:
    return like.dtype == F32


def _plan(n: int = 3, dtype: torch.dtype = F32):
    shadows = [torch.randn(6, 6, dtype=dtype) for _ in range(n)]
    params = [torch.randn(6, 6, dtype=dtype) for _ in range(n)]
    return _routes.make_plan(shadows, params, ["float"] * n, [f"w{i}" for i in range(n)])


def test_a_host_decay_takes_the_kernel_for_float32_pairs_where_it_runs(monkeypatch):
    plan = _plan()
    assert [w for _, w in _routes.routes(plan, 0.999)] == ["foreach-lerp"]  # no CUDA here
    monkeypatch.setattr(_cuda, "triton_usable", _yes)
    assert [w for _, w in _routes.routes(plan, 0.999)] == ["triton-same"]
    assert [w for _, w in _routes.routes(plan, torch.tensor(0.999, dtype=F64))] == ["triton-ends"]
    assert [w for _, w in _routes.routes(plan, 1.0)] == ["skip"]
    assert [w for _, w in _routes.routes(plan, 0.0)] == ["copy"]
    assert [w for _, w in _routes.routes(_plan(dtype=F64), 0.999)] == ["foreach-lerp"]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # traced: the plain op
    assert [w for _, w in _routes.routes(plan, 0.999)] == ["foreach-lerp"]


def test_a_refused_pair_is_named_before_any_write(monkeypatch):
    monkeypatch.setattr(_cuda, "triton_usable", _yes)
    plan = _plan()
    (group,) = plan.same
    before = [s.clone() for s in group.shadows]
    group.params[1].data = torch.randn(5, 7)  # another shape, after the plan was made
    with pytest.raises(ValueError, match="params w1: shape"):
        _routes.apply(None, plan, 0.9, 0.1)  # the kernel is never reached
    assert all(torch.equal(s, b) for s, b in zip(group.shadows, before, strict=True))
    assert group.launch is None


def test_the_class_watch_covers_float32_pairs_where_the_kernel_runs(monkeypatch):
    from ema_core.torch import EMA

    params = {"a": torch.nn.Parameter(torch.randn(4)), "b": torch.nn.Parameter(torch.randn(3))}
    params["c"] = torch.nn.Parameter(torch.randn(5, dtype=F64))
    assert EMA(params, decay=0.9)._bound.watch.views.where == []  # CPU float32: no launch
    monkeypatch.setattr(_cuda, "triton_usable", _yes)
    watch = EMA(params, decay=0.9)._bound.watch
    assert [watch.views.params[i] is params[k] for i, k in enumerate("ab")] == [True, True]
    assert len(watch.views.where) == 2  # not the float64 one
    assert watch.same() and watch.fits and watch.held
    params["b"].data = params["b"].data.clone()  # new memory: the watch sees it
    assert not watch.same()


class _Sub(torch.nn.Parameter):
    """A ``Parameter`` subclass: the watch reads it by identity, dtype and device only."""


def test_a_parameter_subclass_in_a_kernel_group_leaves_the_watch_vouching_for_nothing(
    monkeypatch,
):
    from ema_core.torch import EMA

    monkeypatch.setattr(_cuda, "triton_usable", _yes)
    params = {"a": torch.nn.Parameter(torch.randn(4)), "b": _Sub(torch.randn(3))}
    watch = EMA(params, decay=0.9)._bound.watch
    assert len(watch.views.where) == 1 and not watch.complete
    assert watch.same() and not watch.held  # so the launch's key is compared at each update


def test_a_vouched_float32_launch_is_kept_and_an_unvouched_one_compared():
    plan = _plan()
    (group,) = plan.same
    _prewrite.check(group, "triton-same")
    first = group.launch
    _prewrite.check(group, "triton-same", kept=True)
    assert group.launch is first
    group.params[2].data = group.params[2].data.clone()
    _prewrite.check(group, "triton-same")  # nobody vouched: the key is compared
    assert group.launch is not first
    assert group.launch.key.pointers[5] == group.params[2].data_ptr()


def test_forget_drops_the_float32_launches_too():
    from ema_core.torch._store import Local

    shadows, params = [torch.randn(4), torch.randn(3)], [torch.randn(4), torch.randn(3)]
    store = Local(shadows, params, ["float", "float"], ["a", "b"])
    (group,) = store.plan.same
    _prewrite.check(group, "triton-same")
    assert group.launch is not None
    store.forget()  # a rebind: a launch kept over the old memory would be trusted
    assert group.launch is None


def test_the_benchmarks_class_foreach_contender_takes_the_route_it_replaced(monkeypatch):
    """``EMA class foreach`` (benchmarks, CUDA fp32): the class as it ran before "triton-same",
    with the kernel turned off only around its own calls."""
    from benchmarks.backends import torch as bench_torch
    from ema_core.backends.torch import _foreach

    monkeypatch.setattr(_cuda, "triton_usable", _yes)  # as on CUDA with Triton
    blended: list[int] = []
    lerp = _foreach.lerp_
    monkeypatch.setattr(_foreach, "lerp_", lambda *a, **k: blended.append(1) or lerp(*a, **k))
    params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3))]
    update = bench_torch._class_foreach(params)
    update(1)
    update(2)
    assert len(blended) == 2 and _cuda.triton_usable is _yes


def test_the_kernel_leaves_subclasses_and_negative_views_to_torch():
    """A wrapper subclass has no address (``data_ptr()`` 0) and a negative view's memory holds
    ``-p``: ``groups`` leaves both pairs out of the kernel's tables."""
    from torch.testing._internal.two_tensor import TwoTensor

    from ema_core.backends.torch import _triton_kernel

    shadows = [torch.randn(8) for _ in range(4)]
    params = [torch.randn(8), TwoTensor(torch.randn(8), torch.randn(8))]
    params += [torch._neg_view(torch.randn(8)), torch.nn.Parameter(torch.randn(8))]
    found, left = _triton_kernel.groups(shadows, params)
    assert [id(p) for _, p in left] == [id(params[1]), id(params[2])]
    assert sum(len(sizes) for _, _, sizes in found.values()) == 2


def test_a_negative_bit_set_over_the_same_memory_changes_the_key():
    from ema_core.backends.torch import _pairs

    s, p = torch.randn(4), torch.randn(4)
    was = _pairs.key([s], [p])
    flipped = torch._neg_view(p)  # same pointer, size, dtype, layout
    assert flipped.data_ptr() == p.data_ptr() and _pairs.changed(was, [s], [flipped])


def test_a_key_pickled_before_the_negative_bit_was_kept_loads_and_reads_as_changed():
    """A host engine's views or a launch pickled with an older EMA hold a five-field ``Key``:
    unpickling builds it with those fields, and it never matches a key read now."""
    import pickle

    from ema_core.backends.torch import _pairs

    s, p = torch.randn(4), torch.randn(4)
    now = _pairs.key([s], [p])
    old = _pairs.Key(*now[:5])  # what unpickling an older key calls
    assert pickle.loads(pickle.dumps(old)) == old
    assert _pairs.changed(old, [s], [p]) and not _pairs.changed(now, [s], [p])
