"""Issue 13 hardening of the torch ``EMA``: swap never loses EMA data, checkpoints are checked
whole, an interrupted update is completed exactly once, replaced or converted tensors are
followed by name, and the smaller items (copy_to, compiled names, lambda schedules, stepping
back, counter overflow)."""

from __future__ import annotations

import io
import os
import signal

import pytest

from ema_core import Config, schedules
from ema_core.backends.torch import EMA, _foreach
from ema_core.backends.torch._names import strip

torch = pytest.importorskip("torch")


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 2)
    )


def _nudge(model, k):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.125 * k)


def _copies(ema):
    return {n: t.clone() for n, t in ema.average.items()}


def _same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def _live(model):
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


# ---- 2.3 swap never loses EMA data ----


def test_writes_inside_swap_never_reach_the_average():
    model = _net()
    ema = EMA(model, decay=0.5, buffers="average")
    _nudge(model, 1)
    ema.update()
    averages, live = _copies(ema), _live(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with ema.swap():
        model.train()
        loss = model(torch.randn(8, 3)).square().mean()  # BatchNorm statistics move in place
        loss.backward()
        opt.step()  # and so do the weights
        with torch.no_grad():
            model[0].weight.mul_(3.0)
    _same(_copies(ema), averages)
    _same(_live(model), live)


def test_swap_copy_false_detects_writes_restores_and_raises():
    model = _net()
    ema = EMA(model, decay=0.5)
    _nudge(model, 1)
    ema.update()
    live = _live(model)
    with ema.swap(copy=False):  # read-only use: no error
        model.eval()
        model(torch.randn(4, 3))
    written = pytest.raises(RuntimeError, match=r"swap\(copy=False\).*'0.weight'")
    with written, ema.swap(copy=False), torch.no_grad():
        model[0].weight.mul_(2.0)
    _same(_live(model), live)
    with pytest.raises(RuntimeError, match="written") as info, ema.swap(copy=False):
        with torch.no_grad():
            model[3].bias.add_(1.0)
        raise KeyError("inside")
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(TypeError, match="copy"), ema.swap(copy="no"):
        pass


def test_swap_copy_false_copies_buffers_that_batchnorm_writes_unseen():
    """BatchNorm's kernels update running statistics without moving the version counter, so
    buffers are never aliased: a train-mode forward inside swap(copy=False) leaves them."""
    model = _net()
    ema = EMA(model, decay=0.5, buffers="average")
    _nudge(model, 1)
    ema.update()
    averages, live = _copies(ema), _live(model)
    with ema.swap(copy=False):
        model.train()
        model(torch.randn(8, 3))
    _same(_copies(ema), averages)
    _same(_live(model), live)


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
    model = _net()
    ema = EMA(model, decay=0.5)
    state = _good_state(ema)
    _nudge(model, 1)
    ema.update()
    before, step = _copies(ema), ema.step
    if change in ("meta", "sparse"):  # the last entry is broken: the others come first
        name = ema.names[-1]
        good = state["shadow"][name]
        bad = torch.empty_like(good, device="meta") if change == "meta" else good.to_sparse()
        state["shadow"][name] = bad
    else:
        state.update(change)
    with pytest.raises(error, match=words):
        ema.load_state_dict(state)
    _same(_copies(ema), before)
    assert ema.step == step


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int64])
def test_an_ema_stepped_with_a_small_integer_tensor_loads_its_own_checkpoint(dtype):
    model = _net()
    ema = EMA(model, config=Config(schedule=schedules.warmup(0.99), init="copy", buffers="copy"))
    for k in range(1, 4):
        _nudge(model, k)
        ema.update(torch.tensor(k, dtype=dtype))
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    again = EMA(_net(), config=ema.config)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert int(again.step) == 3
    _same(_copies(again), _copies(ema))


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
        _nudge(m, 1)
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
    _same(_copies(ema), _copies(reference))


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
        _nudge(m, 1)
    with pytest.raises(KeyboardInterrupt):
        ema.update()
    monkeypatch.setattr(_foreach, "lerp_", original)
    reference.update()
    assert len(calls) == 2 and ema.step == 1
    _same(_copies(ema), _copies(reference))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---- 2.9 replaced, converted or meta tensors ----


def test_a_replaced_parameter_is_followed_by_name():
    model = _net()
    ema = EMA(model, decay=0.5, buffers="skip")
    old = ema.average["0.weight"].clone()
    model[0].weight = torch.nn.Parameter(torch.full((6, 3), 4.0))
    ema.update()
    assert torch.equal(ema.average["0.weight"], old.lerp(torch.full_like(old, 4.0), 0.5))
    model[3] = torch.nn.Linear(6, 2)  # a replaced submodule too
    with torch.no_grad():
        model[3].bias.fill_(2.0)
    bias = ema.average["3.bias"].clone()
    ema.update()
    assert torch.equal(ema.average["3.bias"], bias.lerp(torch.full_like(bias, 2.0), 0.5))
    with ema.swap():
        assert torch.equal(model[0].weight, ema.average["0.weight"])
    assert bool((model[0].weight == 4.0).all())


@pytest.mark.parametrize(
    ("convert", "dtype", "want"),
    [
        (lambda m: m.to(torch.float64), None, torch.float64),
        (lambda m: m.to(torch.bfloat16), None, torch.float32),
        (lambda m: m.half(), "same", torch.float16),
    ],
)
def test_a_model_converted_after_the_ema_was_built_is_followed(convert, dtype, want):
    model = _net()
    ema = EMA(model, decay=0.5, dtype=dtype)
    before = _copies(ema)
    convert(model)
    ema.update()
    weight = model[0].weight
    expected = before["0.weight"].to(want) + 0.5 * (weight.to(want) - before["0.weight"].to(want))
    assert ema.average["0.weight"].dtype == want
    torch.testing.assert_close(ema.average["0.weight"], expected, rtol=0, atol=1e-3)
    with ema.swap():
        assert model[0].weight.dtype == weight.dtype
    assert int(ema.state_dict()["step"]) == 1


def test_tensors_without_data_or_of_another_shape_are_refused_before_any_write():
    with torch.device("meta"):
        meta = _net()
    with pytest.raises(ValueError, match="meta device"):
        EMA(meta)
    model = _net()
    ema = EMA(model, decay=0.5)
    before = _copies(ema)
    model[0].bias.data = torch.ones(16)  # resized behind the EMA's back
    with pytest.raises(ValueError, match=r"'0.bias' has shape \(16,\)"):
        ema.update()
    model[0].bias.data = torch.ones(6)
    model.to("meta")
    with pytest.raises(ValueError, match="meta device"):
        ema.update()
    del model[0].weight
    with pytest.raises(ValueError, match="no longer has"):
        ema.update()
    _same(_copies(ema), before)


def test_a_view_that_keeps_the_pointer_but_not_the_shape_is_refused_before_any_write():
    """``param.data = param.data[:k]`` keeps the data pointer: the shape tells."""
    model = _net()
    ema = EMA(model, decay=0.5)
    before = _copies(ema)
    model[3].weight.data = model[3].weight.data[:1]  # the last tensor, after the others
    with pytest.raises(ValueError, match=r"'3.weight' has shape \(1, 6\)"):
        ema.update()
    _same(_copies(ema), before)


def test_to_empty_then_initialization_keeps_averaging_the_new_storage():
    model = _net()
    ema = EMA(model, decay=0.5, buffers="skip")
    old = ema.average["0.weight"].clone()
    model.to_empty(device="cpu")
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    ema.update()
    assert torch.equal(ema.average["0.weight"], old.lerp(torch.full_like(old, 2.0), 0.5))


# ---- 2.13 the smaller ones ----


def test_copy_to_refuses_lossy_or_unwritable_targets_and_writes_nothing():
    model = _net()
    ema = EMA(model, decay=0.5, buffers="skip")
    names = ema.names

    def targets(**changes):
        out = {n: torch.zeros_like(t) for n, t in ema.average.items()}
        out.update(changes)
        return out

    last = names[-1]
    shape = ema.average[last].shape
    with torch.inference_mode():
        frozen = torch.zeros(shape)
    cases = [
        (targets(**{last: torch.zeros(shape, dtype=torch.int32)}), TypeError, "dtype"),
        (targets(**{last: torch.zeros(shape, device="meta")}), ValueError, "writable"),
        (targets(**{last: frozen}), ValueError, "writable"),
        (targets(**{last: torch.zeros(1).expand(shape)}), ValueError, "writable"),
    ]
    for target, error, words in cases:
        with pytest.raises(error, match=words):
            ema.copy_to(target)
        assert not any(bool(target[n].any()) for n in names[:-1])  # nothing written before
    ok = targets(**{last: torch.zeros(shape, dtype=torch.float64)})
    ema.copy_to(ok)
    assert torch.equal(ok[last], ema.average[last].double())


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_compiled_submodule_keeps_the_plain_names():
    model = _net()
    plain = EMA(_net()).names
    model[0] = torch.compile(model[0])
    assert EMA(model).names == plain
    assert strip("encoder._orig_mod.0.weight") == "encoder.0.weight"
    assert strip("_orig_mod.module.encoder._orig_mod.module.w") == "encoder.module.w"


def _with_lambda():
    return EMA(_net(), schedule=lambda t: 0.5)


def test_a_lambda_schedule_loads_strictly_from_the_same_source():
    first, second = _with_lambda(), _with_lambda()
    first.update()
    second.load_state_dict(first.state_dict())
    assert second.step == 1
    old = first.state_dict()
    old["config"] = old["config"].replace("<lambda>>", "<lambda> at 0x7f00deadbeef>")
    second.load_state_dict(old)  # a checkpoint written with the address loads too
    other = EMA(_net(), schedule=lambda t: 0.25)  # another lambda (other qualified name)
    other_text = other.state_dict()["config"]
    assert "0x" not in other_text
    assert ("test_a_lambda_schedule_loads" in other_text) != ("_with_lambda" in other_text)
    with pytest.raises(ValueError, match="config"):
        other.load_state_dict(first.state_dict())


def test_an_explicit_step_below_the_ema_s_is_refused():
    model = _net()
    ema = EMA(model, config=Config(schedule=0.9, init="copy"))
    for k in range(1, 6):
        _nudge(model, k)
        ema.update(k)
    before = _copies(ema)
    _nudge(model, 9)
    for back in (1, torch.tensor(4)):
        with pytest.raises(ValueError, match=r"step=. is below this EMA's step 5"):
            ema.update(back)
    _same(_copies(ema), before)
    ema.update(5)  # the same step again is allowed
    assert ema.step == 5


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
def test_a_tensor_counter_stops_at_its_largest_value(dtype):
    model = _net()
    ema = EMA(model, config=Config(schedule=schedules.warmup(0.999), init="copy"))
    top = torch.iinfo(dtype).max
    ema.update(torch.tensor(top - 1, dtype=dtype))
    for _ in range(3):
        _nudge(model, 1)
        ema.update()
        assert ema.step.dtype == dtype and int(ema.step) == top
    assert all(bool(t.isfinite().all()) for t in ema.average.values())
