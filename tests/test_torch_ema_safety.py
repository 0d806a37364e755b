"""The torch ``EMA`` never loses its average: writes inside ``swap()`` never reach it,
checkpoints are checked whole before anything is loaded, and an update cut short is completed
exactly once."""

from __future__ import annotations

import contextlib
import io
import os
import signal

import pytest

from ema_core import Config, schedules

torch = pytest.importorskip("torch")

from ema_core.backends.torch import _foreach  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests.torch_models import copies, live_values, net, nudge, same  # noqa: E402

# ---- 2.3 swap never loses EMA data ----


def test_writes_inside_swap_never_reach_the_average():
    model = net()
    ema = EMA(model, decay=0.5, buffers="average")
    nudge(model, 1)
    ema.update()
    averages, live = copies(ema), live_values(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with ema.swap():
        model.train()
        loss = model(torch.randn(8, 3)).square().mean()  # BatchNorm statistics move in place
        loss.backward()
        opt.step()  # and so do the weights
        with torch.no_grad():
            model[0].weight.mul_(3.0)
    same(copies(ema), averages)
    same(live_values(model), live)


def test_swap_copy_false_detects_writes_restores_and_raises():
    model = net()
    ema = EMA(model, decay=0.5)
    nudge(model, 1)
    ema.update()
    live = live_values(model)
    with ema.swap(copy=False):  # read-only use: no error
        model.eval()
        model(torch.randn(4, 3))
    written = pytest.raises(RuntimeError, match=r"swap\(copy=False\).*'0.weight'")
    with written, ema.swap(copy=False), torch.no_grad():
        model[0].weight.mul_(2.0)
    same(live_values(model), live)
    with pytest.raises(RuntimeError, match="written") as info, ema.swap(copy=False):
        with torch.no_grad():
            model[3].bias.add_(1.0)
        raise KeyError("inside")
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(TypeError, match="copy"), ema.swap(copy="no"):
        pass


@pytest.mark.parametrize("fused", [False, True])
def test_swap_copy_false_sees_a_foreach_step_and_not_a_fused_one(fused):
    # README: the step of torch's fused optimizers leaves the version counter as it was, so
    # swap(copy=False) cannot see it (the reason it is for read-only evaluation); the default
    # swap() copies and keeps the average either way
    model = net()
    ema = EMA(model, decay=0.5)
    nudge(model, 1)
    ema.update()
    averages = copies(ema)
    kind = {"fused": True} if fused else {"foreach": True}
    opt = torch.optim.Adam(model.parameters(), lr=1.0, **kind)
    with ema.swap():
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    same(copies(ema), averages)
    model.zero_grad()
    seen = pytest.raises(RuntimeError, match=r"swap\(copy=False\)")
    with seen if not fused else contextlib.nullcontext(), ema.swap(copy=False):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    assert not torch.equal(copies(ema)["0.weight"], averages["0.weight"])


def test_swap_copy_false_copies_buffers_that_batchnorm_writes_unseen():
    """BatchNorm's kernels update running statistics without moving the version counter, so
    buffers are never aliased: a train-mode forward inside swap(copy=False) leaves them."""
    model = net()
    ema = EMA(model, decay=0.5, buffers="average")
    nudge(model, 1)
    ema.update()
    averages, live = copies(ema), live_values(model)
    with ema.swap(copy=False):
        model.train()
        model(torch.randn(8, 3))
    same(copies(ema), averages)
    same(live_values(model), live)


# ---- 2.7 load_state_dict checks everything first; any integer counter round-trips ----


def _good_state(ema):
    state = ema.state_dict()
    return dict(state, shadow=dict(state["shadow"]))


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"step": torch.tensor(-1)}, ValueError, "step"),
        ({"step": torch.tensor(1, device="meta")}, ValueError, "step"),
        ({"step": torch.tensor(True)}, TypeError, "step"),
        ({"weight": torch.tensor(float("nan"), dtype=torch.float64)}, ValueError, "weight"),
        ({"weight": torch.tensor(float("inf"), dtype=torch.float64)}, ValueError, "weight"),
        ({"weight": torch.tensor(1.5, dtype=torch.float64)}, ValueError, "weight"),
        ({"config": 3}, TypeError, "config"),
        ("meta", ValueError, "dense tensor with data"),
        ("sparse", ValueError, "dense tensor with data"),
    ],
)
def test_load_state_dict_rejects_bad_entries_and_writes_nothing(change, error, words):
    model = net()
    ema = EMA(model, decay=0.5)
    state = _good_state(ema)
    nudge(model, 1)
    ema.update()
    before, step = copies(ema), ema.step
    if change in ("meta", "sparse"):  # the last entry is broken: the others come first
        name = ema.names[-1]
        good = state["shadow"][name]
        bad = torch.empty_like(good, device="meta") if change == "meta" else good.to_sparse()
        state["shadow"][name] = bad
    else:
        state.update(change)
    with pytest.raises(error, match=words):
        ema.load_state_dict(state)
    same(copies(ema), before)
    assert ema.step == step


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int64])
def test_an_ema_stepped_with_a_small_integer_tensor_loads_its_own_checkpoint(dtype):
    model = net()
    ema = EMA(model, config=Config(schedule=schedules.warmup(0.99), init="copy", buffers="copy"))
    for k in range(1, 4):
        nudge(model, k)
        ema.update(torch.tensor(k, dtype=dtype))
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    again = EMA(net(), config=ema.config)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert int(again.step) == 3
    same(copies(again), copies(ema))


# ---- 2.8 an interrupted update is completed, never applied twice ----


def _two_groups():
    """float32 and float64 tensors: two fused lerp groups (and an integer copy group)."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    model[1].double()
    return model


def _cut_second_lerp(monkeypatch, error=KeyboardInterrupt):
    calls = []
    original = _foreach.lerp_

    def lerp_(*args):
        calls.append(1)
        if len(calls) == 2:
            raise error("cut")
        return original(*args)

    monkeypatch.setattr(_foreach, "lerp_", lerp_)
    return lambda: monkeypatch.setattr(_foreach, "lerp_", original)


@pytest.mark.parametrize("retry", ["update()", "same step", "next step", "state_dict"])
def test_an_update_cut_short_is_completed_without_applying_a_group_twice(monkeypatch, retry):
    config = Config(schedule=0.75, buffers="average")
    model, twin = _two_groups(), _two_groups()
    ema, reference = EMA(model, config=config), EMA(twin, config=config)
    for m in (model, twin):
        nudge(m, 1)
    reference.update(1)
    restore = _cut_second_lerp(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        ema.update(1)
    restore()
    assert ema.step == 0
    if retry == "update()":
        ema.update()
    elif retry == "same step":
        ema.update(1)
    elif retry == "state_dict":
        assert int(ema.state_dict()["step"]) == 1
    else:  # finishes step 1 (with the params as they are now), then applies step 2
        ema.update(2)
        reference.update(2)
    assert ema.step == reference.step
    same(copies(ema), copies(reference))


def test_ctrl_c_during_an_update_is_delivered_once_the_update_is_complete(monkeypatch):
    model, twin = _two_groups(), _two_groups()
    ema, reference = EMA(model, decay=0.75), EMA(twin, decay=0.75)
    original = _foreach.lerp_
    calls = []

    def lerp_(*args):
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first group runs
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(_foreach, "lerp_", lerp_)
    for m in (model, twin):
        nudge(m, 1)
    with pytest.raises(KeyboardInterrupt):
        ema.update()
    monkeypatch.setattr(_foreach, "lerp_", original)
    reference.update()
    assert len(calls) == 2 and ema.step == 1
    same(copies(ema), copies(reference))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
