"""Tests that the mutation audit of the torch ``EMABank`` (``ema_core/torch/_bank.py`` and
``_bank_fused.py``) found missing: each kills a small plausible bug that the rest of the
suite let through. Each runs with numba's fused kernel and without (``host_kernels``)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ema_core import Config  # noqa: E402
from ema_core.backends.torch import _foreach  # noqa: E402
from ema_core.torch import EMA, EMABank  # noqa: E402
from tests.torch_models import nudge, two_groups  # noqa: E402

pytestmark = pytest.mark.usefixtures("host_kernels")

CONFIGS = [Config(schedule=0.75, buffers="average"), Config(schedule=0.5, buffers="average")]


def _same(got: EMA, want: EMA) -> None:
    assert got.step == want.step
    for name, value in want.average.items():
        assert torch.equal(got.average[name], value), name


def test_a_bank_update_first_completes_an_update_of_one_ema_cut_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``bank[0].update()`` cut short by an exception leaves its update pending; the next
    ``bank.update()`` completes it first (its tensors done are not blended twice) and then
    updates at the next step, as a twin bank whose first update was not cut (the params
    unchanged in between: a pending update reads the params when it completes)."""
    model, twin = two_groups(), two_groups()
    bank, reference = EMABank(model, CONFIGS), EMABank(twin, CONFIGS)
    for m in (model, twin):
        nudge(m, 1)
    reference[0].update()
    original, calls = _foreach.lerp_, []

    def lerp_(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("cut")
        original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_foreach, "lerp_", lerp_)
    with pytest.raises(RuntimeError, match="cut"):
        bank[0].update()
    monkeypatch.undo()
    assert calls == [1, 1]  # the first group was written, the second was not
    bank.update()
    reference.update()
    for got, want in zip(bank, reference, strict=True):
        _same(got, want)


def test_guard_finite_on_any_ema_of_the_bank_refuses_nan_params() -> None:
    """One EMA of the bank with ``guard_finite=True`` is enough: a NaN param is refused
    before anything is written, even when the first EMA does not guard."""
    model = two_groups()
    bank = EMABank(model, [CONFIGS[0], Config(schedule=0.5, buffers="average", guard_finite=True)])
    before = [e.average for e in bank]
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        bank.update()
    for ema, average in zip(bank, before, strict=True):
        assert ema.step == 0
        for name, value in average.items():
            assert torch.equal(ema.average[name], value), name


def test_every_ema_of_the_bank_follows_a_param_replaced_in_the_module() -> None:
    """``module.weight = Parameter(...)`` rebinds every EMA of the bank, not only the first:
    each then averages the new tensor, as a separate ``EMA`` with its config does (the
    fused split made for the old tensors is made again)."""
    model, twin = two_groups(), two_groups()
    bank = EMABank(model, CONFIGS)
    separate = [EMA(twin, config=c) for c in CONFIGS]
    bank.update()
    for ema in separate:
        ema.update()
    for m in (model, twin):
        m[0].weight = torch.nn.Parameter(torch.full((4, 4), 3.0))
    bank.update()
    for ema in separate:
        ema.update()
    for got, want in zip(bank, separate, strict=True):
        _same(got, want)


def test_a_bank_update_is_refused_while_any_of_its_emas_is_inside_swap() -> None:
    """``bank.update()`` inside ``bank[1].swap()`` (not only ``bank[0]``'s) raises before
    anything is written: the model then holds the averages, not the params."""
    model = two_groups()
    bank = EMABank(model, CONFIGS)
    nudge(model, 1)
    with bank[1].swap(), pytest.raises(RuntimeError, match="inside swap"):
        bank.update()
    assert [e.step for e in bank] == [0, 0]


def test_a_bank_loads_a_state_of_other_configs_with_strict_false() -> None:
    """``strict=False`` reaches each EMA's check: a bank state saved under other schedules
    loads (shadows and steps) into a bank whose configs differ; ``strict=True`` refuses it."""
    model = two_groups()
    saved = EMABank(model, CONFIGS)
    nudge(model, 1)
    saved.update()
    other = [Config(schedule=0.9, buffers="average"), Config(schedule=0.8, buffers="average")]
    bank = EMABank(two_groups(), other)
    with pytest.raises(ValueError, match="config"):
        bank.load_state_dict(saved.state_dict())
    bank.load_state_dict(saved.state_dict(), strict=False)
    for got, want in zip(bank, saved, strict=True):
        _same(got, want)


def test_float64_params_under_float32_shadows_update_as_separate_emas() -> None:
    """Params wider than their shadows (float64 under ``dtype=torch.float32``) are not fused
    (the host bank kernel takes no narrowing): each EMA averages them as it would alone."""
    model, twin = two_groups().double(), two_groups().double()
    bank = EMABank(model, CONFIGS, dtype=torch.float32)
    separate = [EMA(twin, config=c, dtype=torch.float32) for c in CONFIGS]
    for k in (1, 2):
        for m in (model, twin):
            nudge(m, k)
        bank.update()
        for ema in separate:
            ema.update()
    for got, want in zip(bank, separate, strict=True):
        _same(got, want)


def _named(kind: str) -> dict[str, torch.Tensor]:
    """A float32 tensor of each layout the fused kernel must leave to the EMAs' own routes."""
    torch.manual_seed(2)
    base = torch.randn(6, 5)
    if kind == "strided":
        return {"w": base[:, ::2], "b": torch.randn(3)}  # every other column
    return {"w": base._neg_view(), "b": torch.randn(3)}  # a negative view: no numpy view


@pytest.mark.parametrize("kind", ["strided", "negative"])
def test_tensors_the_kernel_cannot_see_flat_update_as_separate_emas(kind: str) -> None:
    """A strided tensor (every other column) or one with its negative bit set is left to each
    EMA's own routes: every average equals a separate ``EMA``'s, with the params read right."""
    tensors, twins = _named(kind), _named(kind)
    bank = EMABank(tensors, CONFIGS)
    separate = [EMA(twins, config=c) for c in CONFIGS]
    bank.update()
    for ema in separate:
        ema.update()
    for k in (1, 2):
        for group in (tensors, twins):
            group["w"].add_(0.125 * k)
            group["b"].add_(0.25)
        bank.update()
        for ema in separate:
            ema.update()
    for got, want in zip(bank, separate, strict=True):
        _same(got, want)


def _half_with_nans() -> dict[str, torch.Tensor]:
    """float16 params whose first four are NaNs with payloads, signaling ones among them."""
    torch.manual_seed(3)
    t = torch.randn(64).half()
    t.view(torch.int16)[:4] = torch.tensor([0x7C01, 0x7D00, -0x03FF, 0x7E01], dtype=torch.int16)
    return {"w": t}


def test_a_decay_of_0_copies_half_params_as_torch_does() -> None:
    """At a decay of 0 (``schedule=0.0``) the fused float16 pairs are copied by torch's copy,
    the route each EMA takes alone: NaN payloads, signaling ones too, land bit for bit as a
    separate ``EMA`` writes them (numpy's cast quiets them otherwise)."""
    configs = [Config(schedule=0.0), Config(schedule=0.5)]
    bank = EMABank(_half_with_nans(), configs, dtype=torch.float32)
    separate = [EMA(_half_with_nans(), config=c, dtype=torch.float32) for c in configs]
    for _ in range(2):
        bank.update()
        for ema in separate:
            ema.update()
    for got, want in zip(bank, separate, strict=True):
        a, b = got.average["w"], want.average["w"]
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))


class _Tied(torch.nn.Module):
    """A weight tied under two names and a BatchNorm (float buffers, an integer counter)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Linear(3, 3, bias=False)
        self.out = torch.nn.Linear(3, 3, bias=False)
        self.out.weight = self.emb.weight
        self.norm = torch.nn.BatchNorm1d(3)


def test_bank_snapshots_record_copied_tensors_and_tied_names(tmp_path: Path) -> None:
    """A bank's snapshots say which tensors were copied (the buffers and the counter, not
    the params) and under which other name a tied weight is known (``out.weight``)."""
    from ema_core import posthoc

    bank = EMABank(_Tied(), sigma_rels=(0.05,))
    bank.update()
    bank.save_snapshots(tmp_path)
    (info,) = posthoc.list_snapshots(tmp_path)
    copied = {"norm.running_mean", "norm.running_var", "norm.num_batches_tracked"}
    assert info.copied == frozenset(copied)
    assert info.aliases == (("out.weight", "emb.weight"),)
