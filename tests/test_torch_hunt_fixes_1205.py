"""torch ``EMA`` promises a hostile-user hunt of 2026-12-05 found broken, each pinned."""

from __future__ import annotations

import copy

import pytest

import ema_core as ema
from ema_core import schedules

torch = pytest.importorskip("torch")
from ema_core.torch import EMA, EMABank  # noqa: E402


class _Holder(torch.nn.Module):
    """A model that holds its own EMA (``model.ema = EMA(model)``), or a bank of them."""

    def __init__(self, bank: bool = False) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)
        self.ema = EMABank(self, sigma_rels=(0.05, 0.1)) if bank else EMA(self, decay=0.5)


def test_deepcopy_of_a_model_holding_its_own_ema() -> None:
    """The EMA was rebuilt on the model's copy before that copy had its attributes:
    ``AttributeError: 'Net' object has no attribute '_parameters'``. The copy is now an
    independent EMA of the copied model."""
    model = _Holder()
    with torch.no_grad():
        model.fc.weight.fill_(1.0)
    model.ema.update()
    before = model.ema.average["fc.weight"].clone()
    twin = copy.deepcopy(model)
    assert twin.ema is not model.ema and twin.ema.step == 1
    assert torch.equal(twin.ema.average["fc.weight"], before)
    with torch.no_grad():
        twin.fc.weight.fill_(3.0)
    twin.ema.update()
    assert torch.equal(twin.ema.average["fc.weight"], (before + 3.0) / 2)
    assert torch.equal(model.ema.average["fc.weight"], before)  # the original untouched
    with twin.ema.swap():
        assert torch.equal(twin.fc.weight, (before + 3.0) / 2)
    assert torch.equal(twin.fc.weight, torch.full((2, 2), 3.0))


def test_deepcopy_of_a_model_holding_its_own_bank() -> None:
    model = _Holder(bank=True)
    model.ema.update()
    twin = copy.deepcopy(model)
    assert all(a is not b for a, b in zip(twin.ema, model.ema, strict=True))
    with torch.no_grad():
        twin.fc.weight.add_(1.0)
    twin.ema.update()
    assert [e.step for e in twin.ema] == [2, 2] and [e.step for e in model.ema] == [1, 1]


def _renamed(config: ema.Config, updates: int) -> tuple[EMA, EMA]:
    """An EMA of {enc, head} updated once, and one of {backbone, head} updated ``updates``
    times (a module renamed between runs: ``strict=False`` loads only ``head.*``)."""
    torch.manual_seed(0)
    old = torch.nn.ModuleDict({"enc": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 1)})
    new = torch.nn.ModuleDict({"backbone": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 1)})
    source, target = EMA(old, config=config), EMA(new, config=config)
    source.update()
    for _ in range(updates):
        with torch.no_grad():
            new["backbone"].weight.add_(1.0)
        target.update()
    return source, target


@pytest.mark.parametrize("correction", ["exact", "power"])
def test_a_loose_load_under_zeros_keeps_the_averages_it_does_not_load(correction: str) -> None:
    """The loaded weight (and step) replaced the EMA's: the raw shadows it did not load were
    read through the other weight (8.8 times too large in the hunt's case)."""
    schedule = schedules.power_function(sigma_rel=0.1) if correction == "power" else 0.9
    config = ema.Config(schedule=schedule, init="zeros", correction=correction)
    source, target = _renamed(config, 20)
    kept = {n: v.clone() for n, v in target.average.items() if n.startswith("backbone")}
    target.load_state_dict(source.state_dict(), strict=False)
    for name, value in kept.items():
        torch.testing.assert_close(target.average[name], value, rtol=1e-6, atol=0)
    for name in ("head.weight", "head.bias"):
        assert torch.equal(target.average[name], source.average[name])
    assert target.step == 1


def test_a_loose_load_of_a_state_saved_before_its_first_update_is_refused() -> None:
    """Its weight is 0: the shadows kept could not be read after it. Nothing changes."""
    config = ema.Config(schedule=0.9, init="zeros")
    source, target = _renamed(config, 3)
    fresh = EMA(source._bound.root, config=config)  # weight 0, step 0
    before = {n: v.clone() for n, v in target.state_dict()["shadow"].items()}
    with pytest.raises(ValueError, match=r"saved before its EMA's first update .* strict=True"):
        target.load_state_dict(fresh.state_dict(), strict=False)
    after = target.state_dict()
    assert after["step"] == 3 and all(torch.equal(before[n], v) for n, v in after["shadow"].items())


def test_a_loose_load_of_a_params_state_into_a_zeros_ema_keeps_its_averages() -> None:
    """A state of ``init="params"`` (weight 1) into a zeros EMA: the raw shadows kept were
    read uncorrected, pulled toward 0."""
    source, _ = _renamed(ema.Config(schedule=0.9), 1)
    _, target = _renamed(ema.Config(schedule=0.9, init="zeros"), 5)
    kept = target.average["backbone.weight"].clone()
    target.load_state_dict(
        {**source.state_dict(), "config": target.state_dict()["config"]}, strict=False
    )
    torch.testing.assert_close(target.average["backbone.weight"], kept, rtol=1e-6, atol=0)


def _bn_model() -> tuple[torch.nn.Module, EMA, torch.Tensor]:
    """A model whose BatchNorm statistics moved after the EMA's last update."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    average = EMA(model, decay=0.9)
    model(torch.randn(16, 4))
    average.update()
    model(torch.randn(16, 4) * 3 + 1)  # a training forward after the last update
    return model, average, model[1].running_mean.clone()


@pytest.mark.parametrize("copy_in", [True, False])
def test_a_conversion_inside_swap_gets_the_live_buffers_back(copy_in: bool) -> None:
    """``.half()`` makes new buffer objects: the exit restored into the old ones, and the model
    kept the EMA's statistics (rounded through half) for good."""
    model, average, live = _bn_model()
    model.eval()
    with average.swap(copy=copy_in):
        model.half()
        model(torch.randn(2, 4, dtype=torch.half))
        model.float()
    assert torch.equal(model[1].running_mean, live)


@pytest.mark.parametrize("flag", ["overwrite", "swap"])
def test_a_conversion_under_torchs_conversion_flags_inside_swap(flag: str) -> None:
    """Under ``set_overwrite_module_params_on_conversion`` the parameters are new objects: the
    model kept the averages; under ``set_swap_module_params_on_conversion`` their version
    counters are other tensors': ``swap(copy=False)`` claimed a write that never happened."""
    set_flag = getattr(torch.__future__, f"set_{flag}_module_params_on_conversion")
    get_flag = getattr(torch.__future__, f"get_{flag}_module_params_on_conversion")
    was = get_flag()
    set_flag(True)
    try:
        model = torch.nn.Linear(4, 8)
        average = EMA(model, decay=0.9)
        with torch.no_grad():
            model.weight.add_(1.0)
        average.update()
        live, kept = model.weight.detach().clone(), average.average["weight"].clone()
        for copy_in in (True, False):
            with average.swap(copy=copy_in):
                model.double()
                model.float()
            assert torch.equal(model.weight, live), copy_in
            assert torch.equal(average.average["weight"], kept), copy_in
        seen = pytest.raises(RuntimeError, match=r"swap\(copy=False\): \['weight'\]")
        with seen, average.swap(copy=False), torch.no_grad():
            model.weight.add_(1.0)  # a real write through the shadow: still seen
        assert torch.equal(model.weight, live)
    finally:
        set_flag(was)


def test_exclude_and_include_take_the_wrapped_models_own_names() -> None:
    """Names from a compiled model's ``named_parameters()`` (``_orig_mod.0.weight``): an
    ``exclude=`` of them excluded nothing, silently, while ``include=`` refused them. (The
    wrapper as ``torch.compile`` lays it out: the real one costs seconds of dynamo import.)"""

    class Compiled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    compiled = Compiled(model)
    frozen = [n for n, p in compiled.named_parameters() if not p.requires_grad]
    trained = [n for n, p in compiled.named_parameters() if p.requires_grad]
    assert frozen == ["_orig_mod.0.weight", "_orig_mod.0.bias"]
    assert EMA(compiled, decay=0.9, exclude=frozen).names == ("1.weight", "1.bias")
    assert EMA(compiled, decay=0.9, include=trained).names == ("1.weight", "1.bias")
    assert EMA(compiled, decay=0.9, exclude=["0.*"]).names == ("1.weight", "1.bias")


def test_reads_follow_a_replaced_submodule_before_the_next_update() -> None:
    """``average`` and ``state_dict()`` read through the old submodule's dicts and missed the
    new one's dtype until an update or a swap looked again."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    average = EMA(model, decay=0.5, dtype="same")
    model[0] = torch.nn.Linear(2, 2).half()
    assert average.average["0.weight"].dtype == torch.float16
    assert average.state_dict()["shadow"]["0.weight"].dtype == torch.float16


def test_swap_copy_false_under_the_overwrite_flag_without_a_dtype_change_keeps_the_ema() -> None:
    """``model.float()`` of a float32 model under the overwrite flag wraps the shadow's own
    storage in a new Parameter: the exit copied the live values into it, so into the EMA."""
    was = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        model = torch.nn.Linear(3, 3)
        average = EMA(model, decay=0.5)
        with torch.no_grad():
            model.weight.add_(1.0)
        average.update()
        live, kept = model.weight.detach().clone(), average.average["weight"].clone()
        with average.swap(copy=False):
            model.float()
        assert torch.equal(average.average["weight"], kept)
        assert torch.equal(model.weight, live)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(was)


def test_a_tensor_that_cannot_take_the_live_values_leaves_the_rest_restored() -> None:
    """A buffer replaced inside ``swap()`` by an expanded tensor refused the copy on exit, and
    the tensors after it in the loop kept the averages."""
    model, average, _ = _bn_model()
    live = {n: t.detach().clone() for n, t in model.state_dict().items()}
    with average.swap():
        model[1].running_mean = torch.zeros(1).expand(8)
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_var"):
        assert torch.equal(model.state_dict()[name], live[name]), name


def test_a_loose_load_leaves_copied_float_buffers_as_they_are() -> None:
    """Under ``init="zeros"`` with ``buffers="copy"``, a BatchNorm statistic is copied, not
    averaged: its shadow was rescaled like an average's."""
    config = ema.Config(schedule=0.9, init="zeros", buffers="copy")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    model(torch.randn(8, 3) + 2.0)  # statistics away from 0
    source, target = EMA(model, config=config), EMA(model, config=config)
    for _ in range(5):
        source.update()
    target.update()
    target.update()
    kept = target.average["1.running_mean"].clone()
    assert bool((kept != 0).all())
    state = source.state_dict()
    state = {**state, "shadow": {n: v for n, v in state["shadow"].items() if n != "1.running_mean"}}
    target.load_state_dict(state, strict=False)
    assert torch.equal(target.average["1.running_mean"], kept)


def test_a_predicate_filter_is_asked_about_the_emas_names_only() -> None:
    """Since the globs also match the wrapped model's own names, a predicate was asked about
    those too (``module.0.bias``): a dict keyed by the inner names raised ``KeyError``."""

    class Wrapped(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.module = inner

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    frozen = {"0.weight": True, "0.bias": False, "1.weight": False, "1.bias": False}
    average = EMA(Wrapped(model), decay=0.9, exclude=lambda n: frozen[n])
    assert average.names == ("0.bias", "1.weight", "1.bias")
