"""A group's kept Triton launch (``_prewrite.prepare``, ``_launch.Launch``): prepared once, with
every pair checked, and reused while the caller vouches for the pairs (``kept`` on a mixed
group) or while their ``_pairs.Key`` holds; made again, checked, when a pair changed. (Float32
groups, routes "triton-same" and "triton-ends": ``test_triton_same_1212``.)

The decisions run on plain CPU tensors (preparing needs no kernel: the tables are built on the
host). The blends through a kept launch run under Triton's interpreter in a subprocess, as in
``test_triton_interpreter``: bit for bit the core, also after a param's memory was replaced or
transposed (a stale launch would read the old memory, or read a strided param as contiguous).
"""

from __future__ import annotations

import importlib.util
import json
import traceback

import pytest

torch = pytest.importorskip("torch")

from ema_core.backends.torch import _cuda, _launch, _prewrite, _routes  # noqa: E402
from ema_core.torch._store import Local  # noqa: E402

BF16 = torch.bfloat16


def _group(n: int = 3, pdtype: torch.dtype = BF16, k: int = 6):
    shadows = [torch.randn(k, k) for _ in range(n)]
    params = [torch.randn(k, k).to(pdtype) for _ in range(n)]
    plan = _routes.make_plan(shadows, params, ["float"] * n, [f"w{i}" for i in range(n)])
    (group,) = plan.mixed if pdtype != torch.float32 else plan.same
    return plan, group


def test_the_first_check_prepares_and_a_vouched_one_reuses():
    _, group = _group()
    assert group.launch is None
    _prewrite.check(group, "triton-mixed")
    launch = group.launch
    assert (
        isinstance(launch, _launch.Launch) and launch.key.pointers[0] == group.shadows[0].data_ptr()
    )
    _prewrite.check(group, "triton-mixed", kept=True)
    _prewrite.check(group, "triton-mixed-ends", kept=True)
    assert group.launch is launch


def test_an_unvouched_check_reuses_only_while_the_key_holds():
    _, group = _group()
    _prewrite.check(group, "triton-mixed")
    launch = group.launch
    _prewrite.check(group, "triton-mixed")
    assert group.launch is launch  # nothing moved
    group.params[1].data = group.params[1].data.clone()  # new memory, same object
    _prewrite.check(group, "triton-mixed")
    assert group.launch is not launch
    assert group.launch.key.pointers[4] == group.params[1].data_ptr()
    s_addr, p_addr = group.launch.tables[0][2][:3], group.launch.tables[0][2][3:6]
    assert p_addr.tolist() == [p.data_ptr() for p in group.params]
    assert s_addr.tolist() == [s.data_ptr() for s in group.shadows]


def test_a_transposed_param_leaves_the_table_for_the_blocked_way():
    _, group = _group()
    _prewrite.check(group, "triton-mixed")
    group.params[0].data = group.params[0].data.t()  # same pointer, size and dtype
    _prewrite.check(group, "triton-mixed")
    assert [id(p) for _, p in group.launch.left] == [id(group.params[0])]
    assert group.launch.tables[0][4] == 2  # the other two leaves


def test_a_refused_pair_leaves_no_launch_and_is_named():
    _, group = _group()
    _prewrite.check(group, "triton-mixed")
    group.params[2].data = torch.randn(5, 7).to(BF16)  # another size
    with pytest.raises(ValueError, match="params w2: shape"):
        _prewrite.check(group, "triton-mixed")
    assert group.launch is None
    with pytest.raises(ValueError, match="params w2: shape"):
        _prewrite.check(group, "triton-mixed", kept=True)  # nothing kept to trust


def test_forget_drops_the_launches():
    shadows = [torch.randn(4), torch.randn(3)]
    params = [torch.randn(4).to(BF16), torch.randn(3).to(BF16)]
    store = Local(shadows, params, ["float", "float"], ["a", "b"])
    (group,) = store.plan.mixed
    _prewrite.check(group, "triton-mixed")
    assert group.launch is not None
    store.forget()
    assert group.launch is None and group.host is None


def test_prepare_of_no_pairs_launches_nothing():
    launch = _launch.prepare([], [])
    assert launch.device is None and launch.tables == [] and launch.left == []
    _launch.run(launch, (torch.tensor(0.5, device="meta"), torch.tensor(0.5)))  # no check


def _cuda_model():
    """Square bf16 leaves on CUDA: float32 shadows, the Triton route."""
    gen = torch.Generator().manual_seed(5)
    leaves = [torch.randn(33, 33, generator=gen).bfloat16() for _ in range(3)]
    return torch.nn.ParameterList([torch.nn.Parameter(x.cuda()) for x in leaves])


def _class_step(average, model, decay: float) -> None:
    """One ``update`` against the core (a strided param: the blocked way) and a transposed
    or replaced param followed."""
    import array_api_compat.torch as xp

    from ema_core import _core

    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    want = {}
    for (name, s), p in zip(average.average.items(), model.parameters(), strict=True):
        if p.is_contiguous():
            want[name] = _core.blend(xp, s.clone(), p.detach(), decay, 1.0 - decay)
        else:
            want[name] = s.clone()
            _cuda.blocked_lerp_([want[name]], [p.detach()], 1.0 - decay)
    average.update()
    for name, value in average.average.items():
        assert torch.equal(value.view(torch.int32), want[name].view(torch.int32)), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_class_watch_covers_its_cuda_launches():
    """The ``EMA`` class's watch looks at the CUDA bf16 pairs (``_watch_views.prepared``), so its
    vouching keeps the launch; a param's memory replaced or transposed over the same memory is
    seen by the watch, and the launch made again (a stale one would read the old memory, or
    the strided param as contiguous)."""
    if _cuda._kernel() is None:
        pytest.skip("Triton is not installed")
    from ema_core.torch import EMA

    model = _cuda_model()
    average = EMA(model, decay=0.75)
    assert len(average._bound.watch.views.where) == 3
    _class_step(average, model, 0.75)
    (group,) = average._bound.store.plan.mixed
    first = group.launch
    _class_step(average, model, 0.75)
    assert group.launch is first  # vouched: kept without a look of its own
    model[1].data = model[1].data.clone()
    _class_step(average, model, 0.75)
    model[2].data = model[2].data.t()
    _class_step(average, model, 0.75)
    (group,) = average._bound.store.plan.mixed
    assert len(group.launch.left) == 1


def _child_kept_launch() -> None:
    """Four updates of one group through the interpreted kernel, each against the core (a
    strided pair: the blocked way): the launch prepared, reused (kept), followed to a param's
    new memory, and to a transposed one."""
    import array_api_compat.torch as xp

    from ema_core import _core

    gen = torch.Generator().manual_seed(11)
    shadows = [torch.randn(40, 40, generator=gen) for _ in range(3)]
    params = [(torch.randn(40, 40, generator=gen) * 3).to(BF16) for _ in range(3)]
    plan = _routes.make_plan(shadows, params, ["float"] * 3, ["a", "b", "c"])
    (group,) = plan.mixed

    def step(kept: bool, decay: float) -> None:
        want = [
            _core.blend(xp, s.clone(), p, decay, 1.0 - decay)
            for s, p in zip(shadows, params, strict=True)
        ]
        for i, p in enumerate(params):
            if not p.is_contiguous():  # the blocked way, whose torch lerp may differ by a rounding
                want[i] = shadows[i].clone()
                _cuda.blocked_lerp_([want[i]], [p], 1.0 - decay)
        _prewrite.check(group, "triton-mixed", kept)
        _routes._run(xp, group, "triton-mixed", decay, 1.0 - decay)
        for i, (got, w) in enumerate(zip(shadows, want, strict=True)):
            assert torch.equal(got.view(torch.int32), w.view(torch.int32)), f"leaf {i}"

    step(False, 0.75)
    first = group.launch
    step(True, 0.9)
    assert group.launch is first
    old = params[1].data
    params[1].data = (old.float() + 1).to(BF16)  # new memory; the old one differs and lives on
    step(False, 0.75)
    params[2].data = params[2].data.t()  # over the same memory, strided
    step(False, 0.9)
    assert group.launch is not first and len(group.launch.left) == 1


def _run_all() -> dict[str, str]:
    results = {"kernel": type(_cuda._kernel()).__name__}
    try:
        _child_kept_launch()
        results["kept-launch"] = "ok"
    except Exception:  # reported to the parent
        results["kept-launch"] = traceback.format_exc(limit=3)
    return results


def test_a_kept_launch_blends_as_the_core_under_the_interpreter():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (it runs on CPUs, no GPU needed)")
    from tests.test_triton_interpreter import run_interpreted

    results = run_interpreted(__file__)
    assert results["kernel"] == "InterpretedFunction"
    assert results["kept-launch"] == "ok", results["kept-launch"]


if __name__ == "__main__":
    print(json.dumps(_run_all()))
