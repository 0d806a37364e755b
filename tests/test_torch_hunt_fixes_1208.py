"""torch ``EMA`` fixes from the hunt of 2026-12-05: ``copy_to`` writes a tied tensor's other
names, ``include=`` / ``exclude=`` read them, and a conversion inside ``swap(copy=False)`` is
kept as ``swap()`` keeps it."""

from __future__ import annotations

import pytest
import torch

from ema_core.torch import EMA


class TiedLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(6, 3)
        self.adapter = torch.nn.Linear(3, 3)
        self.head = torch.nn.Linear(3, 6, bias=False)
        self.head.weight = self.emb.weight


def _trained(model: torch.nn.Module, ema: EMA) -> None:
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    ema.update()


def test_copy_to_writes_each_name_of_a_tied_tensor() -> None:
    torch.manual_seed(0)
    model = TiedLM()
    ema = EMA(model, decay=0.5)
    _trained(model, ema)
    average = ema.average["emb.weight"]
    assert not torch.equal(average, model.emb.weight)
    cloned = {k: v.clone() for k, v in model.state_dict().items()}
    ema.copy_to(cloned)
    assert torch.equal(cloned["emb.weight"], average)
    assert torch.equal(cloned["head.weight"], average)
    untied = TiedLM()
    untied.head.weight = torch.nn.Parameter(untied.emb.weight.detach().clone() + 5)
    ema.copy_to(untied)
    assert torch.equal(untied.emb.weight, average) and torch.equal(untied.head.weight, average)
    tied = TiedLM()
    ema.copy_to(tied)  # one tensor under two names: written once
    assert torch.equal(tied.head.weight, average) and tied.head.weight is tied.emb.weight


def test_copy_to_checks_the_other_names_before_writing() -> None:
    model = TiedLM()
    ema = EMA(model, decay=0.5)
    _trained(model, ema)
    cloned = {k: v.clone() for k, v in model.state_dict().items()}
    cloned["head.weight"] = torch.zeros(2, 3)
    before = {k: v.clone() for k, v in cloned.items()}
    with pytest.raises(ValueError, match=r"copy_to: 'head.weight' with shape \(6, 3\)"):
        ema.copy_to(cloned)
    for name, value in before.items():
        assert torch.equal(cloned[name], value), name


@pytest.mark.parametrize(
    ("include", "exclude", "tracked"),
    [
        (["head.*", "adapter.*"], None, ["emb.weight", "adapter.weight", "adapter.bias"]),
        (None, "head.*", ["adapter.weight", "adapter.bias"]),
        (["emb.*"], None, ["emb.weight"]),
        (lambda name: name.startswith("head."), None, ["emb.weight"]),
    ],
)
def test_filters_read_every_name_of_a_tied_tensor(
    include: object, exclude: object, tracked: list[str]
) -> None:
    ema = EMA(TiedLM(), decay=0.5, include=include, exclude=exclude)
    assert list(ema.names) == tracked


@pytest.mark.parametrize("copy", [True, False])
def test_a_conversion_inside_swap_is_kept_on_exit(copy: bool) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).eval()
    ema = EMA(model, decay=0.9)
    _trained(model, ema)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swap(copy=copy):
        model.double()
    for name, value in model.state_dict().items():
        want = live[name].double() if live[name].is_floating_point() else live[name]
        assert value.dtype == want.dtype and torch.equal(value, want), name
    model(torch.randn(2, 4, dtype=torch.float64))  # one dtype throughout: it runs
    conv = torch.nn.Conv2d(3, 4, 3)
    ema = EMA(conv, decay=0.9)
    _trained(conv, ema)
    weight = conv.weight.detach().clone()
    with ema.swap(copy=copy):
        conv.to(memory_format=torch.channels_last)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(conv.weight, weight)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_filters_read_a_tied_alias_as_the_wrapped_model_lists_it() -> None:
    compiled = torch.compile(TiedLM())  # wraps: names gain _orig_mod. (nothing compiles here)
    ema = EMA(compiled, decay=0.5, include="_orig_mod.head.*")
    assert list(ema.names) == ["emb.weight"]
    wrapped = torch.nn.DataParallel(TiedLM())
    ema = EMA(wrapped, decay=0.5, exclude="module.head.*")
    assert list(ema.names) == ["adapter.weight", "adapter.bias"]
