"""Hostile but realistic torch inputs, on the CPU: tensors whose memory is freed, grown or
reinterpreted between updates must be averaged exactly (bit-equal to ``_core.blend``) or
refused with a ``ValueError`` naming the tensor, with nothing written."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import array_api_compat.torch as xp  # noqa: E402

import ema_core as ema  # noqa: E402
from ema_core import _core  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

pytestmark = pytest.mark.usefixtures("host_kernels")


def _blend(shadow, params, decay):
    return _core.blend(xp, shadow.clone(), params, decay, 1.0 - decay)


def _tables(n=6, k=16, dtype=None):
    """Small bf16 leaves: they go through the host engine's batched table."""
    dtype = torch.bfloat16 if dtype is None else dtype
    return torch.nn.ParameterList(
        [torch.nn.Parameter(torch.randn(k, k).to(dtype)) for _ in range(n)]
    )


def _snapshot(ema_):
    return {name: value.clone() for name, value in ema_.average.items()}


def _same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def test_params_whose_storage_was_freed_are_refused_by_name():
    model = _tables()
    average = EMA(model, decay=0.5)
    average.update()
    before = _snapshot(average)
    model[2].untyped_storage().resize_(0)  # as FSDP1 frees unsharded params
    with pytest.raises(ValueError, match=r"'2'.*storage.*0 bytes"):
        average.update()
    _same(_snapshot(average), before)


def test_stateless_params_whose_storage_was_freed_are_refused():
    params = [torch.randn(64).bfloat16() for _ in range(3)]
    shadows = [torch.zeros(64) for _ in range(3)]
    params[1].untyped_storage().resize_(0)
    with pytest.raises(ValueError, match=r"params\[1\]: .*storage.*0 bytes"):
        ema.ema_update(shadows, params, 1, decay=0.5)
    assert all(not s.any() for s in shadows)


def test_bf16_params_reinterpreted_as_fp16_are_followed_with_dtype_same():
    model = _tables()
    average = EMA(model, decay=0.5, dtype="same")
    average.update()
    before = _snapshot(average)
    model[2].data = model[2].data.view(torch.float16)  # same memory, same shape, new dtype
    average.update()
    after = average.average
    for i, p in enumerate(model):
        name = str(i)
        assert after[name].dtype == p.dtype
        assert torch.equal(after[name], _blend(before[name].to(p.dtype), p.detach(), 0.5))


def test_params_stay_resizable_after_host_engine_updates():
    model = _tables()
    average = EMA(model, decay=0.5)
    average.update()
    before = _snapshot(average)
    with torch.no_grad():
        model[1].requires_grad_(False)
        model[1].resize_(32, 32)  # grows its storage: torch alone allows it
    with pytest.raises(ValueError, match=r"'1'.*\(32, 32\)"):
        average.update()
    _same(_snapshot(average), before)


def test_stateless_cached_params_in_a_grown_buffer_are_read_where_they_are_now():
    n, k = 8, 64
    flat = torch.randn(n * k).bfloat16()
    params = [flat[i * k : (i + 1) * k] for i in range(n)]
    shadows = [torch.zeros(k) for _ in range(n)]
    for step in (1, 2, 3):  # the plan cache keeps an entry from the second call
        shadows = ema.ema_update(shadows, params, step, decay=0.5)
    flat.resize_(n * k * 64)  # the storage moves; the views keep their offsets and sizes
    junk = [torch.full((n * k * 8,), 7.0) for _ in range(20)]  # may reuse the freed memory
    with torch.no_grad():
        flat[: n * k].fill_(1.0)
    before = [s.clone() for s in shadows]
    shadows = ema.ema_update(shadows, params, 4, decay=0.5)
    for s, p, old in zip(shadows, params, before, strict=True):
        assert torch.equal(s, _blend(old, p, 0.5))
    assert len(junk) == 20


def test_a_host_engine_update_is_seen_by_autograd_as_an_in_place_write():
    """torch's fused route bumps the shadows' version counters; the host engine writes through
    numpy views and must bump them too, or a graph that saved an average computes a silently
    wrong gradient from the updated values instead of raising."""
    model = torch.nn.Linear(4, 1, bias=False).bfloat16()  # a float32 shadow: the host engine
    average = EMA(model, decay=0.5)
    x = torch.ones(4, requires_grad=True)
    loss = (x * average.average["weight"]).sum()  # saves the shadow for backward
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_stateless_host_engine_update_bumps_the_shadows_versions():
    params = [torch.randn(8).bfloat16() for _ in range(3)]
    shadows = [torch.zeros(8) for _ in range(3)]
    for step in (1, 2, 3):  # the third call runs over the cached plan
        versions = [s._version for s in shadows]
        shadows = ema.ema_update(shadows, params, step, decay=0.5)
        assert all(s._version > v for s, v in zip(shadows, versions, strict=True))
    versions = [s._version for s in shadows]
    ema.ema_update(shadows, params, 4, decay=1.0)  # decay 1 writes nothing
    assert [s._version for s in shadows] == versions


def test_copy_to_refuses_a_target_whose_storage_was_freed_before_any_write():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).bfloat16()
    average = EMA(model, decay=0.5)
    target = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).half()
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    target[1].weight.untyped_storage().resize_(0)
    with pytest.raises(ValueError, match=r"'1.weight'.*storage holds 0 bytes"):
        average.copy_to(target)
    for name, p in target.named_parameters():
        if name != "1.weight":
            assert torch.equal(p.detach(), before[name]), name


def test_load_state_dict_refuses_a_shadow_whose_storage_was_freed():
    """torch's own ``copy_`` from such a tensor reads unowned memory (it crashed the process)."""
    model = torch.nn.Linear(4, 4).bfloat16()
    average = EMA(model, decay=0.5)
    state = average.state_dict()
    freed = state["shadow"]["weight"].clone()
    freed.untyped_storage().resize_(0)
    state["shadow"] = {"bias": state["shadow"]["bias"] + 1, "weight": freed}
    before = _snapshot(average)
    with pytest.raises(ValueError, match=r"\['weight'\].*storage holds 0 bytes"):
        average.load_state_dict(state)
    _same(_snapshot(average), before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shadow_dtype", [None, "same"])
def test_a_freed_tensor_is_refused_on_every_route(dtype, shadow_dtype):
    """fp32 and fp16-over-fp16 models take torch's fused lerp, whose ``_foreach_lerp_`` reads
    a freed storage (it crashed the process): the EMA names the tensor first."""
    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(3)]).to(dtype)
    average = EMA(model, decay=0.5, dtype=shadow_dtype)
    average.update()
    before = _snapshot(average)
    model[1].weight.untyped_storage().resize_(0)
    with pytest.raises(ValueError, match=r"'1.weight'.*storage holds 0 bytes"):
        average.update()
    _same(_snapshot(average), before)


@pytest.mark.parametrize("freed", ["shadow", "params"])
@pytest.mark.parametrize("copy", [None, True])
def test_stateless_fused_route_refuses_a_freed_tensor(freed, copy):
    params = [torch.randn(8) for _ in range(3)]
    shadows = [torch.zeros(8) for _ in range(3)]
    for step in (1, 2):  # the second call keeps a cache entry
        shadows = ema.ema_update(shadows, params, step, decay=0.5, copy=copy)
    before = [s.clone() for s in shadows]
    (shadows if freed == "shadow" else params)[1].untyped_storage().resize_(0)
    with pytest.raises(ValueError, match=rf"{freed}\[1\]: its storage holds 0 bytes"):
        ema.ema_update(shadows, params, 3, decay=0.5, copy=copy)
    for i in (0, 2):
        assert torch.equal(shadows[i], before[i])
