"""A model's own child named ``module`` keeps its name: only a data-parallel wrapper's
``module.`` (and ``torch.compile``'s ``_orig_mod.``) is dropped. Before, every leading
``module.`` went, so an export of such a model did not load into it and a model with a
``module`` child beside a tensor of that child's name was refused as two tensors of one name."""

from __future__ import annotations

import pytest
import torch

from ema_core.checkpoint import export, load_peer
from ema_core.presets import timm
from ema_core.torch import EMA, EMABank


class _Net(torch.nn.Module):
    """A model whose body is a child called ``module`` (a common name in user code)."""

    def __init__(self, head: bool = True) -> None:
        super().__init__()
        self.module = torch.nn.Linear(2, 2)
        self.head = torch.nn.Linear(2, 1) if head else None


class _Shadowed(torch.nn.Module):
    """A ``module`` child beside a parameter of the name the child's weight had stripped."""

    def __init__(self) -> None:
        super().__init__()
        self.module = torch.nn.Linear(2, 2)
        self.weight = torch.nn.Parameter(torch.ones(2, 2))


def _trained(model: torch.nn.Module) -> EMA:
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    return ema


def test_an_export_of_a_model_with_a_module_child_loads_into_that_model() -> None:
    torch.manual_seed(0)
    model = _Net()
    ema = _trained(model)
    assert set(ema.names) == set(model.state_dict())
    fresh = _Net()
    fresh.load_state_dict(export(ema, format="state_dict"))  # raised: missing module.weight
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, ema.average[name]), name


def test_a_module_child_beside_a_parameter_of_its_stripped_name_is_tracked() -> None:
    model = _Shadowed()
    ema = _trained(model)  # raised: two tensors named 'weight'
    assert sorted(ema.names) == ["module.bias", "module.weight", "weight"]
    assert not torch.equal(ema.average["weight"][:, :2], ema.average["module.weight"])


def test_a_data_parallel_wrapper_still_tracks_the_names_of_the_model_inside() -> None:
    plain = EMA(_Net()).names
    assert EMA(torch.nn.DataParallel(_Net())).names == plain
    assert "module.weight" in plain


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_compiled_wrapper_of_a_wrapper_drops_both_segments() -> None:
    wrapped = torch.compile(torch.nn.DataParallel(_Net()))
    assert all(
        n.startswith("_orig_mod.module.module.") or n.startswith("_orig_mod.module.head")
        for n, _ in wrapped.named_parameters()
    )
    assert EMA(wrapped).names == EMA(_Net()).names


def test_a_lone_module_child_is_read_as_a_wrapper_in_a_module_and_in_its_state_dict() -> None:
    torch.manual_seed(0)
    model = _Net(head=False)  # only a child `module`, no tensor of its own: a wrapper's layout
    ema = _trained(model)
    assert ema.names == ("weight", "bias")
    target = _Net(head=False).state_dict()  # every key starts with module., as a DDP one does
    ema.copy_to(target)
    assert torch.equal(target["module.weight"], ema.average["weight"])


def test_copy_to_the_state_dict_of_a_wrapped_model_still_matches_by_the_inner_names() -> None:
    torch.manual_seed(0)
    ema = _trained(_Net())
    target = torch.nn.DataParallel(_Net()).state_dict()  # module.module.weight, module.head...
    ema.copy_to(target)
    assert torch.equal(target["module.module.weight"], ema.average["module.weight"])
    assert torch.equal(target["module.head.bias"], ema.average["head.bias"])


def test_a_bank_of_a_model_with_a_module_child_keeps_the_names() -> None:
    bank = EMABank(_Net(), sigma_rels=(0.05, 0.1))
    assert all(set(ema.names) == set(_Net().state_dict()) for ema in bank)


def test_load_peer_of_a_peer_state_keyed_by_the_models_own_names() -> None:
    torch.manual_seed(0)
    model = _Net()
    ema = EMA(model, config=timm(0.5))
    ema.update(1)
    state = {k: v + 1.0 for k, v in model.state_dict().items()}  # a timm ModelEmaV3 layout
    load_peer(ema, state, peer="timm", args={"decay": 0.5}, step=1)
    assert torch.equal(ema.average["module.weight"], state["module.weight"])


class _Scaled(torch.nn.Module):
    """A ``module`` child beside a non-persistent buffer: every ``state_dict()`` key starts
    with ``module.``, yet the model is no wrapper (it holds a tensor of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.module = torch.nn.Linear(2, 2)
        self.register_buffer("scale", torch.ones(1), persistent=False)


@pytest.mark.parametrize("wrappers", [0, 1, 2])
def test_load_peer_removes_a_wrappers_module_only_down_to_the_emas_names(wrappers: int) -> None:
    """A peer of a DDP-wrapped model writes one ``module.`` more per wrapper; removing every
    leading ``module.`` went past the model's own ``module`` child."""
    torch.manual_seed(0)
    model = _Scaled()
    ema = EMA(model, config=timm(0.5))
    assert ema.names == ("module.weight", "module.bias", "scale")
    ema.update(1)
    prefix = "module." * wrappers
    state = {prefix + k: v + 1.0 for k, v in model.state_dict().items()}
    load_peer(ema, state, peer="timm", args={"decay": 0.5}, step=1)
    assert torch.equal(ema.average["module.weight"], state[prefix + "module.weight"])


class _Wrap(torch.nn.Module):
    """A lone ``module`` child: read as a wrapper."""

    def __init__(self) -> None:
        super().__init__()
        self.module = torch.nn.Linear(2, 2)


def test_the_names_stay_when_the_model_later_gains_a_child_or_a_buffer() -> None:
    """The wrapper prefix is decided once per model: a child added later (which would make the
    root no wrapper) changed the names under the EMA, and its next update refused them."""
    model = _Wrap()
    ema = EMA(model, decay=0.5)
    model.loss = torch.nn.MSELoss()
    model.register_buffer("scale", torch.ones(1), persistent=False)
    model.double()  # new tensors: the EMA looks them up by name again
    ema.update()
    assert ema.names == ("weight", "bias")


def _legacy_state(ema: EMA) -> dict[str, object]:
    """``ema.state_dict()`` under the names ema-core gave before (every leading module.)."""
    state = ema.state_dict()
    return {**state, "shadow": {k.removeprefix("module."): v for k, v in state["shadow"].items()}}


@pytest.mark.parametrize("strict", [True, False])
def test_a_state_saved_under_the_names_of_before_still_loads(tmp_path, strict: bool) -> None:
    from ema_core import checkpoint

    torch.manual_seed(0)
    source = _trained(_Net())
    old = _legacy_state(source)
    assert sorted(old["shadow"]) == ["bias", "head.bias", "head.weight", "weight"]
    for load in ("state_dict", "file"):
        target = EMA(_Net(), decay=0.5)
        if load == "state_dict":
            target.load_state_dict(old, strict=strict)
        else:
            path = tmp_path / f"old_{strict}.safetensors"
            checkpoint.save(path, old)  # a file an EMA of before wrote
            checkpoint.load(path, target, strict=strict)
        assert target.step == source.step
        for name, value in source.average.items():
            assert torch.equal(target.average[name], value), (load, name)


def test_each_ema_decides_its_own_prefix_and_keeps_it_through_pickling(tmp_path) -> None:
    """The prefix is the EMA's, decided when it is built: an EMA built after the model gained a
    child names it anew (a cache per model gave it the first EMA's names), and an EMA pickled
    with its grown model keeps its names (it lost them with the cache)."""
    model = _Wrap()
    first = EMA(model, decay=0.5)
    model.head = torch.nn.Linear(2, 1)  # no longer a lone module child: no wrapper now
    second = EMA(model, decay=0.5)
    assert first.names == ("weight", "bias")
    assert set(second.names) == set(model.state_dict())
    model.load_state_dict(export(second, format="state_dict"))
    path = tmp_path / "both.pt"
    torch.save({"model": model, "ema": first}, path)
    loaded = torch.load(path, weights_only=False)
    loaded["ema"].update()
    assert loaded["ema"].names == ("weight", "bias")


def test_a_strict_load_of_another_tensors_state_is_still_refused() -> None:
    """A saved name is renamed from the names of before only when no tensor of the model has
    it now and the renamed state is this EMA's whole state: the root's own ``weight`` beside a
    ``module`` child is another tensor than ``module.weight``."""
    model = _Shadowed()
    root_only = EMA(model, decay=0.5, include="weight")
    child = EMA(model, decay=0.5, include="module.*")
    before = {k: v.clone() for k, v in child.average.items()}
    with pytest.raises(ValueError, match=r"missing \['module\.weight'.*unexpected \['weight'\]"):
        child.load_state_dict(root_only.state_dict(), strict=True)
    assert all(torch.equal(v, before[k]) for k, v in child.average.items())


def test_a_deepcopy_keeps_the_names_after_the_model_grew() -> None:
    """The copy is built over the same model under the copied EMA's prefix (it was decided
    anew: no tensor kept the names, and the copy was refused)."""
    import copy

    model = _Wrap()
    ema = EMA(model, decay=0.5)
    model.head = torch.nn.Linear(2, 1)
    for copied in (copy.deepcopy(ema), copy.deepcopy((model, ema))[1]):
        copied.update()
        assert copied.names == ("weight", "bias")


def test_a_loose_load_of_a_state_of_before_into_a_grown_model_renames_too() -> None:
    torch.manual_seed(0)
    source = _trained(_Net())
    old = _legacy_state(source)
    model = _Net()
    model.extra = torch.nn.Linear(2, 2)  # a head added for fine-tuning: not in the state
    target = EMA(model, decay=0.5)
    target.load_state_dict(old, strict=False)
    assert torch.equal(target.average["module.weight"], source.average["module.weight"])
    assert torch.equal(target.average["head.weight"], source.average["head.weight"])
