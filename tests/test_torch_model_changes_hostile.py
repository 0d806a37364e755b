"""The torch ``EMA`` while the user changes the model under it mid-run: submodules replaced,
tensors added or removed, dtype conversions with the ``dtype=`` and ``device=`` options,
``model.load_state_dict`` from a checkpoint, parametrizations removed and adapters injected.
Each test checks the averages against a hand-computed EMA, the bits ``swap()`` and
``copy_to`` restore or write, and the ``state_dict()`` round trip."""

from __future__ import annotations

import copy
import io

import pytest

from ema_core import Config

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402
from torch.nn.utils.parametrizations import weight_norm  # noqa: E402

from ema_core.torch import EMA  # noqa: E402
from tests.torch_models import copies, live_values, net, same  # noqa: E402


def _fill(model: nn.Module, value: float) -> None:
    """Sets every floating parameter of ``model`` to ``value`` (a stand-in for a step)."""
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def _blend(shadow: torch.Tensor, params: torch.Tensor, decay: float) -> torch.Tensor:
    """The update rule in float64: ``s + (1 - d) (p - s)``."""
    s = shadow.double()
    return s + (1.0 - decay) * (params.detach().double() - s)


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> None:
    """``actual`` within ``atol + rtol |expected|`` of ``expected`` everywhere (a light
    ``torch.testing.assert_close``, whose first call costs over a second)."""
    assert actual.shape == expected.shape
    a, b = actual.double(), expected.double()
    assert bool(((a - b).abs() <= atol + rtol * b.abs()).all()), (a - b).abs().max()


def _resumed(ema: EMA, model: nn.Module, **options: object) -> EMA:
    """A new EMA of ``model`` loaded from ``ema.state_dict()`` through ``torch.save``."""
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    twin = EMA(model, **options)
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    return twin


# ---- submodules replaced, tensors added or removed ----


def test_swap_and_copy_to_reach_a_replaced_submodule_before_any_update() -> None:
    """``model.fc = nn.Linear(...)`` (same shapes) and no update yet: ``swap()`` writes the
    averages into the new submodule's tensors and gives their own values back bit for bit;
    ``copy_to`` of another model is unaffected."""
    model = net()
    ema = EMA(model, decay=0.5, buffers="skip")
    before = copies(ema)
    model[3] = nn.Linear(6, 2)
    fresh = model[3].weight
    live = live_values(model)
    with ema.swap():
        assert model[3].weight is fresh
        assert torch.equal(model[3].weight, before["3.weight"])
        assert torch.equal(model[3].bias, before["3.bias"])
    same(live_values(model), live)
    target = net()
    _fill(target, 9.0)
    ema.copy_to(target)
    assert torch.equal(target[3].weight, before["3.weight"])
    same(copies(ema), before)


def test_a_submodule_replaced_by_one_without_bias_is_refused_until_it_has_one_again() -> None:
    """``model.fc = nn.Linear(6, 2, bias=False)``: ``update`` and ``swap`` raise a
    ``ValueError`` naming the missing tensor before any write (shadows, step and model as they
    were; ``state_dict()`` and ``copy_to`` still read the shadows); once a bias is back, the
    next update counts as the first and blends it."""
    model = net()
    ema = EMA(model, decay=0.5, buffers="skip")
    before = copies(ema)
    model[3] = nn.Linear(6, 2, bias=False)
    live = live_values(model)
    with pytest.raises(ValueError, match=r"no longer has the tracked tensor '3\.bias'"):
        ema.update()
    with pytest.raises(ValueError, match=r"'3\.bias'"), ema.swap():
        pass
    same(copies(ema), before)
    same(live_values(model), live)
    assert ema.step == 0
    same(dict(ema.state_dict()["shadow"]), before)  # the shadows stay readable
    target = net()
    ema.copy_to(target)
    assert torch.equal(target[3].bias, before["3.bias"])
    model[3].bias = nn.Parameter(torch.full((2,), 3.0))
    ema.update()
    assert ema.step == 1
    expected = _blend(before["3.bias"], model[3].bias, 0.5)
    _close(ema.average["3.bias"].double(), expected, rtol=0, atol=1e-7)


def test_a_buffer_deleted_after_construction_is_refused_by_name_and_changes_nothing() -> None:
    """``bn.running_var`` registered as ``None`` (deleted) after the EMA was built: the update
    raises a ``ValueError`` naming it, with every shadow and the step unchanged."""
    model = net()
    ema = EMA(model, decay=0.5, buffers="copy")
    before = copies(ema)
    model[1].register_buffer("running_var", None)
    with pytest.raises(ValueError, match=r"'1\.running_var'"):
        ema.update()
    same(copies(ema), before)
    assert ema.step == 0


def test_tensors_added_after_construction_are_left_alone() -> None:
    """A parameter and a buffer registered after the EMA was built are not tracked (the
    names are fixed at construction, as ``torch_ema`` fixes its parameter list): updates,
    ``swap()`` and ``state_dict()`` go on over the original names, the new tensors untouched."""
    model = net()
    ema = EMA(model, decay=0.5)
    names = ema.names
    model.extra = nn.Parameter(torch.full((2,), 5.0))
    model.register_buffer("scale", torch.full((2,), 7.0))
    ema.update()
    assert ema.names == names
    assert set(ema.state_dict()["shadow"]) == set(names)
    with ema.swap():
        assert torch.equal(model.extra, torch.full((2,), 5.0))
        assert torch.equal(model.scale, torch.full((2,), 7.0))
    assert torch.equal(model.extra, torch.full((2,), 5.0))


def test_adapters_injected_by_wrapping_a_layer_are_refused_by_the_old_name() -> None:
    """LoRA-style injection after the EMA was built (``model[0]`` wrapped, its weight now at
    ``0.base.weight``): the old name is gone, so the update is a ``ValueError`` naming
    ``0.weight`` before any write; an EMA built after the injection tracks base and adapter."""

    class _Adapted(nn.Module):
        def __init__(self, base: nn.Linear) -> None:
            super().__init__()
            self.base = base.requires_grad_(False)
            self.down = nn.Linear(base.in_features, 1, bias=False)

    model = net()
    ema = EMA(model, decay=0.5)
    before = copies(ema)
    model[0] = _Adapted(model[0])
    with pytest.raises(ValueError, match=r"'0\.weight'"):
        ema.update()
    same(copies(ema), before)
    assert {"0.base.weight", "0.down.weight"} <= set(EMA(model).names)


def test_a_replaced_submodule_of_another_dtype_gets_a_shadow_of_its_own_dtype() -> None:
    """``model[3] = nn.Linear(6, 2, dtype=torch.float64)``: only that layer's shadows widen to
    float64 (holding the float32 averages exactly) and blend there with torch's ``lerp_`` (one
    dtype in the group); the state dict loads bit
    for bit into a new EMA of the changed model."""
    model = net()
    ema = EMA(model, decay=0.5, buffers="skip")
    before = copies(ema)
    model[3] = nn.Linear(6, 2, dtype=torch.float64)
    with torch.no_grad():
        model[3].weight.fill_(1.0 / 3.0)
    ema.update()
    assert ema.average["3.weight"].dtype == torch.float64
    assert ema.average["0.weight"].dtype == torch.float32
    widened = before["3.weight"].double()
    assert torch.equal(ema.average["3.weight"], widened.lerp(model[3].weight.detach(), 0.5))
    twin = _resumed(ema, model, decay=0.5, buffers="skip")
    same(copies(twin), copies(ema))


# ---- dtype conversions with the options ----


def test_a_model_made_half_keeps_float32_shadows_that_track_the_half_values() -> None:
    """``model.half()`` after construction (default ``dtype=``): the shadows stay float32 and
    follow the float16 values widened, matching a float64 reference of the rule within
    float32 rounding over several steps; ``swap()`` restores the half values bit for bit."""
    model = net()
    ema = EMA(model, decay=0.75, buffers="skip")
    reference = {n: t.double() for n, t in copies(ema).items()}
    model.half()
    for k in range(1, 4):
        _fill(model, 0.1 * k)
        ema.update()
        for name, param in model.named_parameters():
            reference[name] = _blend(reference[name], param, 0.75)
    for name, want in reference.items():
        assert ema.average[name].dtype == torch.float32
        _close(ema.average[name].double(), want, rtol=1e-6, atol=1e-7)
    live = live_values(model)
    with ema.swap():
        assert torch.equal(model[0].weight, ema.average["0.weight"].half())
    same(live_values(model), live)


def test_a_float64_shadow_option_survives_model_half() -> None:
    """``EMA(model, dtype="float64")`` then ``model.half()``: the averaged shadows stay
    float64 and blend the float16 values exactly as the float64 rule does."""
    model = net()
    ema = EMA(model, decay=0.5, dtype="float64", buffers="skip")
    before = copies(ema)
    model.half()
    _fill(model, 1.0 / 3.0)
    ema.update()
    for name, param in model.named_parameters():
        assert ema.average[name].dtype == torch.float64
        assert torch.equal(ema.average[name], _blend(before[name], param, 0.5))


def test_a_host_shadow_follows_model_double_and_stays_on_the_cpu() -> None:
    """``EMA(model, device="cpu")`` then ``model.double()``: the shadow is rebound as float64
    on the CPU holding the float32 average exactly, then blends in float64 (torch's ``lerp_``)."""
    model = net()
    ema = EMA(model, decay=0.5, device="cpu", buffers="skip")
    before = copies(ema)
    model.double()
    _fill(model, 1.0 / 3.0)
    ema.update()
    shadow = ema.average["0.weight"]
    assert (shadow.dtype, shadow.device.type) == (torch.float64, "cpu")
    widened = before["0.weight"].double()
    assert torch.equal(shadow, widened.lerp(model[0].weight.detach(), 0.5))


def test_a_same_dtype_ema_of_a_half_model_round_trips_its_state_dict() -> None:
    """``dtype="same"`` then ``model.half()``: the shadows follow to float16, and the
    ``state_dict()`` saved after that loads bit for bit into a new ``dtype="same"`` EMA of
    the half model, whose ``swap()`` gives the same averages."""
    model = net()
    ema = EMA(model, decay=0.5, dtype="same")
    model.half()
    _fill(model, 0.25)
    ema.update()
    assert ema.average["0.weight"].dtype == torch.float16
    twin = _resumed(ema, model, decay=0.5, dtype="same")
    same(copies(twin), copies(ema))
    assert twin.step == ema.step == 1
    with twin.swap():
        assert torch.equal(model[0].weight, ema.average["0.weight"])


def test_a_checkpoint_from_before_a_conversion_is_refused_by_dtype_and_changes_nothing() -> None:
    """A ``state_dict()`` taken before ``model.double()``, loaded after it: the EMA has
    followed the model to float64 shadows, and the float32 entries are refused (README: every
    entry's dtype is checked) with a ``ValueError`` naming both dtypes, nothing loaded."""
    model = net()
    ema = EMA(model, decay=0.5)
    ema.update()
    old = copy.deepcopy(ema.state_dict())
    model.double()
    ema.update()
    before = copies(ema)
    with pytest.raises(ValueError, match=r"dtype torch\.float32.*dtype torch\.float64"):
        ema.load_state_dict(old)
    same(copies(ema), before)
    assert ema.step == 2


def test_an_interval_update_skipped_across_a_conversion_keeps_the_float32_bits() -> None:
    """``Config(0.5, interval=2)`` with ``model.half()`` between the two calls of an interval:
    the skipped call keeps every averaged bit and copies the half BatchNorm statistics; the
    gated call blends the half values into the float32 shadows."""
    model = net()
    ema = EMA(model, config=Config(0.5, interval=2, buffers="copy"))
    before = copies(ema)
    model.half()
    _fill(model, 0.5)
    ema.update()
    for name, _ in model.named_parameters():
        assert torch.equal(ema.average[name], before[name])
    assert torch.equal(ema.average["1.running_var"], model[1].running_var)
    ema.update()
    assert ema.average["0.weight"].dtype == torch.float32
    expected = _blend(before["0.weight"], model[0].weight, 0.25)
    _close(ema.average["0.weight"].double(), expected, rtol=1e-6, atol=1e-7)


def test_a_layer_frozen_then_the_model_made_bf16_is_still_averaged() -> None:
    """``model[0].requires_grad_(False)`` then ``model.bfloat16()`` mid-run: the frozen layer
    stays tracked, its float32 shadow blends its bf16 values, and ``swap()`` keeps the
    ``requires_grad`` flags and the live bits."""
    model = net()
    ema = EMA(model, decay=0.5, buffers="skip")
    before = copies(ema)
    model[0].requires_grad_(False)
    model.bfloat16()
    _fill(model, 2.0)
    ema.update()
    expected = _blend(before["0.weight"], model[0].weight, 0.5)
    _close(ema.average["0.weight"].double(), expected, rtol=1e-6, atol=1e-7)
    live = live_values(model)
    with ema.swap():
        assert not model[0].weight.requires_grad
        assert model[3].weight.requires_grad
    same(live_values(model), live)
    assert not model[0].weight.requires_grad


def test_copy_to_after_a_bf16_conversion_writes_the_float32_averages_exactly() -> None:
    """``model.bfloat16()`` with no update since: ``copy_to`` a float32 model writes the
    float32 averages bit for bit (never rounded through bf16)."""
    model = net()
    ema = EMA(model, decay=0.5, buffers="skip")
    _fill(model, 0.3)
    ema.update()
    before = copies(ema)
    model.bfloat16()
    target = net()
    ema.copy_to(target)
    assert torch.equal(target[0].weight, before["0.weight"])
    assert target[0].weight.dtype == torch.float32


# ---- model.load_state_dict mid-run ----


@pytest.mark.parametrize("assign", [False, True])
def test_model_load_state_dict_mid_run_is_averaged_from_the_loaded_values(assign: bool) -> None:
    """``model.load_state_dict(checkpoint)`` in the middle of training, in place or with
    ``assign=True`` (new tensor objects): the next update blends the loaded values into the
    kept shadows, ``swap()`` writes into the model's current tensors and restores them."""
    model = net()
    ema = EMA(model, decay=0.5, buffers="skip")
    _fill(model, 1.0)
    ema.update()
    before = copies(ema)
    checkpoint = {
        n: t.clone().fill_(4.0) if t.is_floating_point() else t.clone()
        for n, t in model.state_dict().items()
    }
    model.load_state_dict(checkpoint, assign=assign)
    ema.update()
    for name, param in model.named_parameters():
        assert torch.equal(ema.average[name], before[name].lerp(param.detach(), 0.5)), name
    current = model[0].weight
    with ema.swap():
        assert model[0].weight is current
        assert torch.equal(model[0].weight, ema.average["0.weight"])
    assert bool((model[0].weight == 4.0).all())
    twin = _resumed(ema, model, decay=0.5, buffers="skip")
    same(copies(twin), copies(ema))


# ---- parametrizations ----


def test_removing_a_parametrization_after_construction_is_refused_and_changes_nothing() -> None:
    """``parametrize.remove_parametrizations`` after the EMA was built: the originals it
    tracks are gone, so ``update`` is a ``ValueError`` naming one of them before any write,
    and the model keeps its plain weight."""
    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(3, 4)))
    ema = EMA(model, decay=0.5)
    before = copies(ema)
    parametrize.remove_parametrizations(model[0], "weight")
    live = live_values(model)
    with pytest.raises(ValueError, match=r"'0\.parametrizations\.weight\.original"):
        ema.update()
    same(copies(ema), before)
    same(live_values(model), live)


def test_a_weight_norm_model_made_bf16_averages_its_originals_and_swaps_back() -> None:
    """``parametrizations.weight_norm`` with ``model.bfloat16()`` after construction: the
    float32 shadows of ``original0``/``original1`` blend their bf16 values, and ``swap()``
    gives the computed weight of the rounded averages, then the live originals bit for bit."""
    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(3, 4)))
    ema = EMA(model, decay=0.5)
    before = copies(ema)
    model.bfloat16()
    ema.update()
    names = ("0.parametrizations.weight.original0", "0.parametrizations.weight.original1")
    for name in names:
        live_param = model.get_parameter(name)
        expected = _blend(before[name], live_param, 0.5)
        _close(ema.average[name].double(), expected, rtol=1e-6, atol=1e-7)
    live = live_values(model)
    with ema.swap():
        g, v = (ema.average[n].bfloat16() for n in names)
        want = torch._weight_norm(v, g, 0)
        _close(model[0].weight, want, rtol=0, atol=0)
    same(live_values(model), live)


def test_a_submodule_replaced_inside_swap_keeps_what_the_user_put_there() -> None:
    """``model.fc = nn.Linear(...)`` inside ``swap()``: on exit the replaced module (the one
    the swap wrote) gets its live weights back bit for bit, the new one keeps the values the
    user gave it, and the EMA is unchanged; the next update refuses nothing (same shapes)."""
    model = net()
    ema = EMA(model, decay=0.5, buffers="skip")
    _fill(model, 3.0)
    before = copies(ema)
    with ema.swap():
        replaced = model[3]
        assert torch.equal(replaced.weight, before["3.weight"])
        model[3] = nn.Linear(6, 2)
        _fill(model[3], 7.0)
    assert bool((replaced.weight == 3.0).all())
    assert bool((model[3].weight == 7.0).all())
    assert bool((model[0].weight == 3.0).all())
    same(copies(ema), before)
    ema.update()  # float32 over float32: torch's own lerp_
    assert torch.equal(ema.average["3.weight"], before["3.weight"].lerp(model[3].weight, 0.5))


def test_an_explicit_bf16_shadow_stays_bf16_when_the_model_is_made_float64() -> None:
    """``EMA(model, dtype="bfloat16")`` then ``model.double()``: an explicit shadow dtype is
    kept (only ``dtype=None``/``"same"`` follow the params), and the blend of the float64
    values lands within one bf16 rounding of the float64 rule."""
    model = net()
    ema = EMA(model, decay=0.5, dtype="bfloat16", buffers="skip")
    before = copies(ema)
    model.double()
    _fill(model, 1.0 / 3.0)
    ema.update()
    shadow = ema.average["0.weight"]
    assert shadow.dtype == torch.bfloat16
    expected = _blend(before["0.weight"], model[0].weight, 0.5).to(torch.bfloat16)
    _close(shadow, expected, rtol=2**-7, atol=0)


def test_averaged_buffers_of_a_model_made_half_stay_float32() -> None:
    """``buffers="average"`` with ``model.half()`` after construction: BatchNorm's running
    statistics keep float32 shadows that blend their float16 values, the integer counter is
    copied, and ``swap()`` restores the half statistics bit for bit."""
    model = net()
    ema = EMA(model, decay=0.5, buffers="average")
    before = copies(ema)
    model.half()
    with torch.no_grad():
        model[1].running_var.fill_(3.0)
        model[1].num_batches_tracked.fill_(5)
    ema.update()
    assert ema.average["1.running_var"].dtype == torch.float32
    expected = _blend(before["1.running_var"], model[1].running_var, 0.5)
    _close(ema.average["1.running_var"].double(), expected, rtol=0, atol=1e-7)
    assert int(ema.average["1.num_batches_tracked"]) == 5
    live = live_values(model)
    with ema.swap():
        assert model[1].running_var.dtype == torch.float16
    same(live_values(model), live)


def test_swap_inside_parametrize_cached_evaluates_the_averaged_weight() -> None:
    """Inside ``parametrize.cached()`` (torch's cache of computed weights, keyed by module
    and name as autocast keys its casts by tensor), a weight read before ``swap()`` must not
    stand for the averages inside it: ``swap()`` promises the averaged weights, and clears
    autocast's cache for the same reason (README, "Choices")."""
    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(3, 4)))
    ema = EMA(model, decay=0.5)
    _fill(model, 1.0)  # the live originals now differ from the averages
    with torch.no_grad():
        with ema.swap():
            averaged = model[0].weight.clone()
        with parametrize.cached():
            live = model[0].weight.clone()
            with ema.swap():
                inside = model[0].weight.clone()
            after = model[0].weight.clone()  # the live weight again, not the cached average
            ema.copy_to(model)
            copied = model[0].weight.clone()
    assert not torch.equal(averaged, live)
    assert torch.equal(inside, averaged) and torch.equal(after, live)
    assert torch.equal(copied, averaged)


def test_a_no_copy_swap_of_a_channels_last_model_gives_back_its_tensors_and_strides() -> None:
    """``model.to(memory_format=torch.channels_last)`` after construction, then
    ``swap(copy=False)`` with no update between: the forward inside runs on the averages, and
    on exit the model holds its own tensor objects, data pointers, strides and bits."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    ema = EMA(model, decay=0.5)
    model.to(memory_format=torch.channels_last)
    weight = model[0].weight
    pointer, strides, live = weight.data_ptr(), weight.stride(), live_values(model)
    inputs = torch.randn(1, 3, 5, 5).to(memory_format=torch.channels_last)
    with torch.no_grad():
        with ema.swap(copy=False):
            inside = model(inputs)
        want = torch.func.functional_call(model, ema.average, (inputs,))
    assert torch.equal(inside, want)
    assert model[0].weight is weight
    assert (weight.data_ptr(), weight.stride()) == (pointer, strides)
    same(live_values(model), live)


def test_a_model_sent_to_meta_then_to_empty_and_half_keeps_its_averages() -> None:
    """``model.to("meta")``, ``to_empty(device="cpu")`` and ``half()`` after construction,
    then re-initialised: the kept float32 shadows blend the new half values by the rule."""
    model = net()
    ema = EMA(model, decay=0.5, buffers="skip")
    before = copies(ema)
    model.to("meta")
    model.to_empty(device="cpu")
    model.half()
    _fill(model, 1.0)
    ema.update()
    for name, param in model.named_parameters():
        assert ema.average[name].dtype == torch.float32
        _close(ema.average[name], _blend(before[name], param, 0.5), rtol=1e-6, atol=0)


def test_a_weight_norm_model_loaded_with_assign_mid_run_is_followed() -> None:
    """``model.load_state_dict(checkpoint, assign=True)`` on a ``weight_norm`` model mid-run
    (new ``original0``/``original1`` parameters): the next update blends the loaded values
    into the kept shadows, and ``swap()`` gives the loaded originals back bit for bit."""
    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(3, 4)))
    ema = EMA(model, decay=0.5)
    before = copies(ema)
    checkpoint = {n: t.clone().fill_(2.0) for n, t in model.state_dict().items()}
    model.load_state_dict(checkpoint, assign=True)
    ema.update()
    for name, old in before.items():
        assert torch.equal(ema.average[name], old.lerp(torch.full_like(old, 2.0), 0.5)), name
    live = live_values(model)
    with ema.swap():
        pass
    same(live_values(model), live)


def test_an_ema_of_included_layers_follows_them_through_model_half() -> None:
    """``EMA(model, include="3.*")`` then ``model.half()``: only the included layer's shadows
    follow (float32 over its half values); ``swap()`` leaves the other layers as they are and
    restores every live bit."""
    model = net()
    ema = EMA(model, decay=0.5, include="3.*")
    before = copies(ema)
    model.half()
    _fill(model, 1.0)
    ema.update()
    assert set(ema.names) == {"3.weight", "3.bias"}
    _close(ema.average["3.weight"], _blend(before["3.weight"], model[3].weight, 0.5), 1e-6, 0)
    live = live_values(model)
    with ema.swap():
        assert bool((model[0].weight == 1.0).all())
        assert torch.equal(model[3].weight, ema.average["3.weight"].half())
    same(live_values(model), live)
