"""The torch ``EMA`` (and ``EMABank``, and the stateless ``ema_update``) on models as users
build them: tied weights, parametrizations, spectral norm, frozen bases with adapters, lazy
modules, non-contiguous and channels_last params, parameters over one storage, buffers of
every kind, compiled and DDP-style wrappers, other dtypes and gradient checkpointing."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

import ema_core
from ema_core import checkpoint

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402
from torch.nn.utils.parametrizations import orthogonal, weight_norm  # noqa: E402

from ema_core.torch import EMA, EMABank  # noqa: E402
from tests.torch_models import TiedEmbedding, copies, same  # noqa: E402


def _tied() -> TiedEmbedding:
    torch.manual_seed(0)
    return TiedEmbedding(vocab=5, width=3)


def _fill(tensor: torch.Tensor, value: float) -> None:
    with torch.no_grad():
        tensor.fill_(value)


def _lerp(old: torch.Tensor, new: torch.Tensor, decay: float) -> torch.Tensor:
    """One update of a shadow ``old`` toward ``new`` as the README's "Choices" say it runs on
    the CPU: torch's fused ``lerp`` when both have one dtype, else the core's arithmetic step
    by step, ``old + (1 - d) * (new - old)`` in the shadow's dtype (the host engine)."""
    if old.dtype == new.dtype:
        return old.lerp(new, 1.0 - decay)
    return old + (1.0 - decay) * (new.to(old.dtype) - old)


# ---- tied weights and modules registered twice ----


def test_tied_embedding_and_head_are_one_average_swapped_into_both_names() -> None:
    """A weight shared by the embedding and the head is tracked once (its first name), and
    ``swap()`` puts the average into the one tensor both modules hold, then the live bits."""
    model = _tied()
    ema = EMA(model, decay=0.5)
    assert ema.names == ("emb.weight",)
    old = ema.average["emb.weight"].clone()
    _fill(model.emb.weight, 2.0)
    ema.update()
    average = ema.average["emb.weight"]
    assert torch.equal(average, _lerp(old, torch.full_like(old, 2.0), 0.5))
    with ema.swap():
        assert model.out.weight is model.emb.weight
        assert torch.equal(model.out.weight, average)
    assert bool((model.out.weight == 2.0).all())


def test_tied_averages_reach_both_names_by_copy_to_and_export() -> None:
    """``copy_to`` a second tied model fills the head through the tie, and
    ``export(format="state_dict")`` writes the average under both names, loading strictly."""
    model = _tied()
    ema = EMA(model, decay=0.5)
    _fill(model.emb.weight, 2.0)
    ema.update()
    other = _tied()
    _fill(other.emb.weight, -1.0)
    ema.copy_to(other)
    assert torch.equal(other.out.weight, ema.average["emb.weight"])
    exported = checkpoint.export(ema, format="state_dict")
    assert sorted(exported) == ["emb.weight", "out.weight"]
    assert torch.equal(exported["out.weight"], ema.average["emb.weight"])
    fresh = _tied()
    fresh.load_state_dict(exported)  # strict
    assert torch.equal(fresh.out.weight, ema.average["emb.weight"])


def test_a_tied_model_converted_to_bf16_after_construction_is_followed() -> None:
    """``model.to(torch.bfloat16)`` keeps the tie; the EMA follows the converted weight by
    name (a float32 shadow, the host engine's arithmetic) and swaps into both names."""
    model = _tied()
    ema = EMA(model, decay=0.5)
    old = ema.average["emb.weight"].clone()
    model.to(torch.bfloat16)
    assert model.out.weight is model.emb.weight
    ema.update()
    assert ema.average["emb.weight"].dtype == torch.float32
    assert torch.equal(ema.average["emb.weight"], _lerp(old, model.emb.weight.detach(), 0.5))
    with ema.swap():
        assert torch.equal(model.out.weight, ema.average["emb.weight"].to(torch.bfloat16))


def test_a_module_registered_twice_is_tracked_once_under_its_first_name() -> None:
    """``nn.Sequential(lin, lin)`` holds one Linear under two names: one shadow per tensor,
    named as ``named_parameters()`` names it, and ``copy_to`` a second such model works."""
    torch.manual_seed(0)
    lin = nn.Linear(2, 2)
    model = nn.Sequential(lin, lin)
    ema = EMA(model, decay=0.5)
    assert ema.names == ("0.weight", "0.bias")
    old = ema.average["0.weight"].clone()
    _fill(lin.weight, 3.0)
    ema.update()
    assert torch.equal(ema.average["0.weight"], _lerp(old, torch.full_like(old, 3.0), 0.5))
    twin = nn.Linear(2, 2)
    ema.copy_to(nn.Sequential(twin, twin))
    assert torch.equal(twin.weight, ema.average["0.weight"])


def test_tying_weights_after_construction_is_refused_before_any_write() -> None:
    """Tying the head to the embedding after the EMA was built removes ``out.weight`` from
    the module's names: the next update is a ``ValueError`` naming it, and nothing moved."""
    model = TiedEmbedding(vocab=5, width=3)
    model.out.weight = nn.Parameter(torch.zeros(5, 3))  # untied to start
    ema = EMA(model, decay=0.5)
    assert ema.names == ("emb.weight", "out.weight")
    before = copies(ema)
    model.out.weight = model.emb.weight
    with pytest.raises(ValueError, match=r"'out\.weight'"):
        ema.update()
    same(copies(ema), before)
    assert ema.step == 0


def test_stateless_update_of_a_deep_copied_tied_state_dict() -> None:
    """``copy.deepcopy(model.state_dict())`` keeps the tie, so the shadow holds one tensor
    under two names: an in-place update is a ``ValueError`` naming both paths that changes
    nothing, and ``copy=True`` gives both names the same (correct) average."""
    model = _tied()
    shadow = copy.deepcopy(model.state_dict())
    start = shadow["emb.weight"].clone()
    _fill(model.emb.weight, 1.0)
    with pytest.raises(ValueError, match=r"shadow\['emb.weight'\].*shadow\['out.weight'\]"):
        ema_core.ema_update(shadow, model.state_dict(), 1, decay=0.5)
    assert torch.equal(shadow["emb.weight"], start)
    new = ema_core.ema_update(shadow, model.state_dict(), 1, decay=0.5, copy=True)
    expected = _lerp(start, torch.ones_like(start), 0.5)
    assert torch.equal(new["emb.weight"], expected)
    assert torch.equal(new["out.weight"], expected)


def test_stateless_update_of_state_dicts_copies_batchnorm_counters() -> None:
    """``ema_update`` on ``state_dict()`` dicts of a BatchNorm model: floats are blended, the
    int64 ``num_batches_tracked`` takes the model's value and stays int64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    shadow = {k: v.clone() for k, v in model.state_dict().items()}
    start = {k: v.clone() for k, v in shadow.items()}
    model(torch.randn(8, 3))
    model(torch.randn(8, 3))
    live = model.state_dict()
    out = ema_core.ema_update(shadow, live, 1, decay=0.75)
    counter = out["1.num_batches_tracked"]
    assert counter.dtype == torch.int64 and int(counter) == 2
    for name in ("1.running_mean", "0.weight"):
        assert torch.equal(out[name], _lerp(start[name], live[name], 0.75)), name


def test_stateless_update_into_a_deep_copied_model_s_parameters() -> None:
    """timm's layout with the stateless function: the shadow is
    ``dict(ema_model.named_parameters())`` of a deep copy whose params still require grad.
    It is updated in place with grad mode on, and its params stay leaves without history."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    ema_model = copy.deepcopy(model)
    start = {k: v.detach().clone() for k, v in ema_model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    shadow = dict(ema_model.named_parameters())
    out = ema_core.ema_update(shadow, dict(model.named_parameters()), 1, decay=0.5)
    for name, p in model.named_parameters():
        assert out[name] is shadow[name], name
        assert torch.equal(shadow[name].detach(), _lerp(start[name], p.detach(), 0.5)), name
        assert shadow[name].is_leaf and shadow[name].requires_grad, name


# ---- parametrizations and spectral norm ----


def test_weight_norm_averages_the_originals_and_swap_gives_their_computed_weight() -> None:
    """Under ``parametrizations.weight_norm`` the EMA averages the original tensors (the
    names ``named_parameters()`` gives); inside ``swap()`` ``weight`` is computed from them."""
    torch.manual_seed(0)
    model = weight_norm(nn.Linear(3, 3))
    ema = EMA(model, decay=0.5)
    g, v = "parametrizations.weight.original0", "parametrizations.weight.original1"
    assert set(ema.names) == {"bias", g, v}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        opt.zero_grad()
        ema.update()
    expected = torch._weight_norm(ema.average[v], ema.average[g])
    with torch.no_grad(), ema.swap():
        assert torch.equal(model.weight, expected)
    with torch.no_grad():
        assert torch.equal(
            model.weight,
            torch._weight_norm(
                model.parametrizations.weight.original1, model.parametrizations.weight.original0
            ),
        )


class _Scale(nn.Module):
    """A parametrization with a parameter of its own: ``weight = original * k``."""

    def __init__(self) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.k


def test_a_parametrization_s_own_parameter_is_averaged_beside_the_original() -> None:
    """A custom parametrization holding a parameter: both it and the original are tracked,
    and the forward inside ``swap()`` equals a copy of the model given the averages."""
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    parametrize.register_parametrization(model, "weight", _Scale())
    ema = EMA(model, decay=0.5)
    assert set(ema.names) == {
        "bias",
        "parametrizations.weight.original",
        "parametrizations.weight.0.k",
    }
    reference = copy.deepcopy(model)
    _fill(model.parametrizations.weight[0].k, 6.0)
    ema.update()
    assert float(ema.average["parametrizations.weight.0.k"]) == 4.0
    ema.copy_to(reference)
    x = torch.randn(3, 2)
    with torch.no_grad(), ema.swap():
        assert torch.equal(model(x), reference(x))


def test_orthogonal_base_buffer_is_copied_and_original_averaged() -> None:
    """``orthogonal`` keeps a float buffer ``...0.base``: copied under the default
    ``buffers="copy"``; the original parameter is averaged."""
    torch.manual_seed(0)
    model = orthogonal(nn.Linear(3, 3))
    ema = EMA(model, decay=0.5)
    base, original = "parametrizations.weight.0.base", "parametrizations.weight.original"
    assert base in ema.names and original in ema.names
    old = ema.average[original].clone()
    with torch.no_grad():
        model.parametrizations.weight[0].base.add_(1.0)
        model.parametrizations.weight.original.add_(1.0)
    ema.update()
    assert torch.equal(ema.average[base], model.parametrizations.weight[0].base)
    live = model.parametrizations.weight.original.detach()
    assert torch.equal(ema.average[original], _lerp(old, live, 0.5))


def test_a_parametrization_registered_after_construction_is_refused_by_name() -> None:
    """``register_parametrization`` after the EMA was built removes ``weight`` from the
    parameters: the update is a ``ValueError`` naming it, the shadows stay readable."""
    model = nn.Linear(3, 3)
    ema = EMA(model, decay=0.5)
    before = copies(ema)
    parametrize.register_parametrization(model, "weight", _Scale())
    with pytest.raises(ValueError, match="'weight'"):
        ema.update()
    same(copies(ema), before)


def test_spectral_norm_in_eval_swaps_the_averaged_orig_and_copied_vectors() -> None:
    """Old-style ``spectral_norm``: ``weight_orig`` is averaged and the power-iteration
    buffers ``weight_u`` / ``weight_v`` are copied; an eval forward inside ``swap()`` equals a
    copy given the averages, and the live tensors come back bit for bit."""

    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.utils.spectral_norm(nn.Linear(3, 3))

    model = build()
    reference = build().eval()  # not a deepcopy: it refuses the weight a forward computed
    ema = EMA(model, decay=0.5)
    model(torch.randn(2, 3))  # train mode: one power iteration moves u and v
    with torch.no_grad():
        model.weight_orig.mul_(2.0)
    ema.update()
    assert torch.equal(ema.average["weight_u"], model.weight_u)
    ema.copy_to(reference)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    x = torch.randn(4, 3)
    with torch.no_grad(), ema.swap():
        assert torch.equal(model(x), reference(x))
    same(dict(model.state_dict()), live)


# ---- frozen bases, adapters and lazy modules ----


class _Adapted(nn.Module):
    """A frozen Linear with a trainable low-rank adapter (LoRA-style)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.base = nn.Linear(4, 4).requires_grad_(False)
        self.lora_a = nn.Parameter(torch.zeros(2, 4))
        self.lora_b = nn.Parameter(torch.randn(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.lora_a.T @ self.lora_b.T


def test_a_frozen_base_is_averaged_to_itself_and_include_keeps_only_adapters() -> None:
    """By default frozen params are tracked too (as diffusers does) and, never changing,
    average to themselves bit for bit; ``include="lora_*"`` or a ``requires_grad``
    predicate keeps the adapters only, and ``swap()`` then leaves the base alone."""
    model = _Adapted()
    everything = EMA(model, decay=0.9)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = EMA(model, decay=0.9, include=trainable.__contains__)
    assert adapters.names == EMA(model, decay=0.9, include="lora_*").names
    assert adapters.names == ("lora_a", "lora_b")
    base = model.base.weight.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        model(torch.randn(5, 4)).square().sum().backward()
        opt.step()
        opt.zero_grad()
        everything.update()
        adapters.update()
    assert torch.equal(everything.average["base.weight"], base)
    assert torch.equal(everything.average["lora_b"], adapters.average["lora_b"])
    for swap_copy in (True, False):
        with adapters.swap(copy=swap_copy):
            assert torch.equal(model.lora_b, adapters.average["lora_b"])
            assert model.lora_b.requires_grad and not model.base.weight.requires_grad
    assert torch.equal(model.base.weight, base)


class _Float8Adapted(nn.Module):
    """A frozen float8 base weight (QLoRA-style) between two trainable float32 adapters."""

    def __init__(self) -> None:
        super().__init__()
        self.lora_a = nn.Parameter(torch.zeros(3))
        self.base = nn.Parameter(torch.ones(4).to(torch.float8_e4m3fn), requires_grad=False)
        self.lora_b = nn.Parameter(torch.zeros(2))


def test_a_frozen_float8_base_is_averaged_or_refused_when_the_ema_is_built() -> None:
    """A float8 tensor cannot be blended in its own dtype (torch has no float8 ``lerp``):
    "Errors" promises validation before any write, so the EMA either refuses it when built
    (``TypeError`` naming it) or, as for bf16/fp16, keeps a wider shadow and averages it."""
    model = _Float8Adapted()
    try:
        ema = EMA(model, decay=0.5)
    except TypeError as error:
        assert "'base'" in str(error)
        return
    _fill(model.lora_a, 4.0)
    ema.update()
    assert torch.equal(ema.average["lora_a"], torch.full((3,), 2.0))
    assert torch.equal(ema.average["base"].float(), model.base.float())


def test_an_unmaterialised_lazy_parameter_is_refused_by_name() -> None:
    """An ``nn.LazyLinear`` not yet run has no values (as a meta tensor): building the EMA
    is a ``ValueError`` naming the parameter, as for a meta tensor ("Errors")."""
    model = nn.Sequential(nn.Linear(2, 3), nn.LazyLinear(4))
    with pytest.raises(ValueError, match=r"'1\.weight'"):
        EMA(model, decay=0.5)


def test_a_lazy_module_left_out_then_materialised_does_not_disturb_the_ema() -> None:
    """``exclude=`` of the lazy module's names builds the EMA; materialising it later (a
    first forward) leaves the tracked tensors' updates exact; an EMA built after that forward
    tracks the materialised weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.LazyLinear(4))
    ema = EMA(model, decay=0.5, exclude="1.*")
    model(torch.randn(1, 2))
    old = ema.average["0.weight"].clone()
    _fill(model[0].weight, 1.0)
    ema.update()
    assert ema.names == ("0.weight", "0.bias")
    assert torch.equal(ema.average["0.weight"], _lerp(old, torch.ones_like(old), 0.5))
    assert EMA(model, decay=0.5).names == ("0.weight", "0.bias", "1.weight", "1.bias")


# ---- layouts: channels_last, transposed, params over one storage ----


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_conv_weights_are_blended_and_swapped_with_their_strides(
    dtype: torch.dtype,
) -> None:
    """A channels_last conv weight (non-contiguous) is blended by the core's rule, also
    over a float32 shadow of bf16 weights, and both ``swap`` modes keep its strides and
    give its live bits back."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, 8, 3).to(dtype).to(memory_format=torch.channels_last)
    strides = model.weight.stride()
    ema = EMA(model, decay=0.5)
    old = ema.average["weight"].clone()
    with torch.no_grad():
        model.weight.mul_(2.0)
    live = model.weight.detach().clone()
    ema.update()
    assert torch.equal(ema.average["weight"], _lerp(old, live, 0.5))
    for swap_copy in (True, False):
        with ema.swap(copy=swap_copy):
            assert torch.equal(model.weight.float(), ema.average["weight"].to(dtype).float())
        assert model.weight.stride() == strides
        assert torch.equal(model.weight, live)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conversion_to_channels_last_after_construction_is_followed(dtype: torch.dtype) -> None:
    """``model.to(memory_format=torch.channels_last)`` after construction moves the data:
    the EMA follows it by name at the next update."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 3).to(dtype)
    ema = EMA(model, decay=0.5)
    old = ema.average["weight"].clone()
    model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    assert torch.equal(ema.average["weight"], _lerp(old, model.weight.detach(), 0.5))
    with ema.swap():
        assert torch.equal(model.weight, ema.average["weight"].to(dtype))


class _Strided(nn.Module):
    """One parameter with a layout of its own: a transposed view, or a slice of a wider
    tensor (non-contiguous, at a storage offset)."""

    def __init__(self, layout: str, dtype: torch.dtype) -> None:
        super().__init__()
        torch.manual_seed(0)
        wide = torch.randn(4, 6, dtype=dtype)
        self.w = nn.Parameter(wide[:, 1:4] if layout == "slice" else wide.t())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["transposed", "slice"])
def test_a_strided_parameter_is_blended_by_the_core_rule(layout: str, dtype: torch.dtype) -> None:
    """A parameter that is a transposed view or an offset slice is blended element by
    element as a contiguous one would be (through the host engine's views for half dtypes),
    and ``swap()`` writes only its own elements of the wider storage."""
    model = _Strided(layout, dtype)
    assert not model.w.is_contiguous()
    storage = model.w.untyped_storage()
    ema = EMA(model, decay=0.75)
    old = ema.average["w"].clone()
    with torch.no_grad():
        model.w.mul_(3.0)
    ema.update()
    assert torch.equal(ema.average["w"], _lerp(old, model.w.detach(), 0.75))
    everything = torch.empty(0, dtype=dtype).set_(storage).clone()
    strides = model.w.stride()
    with ema.swap():
        assert model.w.stride() == strides
        assert torch.equal(model.w, ema.average["w"].to(dtype))
    assert torch.equal(torch.empty(0, dtype=dtype).set_(storage), everything)


class _OneStorage(nn.Module):
    """Two parameters over one storage (a fused buffer split in halves)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        flat = torch.randn(8)
        self.a = nn.Parameter(flat[:4])
        self.b = nn.Parameter(flat[4:])


def test_parameters_over_one_storage_swap_and_come_back_in_place() -> None:
    """Params that are views of one storage get separate shadows; after ``swap()`` in both
    modes they hold their live bits at their own addresses, still over one storage."""
    model = _OneStorage()
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.a.add_(1.0)
        model.b.add_(2.0)
    ema.update()
    pointers = (model.a.data_ptr(), model.b.data_ptr())
    live = (model.a.detach().clone(), model.b.detach().clone())
    for swap_copy in (True, False):
        with ema.swap(copy=swap_copy):
            assert torch.equal(model.a, ema.average["a"])
            assert torch.equal(model.b, ema.average["b"])
        assert (model.a.data_ptr(), model.b.data_ptr()) == pointers
        assert torch.equal(model.a, live[0]) and torch.equal(model.b, live[1])
    assert model.a.untyped_storage().data_ptr() == model.b.untyped_storage().data_ptr()


class _Expanded(nn.Module):
    """A parameter that is an expanded (stride-0) view, between two plain ones."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(3))
        self.w = nn.Parameter(torch.ones(1, 3).expand(4, 3))
        self.z = nn.Parameter(torch.zeros(2))


def _expanded_ema() -> tuple[_Expanded, EMA]:
    model = _Expanded()
    ema = EMA(model, decay=0.5)
    _fill(model.a, 4.0)
    _fill(model.z, 4.0)
    ema.update()
    return model, ema


def test_a_swap_that_cannot_write_an_expanded_parameter_restores_the_others() -> None:
    """``swap()`` cannot copy an average into a stride-0 parameter: it raises, and the
    parameters written before it hold their live bits again (the EMA is not left swapped)."""
    model, ema = _expanded_ema()
    with pytest.raises((RuntimeError, ValueError)), ema.swap():
        pass
    assert bool((model.a == 4.0).all()) and bool((model.z == 4.0).all())
    ema.update()  # not refused as "inside swap()"
    # 0 -> 2 at the first update (halfway to 4), -> 3 at this one
    assert torch.equal(ema.average["a"], torch.full((3,), 3.0))


def test_a_swap_that_cannot_write_an_expanded_parameter_names_it() -> None:
    """As ``copy_to`` does for the same target ("Errors": messages name the leaf), ``swap()``
    refuses an expanded parameter with a ``ValueError`` naming it."""
    _, ema = _expanded_ema()
    with pytest.raises(ValueError, match="'w'"), ema.swap():
        pass


def test_load_state_dict_with_assign_in_another_dtype_is_followed() -> None:
    """``model.load_state_dict(bf16_weights, assign=True)`` replaces the parameters by bf16
    ones: the EMA follows them by name, its shadows float32 as for any bf16 model."""
    model = nn.Sequential(nn.Linear(3, 3))
    ema = EMA(model, decay=0.5)
    old = ema.average["0.weight"].clone()
    ones = {k: torch.ones_like(v, dtype=torch.bfloat16) for k, v in model.state_dict().items()}
    model.load_state_dict(ones, assign=True)
    assert model[0].weight.dtype == torch.bfloat16
    ema.update()
    assert ema.average["0.weight"].dtype == torch.float32
    assert torch.equal(ema.average["0.weight"], _lerp(old, model[0].weight.detach(), 0.5))
    with ema.swap():
        assert torch.equal(model[0].weight, ema.average["0.weight"].to(torch.bfloat16))


# ---- buffers ----


class _Rotary(nn.Module):
    """A Linear, a BatchNorm and a non-persistent float buffer (as rotary ``inv_freq``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(2, 2)
        self.bn = nn.BatchNorm1d(2)
        self.register_buffer("inv_freq", torch.arange(3.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x))


def test_batchnorm_counter_and_non_persistent_buffers_follow_the_model() -> None:
    """``num_batches_tracked`` (int64) is copied exactly under every buffer policy that
    tracks it, and a non-persistent float buffer is tracked like the others."""
    for policy in ("copy", "average"):
        model = _Rotary()
        ema = EMA(model, decay=0.5, buffers=policy)
        assert "inv_freq" in ema.names
        for _ in range(3):
            model(torch.randn(4, 2))
        ema.update()
        counter = ema.average["bn.num_batches_tracked"]
        assert counter.dtype == torch.int64 and int(counter) == 3, policy
        assert torch.equal(ema.average["inv_freq"], model.inv_freq)


@pytest.mark.parametrize("format", ["state_dict", "timm"])
def test_an_export_of_a_model_with_non_persistent_buffers_loads_strictly(format: str) -> None:
    """The README's table: ``export(format="state_dict")`` gives the model's names as
    ``module.state_dict()`` does and is read by ``model.load_state_dict(...)``, with
    ``strict=False`` needed only where the EMA skips buffers (it skips none here); the
    ``"timm"`` layout is read by timm's strict ``load_checkpoint(..., use_ema=True)``."""
    model = _Rotary()
    ema = EMA(model, decay=0.5)
    model(torch.randn(4, 2))
    ema.update()
    exported = checkpoint.export(ema, format=format)  # type: ignore[call-overload]
    averages = exported if format == "state_dict" else exported["state_dict_ema"]
    assert sorted(averages) == sorted(model.state_dict())
    _Rotary().load_state_dict(averages)


@pytest.mark.parametrize(
    "build",
    [nn.ReLU, lambda: nn.BatchNorm1d(3, affine=False, track_running_stats=False)],
)
def test_a_module_with_no_tensors_is_refused_when_built(build: Callable[[], nn.Module]) -> None:
    """A module with no parameters or buffers leaves nothing to track: a ``ValueError`` when
    the EMA is built (``EMA`` and ``EMABank`` alike)."""
    with pytest.raises(ValueError, match="no tensors to track"):
        EMA(build(), decay=0.5)
    with pytest.raises(ValueError, match="no tensors to track"):
        EMABank(build(), sigma_rels=(0.05, 0.1))


def test_a_parameter_turned_into_a_buffer_is_refused_before_any_write() -> None:
    """``del m.weight; m.register_buffer("weight", ...)`` turns an averaged tensor into a
    copied one: the update refuses it by name and nothing moves."""
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.5)
    before = copies(ema)
    weight = model.weight.detach().clone()
    del model.weight
    model.register_buffer("weight", weight * 3)
    with pytest.raises(ValueError, match="'weight'"):
        ema.update()
    same(copies(ema), before)


# ---- wrappers: torch.compile, DDP-style prefixes, a submodule named module ----


class _Wrapper(nn.Module):
    """DDP's layout: the model under ``module``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_averages_of_wrapped_models_load_strictly_into_the_unwrapped_model() -> None:
    """The EMA of a compiled or DDP-style wrapped model has the plain names: its ``average``
    loads strictly into the unwrapped model, its ``state_dict()`` into an EMA of the plain
    model, and ``copy_to`` writes into a wrapped copy."""
    for wrap in (torch.compile, _Wrapper):
        model = _net()
        ema = EMA(wrap(model), decay=0.5)
        model(torch.randn(4, 3))
        with torch.no_grad():
            model[0].weight.add_(1.0)
        ema.update()
        plain = _net()
        plain.load_state_dict(ema.average)
        same(dict(plain.state_dict()), copies(ema))
        other = EMA(_net(), decay=0.5)
        other.load_state_dict(ema.state_dict())
        same(copies(other), copies(ema))
        target = _Wrapper(_net())
        ema.copy_to(target)
        assert torch.equal(target.module[0].weight, ema.average["0.weight"])


def test_a_submodule_named_module_beside_a_root_tensor_keeps_its_name() -> None:
    """A user's ``self.module`` beside a root parameter is part of the model, not a wrapper:
    its names keep ``module.`` (they were stripped and collided with the root's ``weight``)."""

    class Clash(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2, bias=False)
            self.weight = nn.Parameter(torch.zeros(2, 2))

    assert EMA(Clash(), decay=0.5).names == ("weight", "module.weight")


# ---- dtypes, banks, checkpointing ----


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_copy_to_a_model_of_another_dtype_casts_and_copies_counters(dtype: torch.dtype) -> None:
    """``copy_to`` a copy of the model in another float dtype casts each average to it and
    copies the int64 BatchNorm counter as it is."""
    model = _net()
    ema = EMA(model, decay=0.5)
    model(torch.randn(4, 3))
    ema.update()
    target = _net().to(dtype)
    ema.copy_to(target)
    assert torch.equal(target[0].weight, ema.average["0.weight"].to(dtype))
    assert torch.equal(target[1].running_var, ema.average["1.running_var"].to(dtype))
    assert target[1].num_batches_tracked.dtype == torch.int64
    assert int(target[1].num_batches_tracked) == 1


def test_a_bank_of_a_tied_adapted_model_tracks_what_the_ema_tracks() -> None:
    """``EMABank`` names what ``EMA`` names (tied weights once, ``include=`` applied), and
    each ``bank[k]`` swaps its average into both tied names."""
    model = _tied()
    bank = EMABank(model, sigma_rels=(0.05, 0.1))
    assert bank[0].names == EMA(model).names == ("emb.weight",)
    _fill(model.emb.weight, 2.0)
    bank.update()
    with bank[1].swap():
        assert torch.equal(model.out.weight, bank[1].average["emb.weight"])
    assert bool((model.out.weight == 2.0).all())
    adapted = _Adapted()
    assert EMABank(adapted, sigma_rels=(0.05,), include="lora_*")[0].names == ("lora_a", "lora_b")


def test_gradient_checkpointing_inside_swap_differentiates_the_averages() -> None:
    """A forward and backward through ``torch.utils.checkpoint`` inside ``swap()`` (the
    recomputation included) gives the gradients of the averaged weights, and the live
    weights come back bit for bit."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    ema.update()
    live = {k: v.clone() for k, v in model.state_dict().items()}
    reference = copy.deepcopy(model)
    ema.copy_to(reference)
    x = torch.randn(5, 3)
    reference(x).sum().backward()
    with ema.swap():
        torch.utils.checkpoint.checkpoint(model, x, use_reentrant=False).sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and torch.equal(p.grad, q.grad), name
    same(dict(model.state_dict()), live)


def test_copy_to_a_state_dict_skips_only_the_non_persistent_buffers_it_lacks() -> None:
    """``copy_to(model.state_dict())``: the mapping lacks the non-persistent ``inv_freq``
    (``state_dict()`` leaves it out), which is skipped, and every other average is written; a
    mapping that lacks a persistent name is still refused by name, before any write."""
    model = _Rotary()
    ema = EMA(model, decay=0.5)
    model(torch.randn(4, 2))
    ema.update()
    target = _Rotary().state_dict()
    ema.copy_to(target)
    for name, value in target.items():
        assert torch.equal(value, ema.average[name].to(value.dtype)), name
    lacking = _Rotary().state_dict()
    before = {k: v.clone() for k, v in lacking.items()}
    del lacking["lin.bias"]
    with pytest.raises(ValueError, match=r"'lin\.bias'"):
        ema.copy_to(lacking)
    assert all(torch.equal(lacking[k], before[k]) for k in lacking)


def test_a_param_replaced_by_a_float8_one_later_is_refused_before_any_write() -> None:
    """The float8 refusal holds where the EMA follows a replaced tensor too: a float32 param
    swapped for a float8 one after the EMA was built is a ``TypeError`` naming it at the next
    update, before any shadow, the step or another tensor's average moves."""
    model = _Float8Adapted()
    ema = EMA(model, decay=0.5, exclude="base")
    before = {n: t.clone() for n, t in ema.average.items()}
    _fill(model.lora_b, 4.0)
    model.lora_a = nn.Parameter(torch.zeros(3).to(torch.float8_e4m3fn))
    with pytest.raises(TypeError, match=r"'lora_a'.*float8"):
        ema.update()
    assert ema.step == 0
    assert all(torch.equal(ema.average[n], t) for n, t in before.items())
