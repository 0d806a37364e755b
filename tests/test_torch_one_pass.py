"""The torch ``EMA`` on the host-engine route looks at its tensors once per update: the
module's watch also vouches for the engine's views (``_watch.Watch``), so the views' own
comparison (``_host.stale``) is skipped, and every change it used to catch is still caught:
averaged bit-equal to ``_core.blend`` or refused by name with nothing written."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import array_api_compat.torch as xp  # noqa: E402

import ema_core.backends.torch._host as _host  # noqa: E402
from ema_core import _core, schedules  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

pytestmark = pytest.mark.usefixtures("host_kernels")


def _model(n=4, k=8):
    """Small bf16 square leaves: float32 shadows, the host engine."""
    return torch.nn.ParameterList(
        [torch.nn.Parameter(torch.randn(k, k).bfloat16()) for _ in range(n)]
    )


def _expected(average, model, decay):
    return {
        name: _core.blend(xp, s.clone(), p.detach(), decay, 1.0 - decay)
        for (name, s), p in zip(average.average.items(), model.parameters(), strict=True)
    }


def _assert_equal(average, want):
    for name, value in average.average.items():
        assert torch.equal(value, want[name]), name


def _bump(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)


def _count_stale(monkeypatch):
    calls = []
    real = _host.stale

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(_host, "stale", counted)
    return calls


def test_an_unchanged_model_is_looked_at_once_per_update(monkeypatch):
    model = _model()
    average = EMA(model, decay=0.5)
    average.update()  # binds the views
    calls = _count_stale(monkeypatch)
    for _ in range(3):
        _bump(model)
        want = _expected(average, model, 0.5)
        average.update()
        _assert_equal(average, want)
    assert calls == []


@pytest.mark.parametrize("where", ["params", "shadow"])
def test_a_transposed_tensor_over_the_same_memory_is_followed(where):
    """``t.data = t.data.t()`` keeps the pointer, shape and dtype: only the layout tells the
    engine's views (made for the old strides) that they no longer fit."""
    model = _model()
    average = EMA(model, decay=0.5)
    average.update()
    _bump(model)
    target = model[1] if where == "params" else average.average["1"]
    target.data = target.data.t()
    want = _expected(average, model, 0.5)
    average.update()
    _assert_equal(average, want)


def _refused(average, match):
    """``update()`` raises ``ValueError`` matching ``match`` and writes no shadow."""
    before = {n: v.clone() for n, v in average.average.items() if v.untyped_storage().nbytes()}
    with pytest.raises(ValueError, match=match):
        average.update()
    for name, value in before.items():
        assert torch.equal(average.average[name], value), name


def test_a_shadow_whose_storage_was_freed_is_refused_at_every_update():
    model = _model()
    average = EMA(model, decay=0.5)
    average.update()
    shadow = average.average["2"]
    shadow.untyped_storage().resize_(0)
    for _ in range(2):  # the second look finds the watch's new baseline: still refused
        _refused(average, r"shadow \['2'\].*storage holds 0 bytes")
    shadow.untyped_storage().resize_(shadow.numel() * 4)  # memory again (its values lost)
    shadow.zero_()
    _bump(model)
    want = _expected(average, model, 0.5)
    average.update()
    _assert_equal(average, want)


def test_a_shadow_narrowed_over_the_same_memory_is_refused():
    model = _model()
    average = EMA(model, decay=0.5)
    average.update()
    shadow = average.average["0"]
    shadow.data = shadow.data.view(-1)[:16].view(4, 4)  # the same pointer, fewer elements
    _refused(average, r"shape \(8, 8\).*shape \(4, 4\)")


def test_a_change_during_a_skipped_update_is_seen_at_the_next_blend():
    """Decay 1 (an ``every`` gate) binds no views: the change the watch saw then must still
    reach the views at the next update that blends."""
    model = _model()
    average = EMA(model, schedule=schedules.every(0.5, 2))
    average.update(2)  # blends: views bound
    model[3].data = model[3].data.t()
    average.update(3)  # decay 1: the averaged tensors skip
    _bump(model)
    decay = schedules.every(0.5, 2)(4)
    want = _expected(average, model, decay)
    average.update(4)
    _assert_equal(average, want)


def test_a_replacement_sharing_the_memory_then_changed_is_followed():
    """The module holds another object over the same memory (not the one the views were
    made from): the views are compared as before, and dropped once the module holds the
    watched objects again."""
    model = _model()
    average = EMA(model, decay=0.5)
    average.update()
    old = model[0]
    model[0] = torch.nn.Parameter(old.detach())  # same pointer, shape, dtype
    _bump(model)
    want = _expected(average, model, 0.5)
    average.update()
    _assert_equal(average, want)
    model[0] = old
    old.data = old.data.t()  # the watched object, transposed over its memory
    _bump(model)
    want = _expected(average, model, 0.5)
    average.update()
    _assert_equal(average, want)


def test_views_bound_while_the_module_held_another_object_are_not_trusted_later():
    """Views made again (by the store's own comparison) while the module held a replacement
    are not what the watch saw: once the module holds the watched object again, with the
    layout the watch knows, they are made again rather than trusted."""
    model = _model()
    average = EMA(model, decay=0.5)
    average.update()
    old = model[0]
    model[0] = torch.nn.Parameter(old.detach())
    old.data = old.data.t()  # the views follow the object they were made from
    average.update()
    old.data = old.data.t()  # back to the layout the watch knows
    model[0] = old
    _bump(model)
    want = _expected(average, model, 0.5)
    average.update()
    _assert_equal(average, want)
