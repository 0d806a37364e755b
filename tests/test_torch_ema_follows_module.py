"""The torch ``EMA`` follows its module: replaced, converted or resized tensors are found by
name (or refused before any write), and the smaller contracts: ``copy_to`` targets, compiled
names, lambda schedules in checkpoints, steps that go back, counters that saturate."""

from __future__ import annotations

import pytest

from ema_core import Config, schedules

torch = pytest.importorskip("torch")

from ema_core.torch import EMA  # noqa: E402
from ema_core.torch._prefixes import drop_compiled, strip_all  # noqa: E402
from tests.torch_models import copies, net, nudge, same  # noqa: E402

# ---- 2.9 replaced, converted or meta tensors ----


def test_a_replaced_parameter_is_followed_by_name():
    model = net()
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
    model = net()
    ema = EMA(model, decay=0.5, dtype=dtype)
    before = copies(ema)
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
        meta = net()
    with pytest.raises(ValueError, match="meta device"):
        EMA(meta)
    model = net()
    ema = EMA(model, decay=0.5)
    before = copies(ema)
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
    same(copies(ema), before)


def test_a_view_that_keeps_the_pointer_but_not_the_shape_is_refused_before_any_write():
    """``param.data = param.data[:k]`` keeps the data pointer: the shape tells."""
    model = net()
    ema = EMA(model, decay=0.5)
    before = copies(ema)
    model[3].weight.data = model[3].weight.data[:1]  # the last tensor, after the others
    with pytest.raises(ValueError, match=r"'3.weight' has shape \(1, 6\)"):
        ema.update()
    same(copies(ema), before)


def test_to_empty_then_initialization_keeps_averaging_the_new_storage():
    model = net()
    ema = EMA(model, decay=0.5, buffers="skip")
    old = ema.average["0.weight"].clone()
    model.to_empty(device="cpu")
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    ema.update()
    assert torch.equal(ema.average["0.weight"], old.lerp(torch.full_like(old, 2.0), 0.5))


# ---- 2.13 the smaller ones ----


def test_copy_to_refuses_lossy_or_unwritable_targets_and_writes_nothing():
    model = net()
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
    model = net()
    plain = EMA(net()).names
    model[0] = torch.compile(model[0])
    assert EMA(model).names == plain
    assert drop_compiled("encoder._orig_mod.0.weight") == "encoder.0.weight"
    assert strip_all(["_orig_mod.module.encoder._orig_mod.module.w"]) == ["encoder.module.w"]


def _with_lambda():
    return EMA(net(), schedule=lambda t: 0.5)


def test_a_lambda_schedule_loads_strictly_from_the_same_source():
    first, second = _with_lambda(), _with_lambda()
    first.update()
    second.load_state_dict(first.state_dict())
    assert second.step == 1
    old = first.state_dict()
    old["config"] = old["config"].replace("<lambda>>", "<lambda> at 0x7f00deadbeef>")
    second.load_state_dict(old)  # a checkpoint written with the address loads too
    other = EMA(net(), schedule=lambda t: 0.25)  # another lambda (other qualified name)
    other_text = other.state_dict()["config"]
    assert "0x" not in other_text
    assert ("test_a_lambda_schedule_loads" in other_text) != ("_with_lambda" in other_text)
    with pytest.raises(ValueError, match="config"):
        other.load_state_dict(first.state_dict())


def test_an_explicit_step_below_the_ema_s_is_refused():
    model = net()
    ema = EMA(model, config=Config(schedule=0.9, init="copy"))
    for k in range(1, 6):
        nudge(model, k)
        ema.update(k)
    before = copies(ema)
    nudge(model, 9)
    for back in (1, torch.tensor(4)):
        with pytest.raises(ValueError, match=r"step=. is below this EMA's step 5"):
            ema.update(back)
    same(copies(ema), before)
    ema.update(5)  # the same step again is allowed
    assert ema.step == 5


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
def test_a_tensor_counter_stops_at_its_largest_value(dtype):
    model = net()
    ema = EMA(model, config=Config(schedule=schedules.warmup(0.999), init="copy"))
    top = torch.iinfo(dtype).max
    ema.update(torch.tensor(top - 1, dtype=dtype))
    for _ in range(3):
        nudge(model, 1)
        ema.update()
        assert ema.step.dtype == dtype and int(ema.step) == top
    assert all(bool(t.isfinite().all()) for t in ema.average.values())
