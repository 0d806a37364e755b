"""``ema_core.torch.EMABank`` inside real torch training loops: ``bank[k].swap()`` under
autocast and nested across members, gradient accumulation and a ``GradScaler`` that skips
steps, models cast or params replaced after the bank was built, snapshots across a resume into
a fresh bank, ``copy.deepcopy`` and pickling mid-run, a compiled model, BatchNorm buffer
policies, and ``copy_to`` under ``non_float="freeze"``; every member bit-equal to a separate
``EMA`` with its config. Tests whose result hinges on the fused update run with numba on and
off (``host_kernels``); the others with the default settings."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest

from ema_core import Config, schedules

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from ema_core.torch import EMA, EMABank  # noqa: E402
from tests.torch_models import live_values, net, same  # noqa: E402

Batch = tuple[torch.Tensor, torch.Tensor]

CONFIGS = [
    Config(schedule=0.5, init="copy"),
    Config(schedule=schedules.power_function(sigma_rel=0.05), init="copy", interval=2),
    Config(schedule=schedules.warmup(0.9), init="zeros"),
]


def _data(count: int, seed: int = 3) -> list[Batch]:
    """``count`` batches for ``net()``: 8 inputs of width 3, targets of width 2."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 3, generator=generator), torch.randn(8, 2, generator=generator))
        for _ in range(count)
    ]


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: Batch) -> None:
    opt.zero_grad()
    inputs, targets = batch
    (model(inputs) - targets).pow(2).mean().backward()
    opt.step()


def _bits(ema: EMA) -> dict[str, torch.Tensor]:
    """``ema.state_dict()``'s shadows, step and weight as tensors, cloned (for ``same``)."""
    state = ema.state_dict()
    bits = {n: t.clone() for n, t in state["shadow"].items()}
    bits["<step>"] = torch.as_tensor(state["step"]).clone()
    bits["<weight>"] = torch.as_tensor(state["weight"]).clone()
    return bits


def _same_as_separate(bank: EMABank, separate: list[EMA]) -> None:
    assert len(bank) == len(separate)
    for got, want in zip(bank, separate, strict=True):
        same(_bits(got), _bits(want))
        same(got.average, want.average)


def _bank_and_separate(
    model: nn.Module, configs: list[Config] = CONFIGS, **options: object
) -> tuple[EMABank, list[EMA]]:
    return EMABank(model, configs, **options), [EMA(model, config=c, **options) for c in configs]


def _update_all(bank: EMABank, separate: list[EMA], step: int | None = None) -> None:
    bank.update(step)
    for ema in separate:
        ema.update(step)


def _holds(model: nn.Module, ema: EMA) -> bool:
    values = model.state_dict()
    return all(torch.equal(values[n], t.to(values[n].dtype)) for n, t in ema.average.items())


# ---- evaluation with bank members ----


@pytest.mark.parametrize("copy_swap", [True, False])
def test_a_member_s_swap_inside_autocast_after_a_training_forward_evaluates_its_averages(
    copy_swap: bool,
) -> None:
    """A training step under bf16 autocast, ``bank.update()``, then ``bank[1].swap()`` in the
    same autocast region: the eval forward gives what a plain copy given ``bank[1]``'s
    averages gives under autocast, and the live outputs come back after the block."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bank, separate = _bank_and_separate(model)
    for batch in _data(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _train_step(model, opt, batch)
            _update_all(bank, separate)
    _same_as_separate(bank, separate)
    model.eval()
    twin = net()
    twin.eval()
    bank[1].copy_to(twin)
    inputs = _data(1, seed=9)[0][0]
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        live = model(inputs)
        with bank[1].swap(copy=copy_swap):
            inside = model(inputs)
        after = model(inputs)
        want = twin(inputs)
    assert torch.equal(inside, want)
    assert not torch.equal(inside, live)
    assert torch.equal(after, live)


@pytest.mark.parametrize("outer", [0, 2])
def test_nested_swaps_of_two_members_show_each_and_unwind_exactly(outer: int) -> None:
    """``bank[a].swap()`` around ``bank[b].swap()``: each block shows its member's averages,
    the outer's again after the inner, the live bits after both, and no member changed."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bank = EMABank(model, CONFIGS)
    for batch in _data(3):
        _train_step(model, opt, batch)
        bank.update()
    live, before = live_values(model), [_bits(e) for e in bank]
    inner = 1
    with torch.no_grad(), bank[outer].swap():
        assert _holds(model, bank[outer])
        with bank[inner].swap():
            assert _holds(model, bank[inner])
        assert _holds(model, bank[outer])
    same(live_values(model), live)
    for ema, bits in zip(bank, before, strict=True):
        same(_bits(ema), bits)


@pytest.mark.usefixtures("host_kernels")
def test_a_no_copy_swap_of_a_member_between_updates_leaves_the_run_unchanged() -> None:
    """``bank[k].swap(copy=False)`` for evaluation after every step (the model pointed at the
    shadows the fused plan blends): the run continues bit-equal to separate EMAs."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bank, separate = _bank_and_separate(model)
    model_inputs = _data(1, seed=9)[0][0]
    for k, batch in enumerate(_data(5)):
        _train_step(model, opt, batch)
        _update_all(bank, separate)
        model.eval()
        with torch.no_grad(), bank[k % 3].swap(copy=False):
            model(model_inputs)
        model.train()
    _same_as_separate(bank, separate)


# ---- steps: accumulation, skipped steps, members updated alone ----


@pytest.mark.usefixtures("host_kernels")
def test_gradient_accumulation_with_explicit_optimizer_steps_equals_separate_emas() -> None:
    """Four micro-batches per optimizer step, ``bank.update(opt_step)`` after each optimizer
    step (members with intervals 1 and 2): bit-equal to separate EMAs given the same steps."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bank, separate = _bank_and_separate(model)
    for i, (inputs, targets) in enumerate(_data(12)):
        ((model(inputs) - targets).pow(2).mean() / 4).backward()
        if (i + 1) % 4 == 0:
            opt.step()
            opt.zero_grad()
            _update_all(bank, separate, (i + 1) // 4)
    _same_as_separate(bank, separate)
    assert [e.step for e in bank] == [3, 3, 3]


def test_a_grad_scaler_that_skips_steps_feeds_the_bank_the_params_it_kept() -> None:
    """A ``GradScaler`` whose first steps are skipped (inf gradients at a huge scale): the
    bank's updates after them equal separate EMAs' bit for bit and stay finite."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1)
    bank, separate = _bank_and_separate(model)
    for step, (inputs, targets) in enumerate(_data(4), start=1):
        opt.zero_grad()
        scaler.scale((model(inputs) - targets).pow(2).mean() * 1e30).backward()
        scaler.step(opt)
        scaler.update()
        _update_all(bank, separate, step)
    _same_as_separate(bank, separate)
    for ema in bank:
        assert all(torch.isfinite(t).all() for t in ema.average.values())


@pytest.mark.usefixtures("host_kernels")
def test_a_member_updated_alone_then_the_bank_equals_separate_emas() -> None:
    """``bank[0].update()`` called directly between bank updates (a user evaluating one EMA
    more often): that member runs one step ahead, and every member stays bit-equal to a
    separate EMA given the same calls."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bank, separate = _bank_and_separate(model)
    for k, batch in enumerate(_data(4)):
        _train_step(model, opt, batch)
        _update_all(bank, separate)
        if k == 1:
            bank[0].update()
            separate[0].update()
    _same_as_separate(bank, separate)
    assert [e.step for e in bank] == [5, 4, 4]


@pytest.mark.usefixtures("host_kernels")
def test_a_member_loaded_alone_mid_run_is_blended_from_the_loaded_shadows() -> None:
    """``bank[1].load_state_dict(other.state_dict())`` mid-run (a member restored alone):
    the next bank update blends the loaded shadows, as a separate EMA loading the same does."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bank, separate = _bank_and_separate(model)
    donor = EMA(net(), config=CONFIGS[1])
    with torch.no_grad():
        for t in donor.average.values():
            if t.is_floating_point():
                t.add_(5.0)
    donor.update(2)
    for k, batch in enumerate(_data(3)):
        _train_step(model, opt, batch)
        _update_all(bank, separate, k + 3)
        if k == 0:
            bank[1].load_state_dict(donor.state_dict())
            separate[1].load_state_dict(donor.state_dict())
    _same_as_separate(bank, separate)


@pytest.mark.usefixtures("host_kernels")
def test_a_tensor_step_between_host_steps_equals_separate_emas() -> None:
    """``bank.update(torch.tensor(t))`` on odd steps (each EMA by its own routes) and
    ``bank.update(t)`` on even ones (fused): bit-equal to separate EMAs given the same steps."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bank, separate = _bank_and_separate(model)
    for step, batch in enumerate(_data(4), start=1):
        _train_step(model, opt, batch)
        given = torch.tensor(step) if step % 2 else step
        bank.update(given)
        for ema in separate:
            ema.update(given)
    _same_as_separate(bank, separate)


@pytest.mark.usefixtures("host_kernels")
def test_a_bank_update_under_inference_mode_equals_a_plain_one() -> None:
    """``bank.update()`` inside ``torch.inference_mode()`` (an eval loop that updates):
    every member equals a separate EMA updated outside it, and no shadow becomes an
    inference tensor."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bank, separate = _bank_and_separate(model)
    for batch in _data(3):
        _train_step(model, opt, batch)
        with torch.inference_mode():
            bank.update()
        for ema in separate:
            ema.update()
    _same_as_separate(bank, separate)
    for ema in bank:
        assert not any(t.is_inference() for t in ema.state_dict()["shadow"].values())


def test_a_write_inside_one_member_s_no_copy_swap_reaches_only_that_member() -> None:
    """A training write inside ``bank[1].swap(copy=False)``: the swap raises on exit, the
    write reached ``bank[1]``'s shadow only (the README's rule for ``copy=False``), the other
    members kept their bits, the live weights came back, and the bank updates on."""
    model = net()
    bank = EMABank(model, CONFIGS)
    bank.update()
    live, before = live_values(model), [_bits(e) for e in bank]
    seen = pytest.raises(RuntimeError, match="written inside the block")
    with seen, bank[1].swap(copy=False), torch.no_grad():
        model[0].weight.add_(1.0)
    same(live_values(model), live)
    same(_bits(bank[0]), before[0])
    same(_bits(bank[2]), before[2])
    assert torch.equal(bank[1].average["0.weight"], before[1]["0.weight"] + 1.0)
    bank.update()
    assert [e.step for e in bank] == [2, 2, 2]


# ---- the model changed after the bank was built ----


@pytest.mark.usefixtures("host_kernels")
def test_params_moved_to_shared_memory_are_followed_by_every_member() -> None:
    """``model.share_memory()`` mid-run (before handing it to workers) moves every param's
    storage: the bank follows, bit-equal to separate EMAs."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bank, separate = _bank_and_separate(model)
    data = _data(3)
    _train_step(model, opt, data[0])
    _update_all(bank, separate)
    model.share_memory()
    for batch in data[1:]:
        _train_step(model, opt, batch)
        _update_all(bank, separate)
    _same_as_separate(bank, separate)


@pytest.mark.parametrize("how", ["channels_last", "transposed_data"])
def test_a_param_made_strided_in_place_after_the_bank_equals_separate_emas(
    how: str, host_kernels: str
) -> None:
    """``model.to(memory_format=torch.channels_last)`` after the bank was built (a common
    step before training a conv net), or ``layer.weight.data = layer.weight.data.t()``: the
    same Parameter objects now hold strided memory, which the README says updates per EMA;
    every member equals a separate EMA (which handles it, numba on or off)."""
    torch.manual_seed(0)
    if how == "channels_last":
        model: nn.Module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    else:
        model = nn.Sequential(nn.Linear(4, 4))
    bank, separate = _bank_and_separate(model)
    _update_all(bank, separate)
    if how == "channels_last":
        model.to(memory_format=torch.channels_last)
    else:
        model[0].weight.data = model[0].weight.data.t()
    assert not model[0].weight.is_contiguous()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    _update_all(bank, separate)
    _same_as_separate(bank, separate)


@pytest.mark.usefixtures("host_kernels")
def test_a_model_made_float64_after_the_bank_is_followed_by_every_member() -> None:
    """``model.to(torch.float64)`` after the bank was built: every member's shadows become
    float64, bit-equal to separate EMAs that saw the same conversion."""
    model = net()
    opt_steps = _data(2)
    bank, separate = _bank_and_separate(model)
    _update_all(bank, separate)
    model.to(torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for inputs, targets in opt_steps:
        _train_step(model, opt, (inputs.double(), targets.double()))
        _update_all(bank, separate)
    _same_as_separate(bank, separate)
    assert all(e.average["0.weight"].dtype == torch.float64 for e in bank)


@pytest.mark.usefixtures("host_kernels")
def test_a_bf16_round_trip_of_the_model_keeps_every_member_s_shadows() -> None:
    """``model.bfloat16()`` then training then ``model.float()``: every member equals a
    separate EMA bit for bit, and its shadows stay float32."""
    model = net()
    bank, separate = _bank_and_separate(model)
    _update_all(bank, separate)
    model.bfloat16()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    _update_all(bank, separate)
    model.float()
    _update_all(bank, separate)
    _same_as_separate(bank, separate)
    assert all(e.average["0.weight"].dtype == torch.float32 for e in bank)


@pytest.mark.usefixtures("host_kernels")
def test_a_param_replaced_by_a_strided_copy_is_followed_by_every_member() -> None:
    """``layer.weight = nn.Parameter(w.t().contiguous().t())`` mid-run (not fusable: strided):
    each member blends the new tensor, bit-equal to separate EMAs, and ``bank[k].swap()``
    writes into it keeping its strides."""
    model = net()
    bank, separate = _bank_and_separate(model)
    _update_all(bank, separate)
    model[0].weight = nn.Parameter((model[0].weight.detach() + 1.0).t().contiguous().t())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for batch in _data(2):
        _train_step(model, opt, batch)
        _update_all(bank, separate)
    _same_as_separate(bank, separate)
    stride, live = model[0].weight.stride(), model[0].weight.detach().clone()
    with torch.no_grad(), bank[2].swap():
        assert model[0].weight.stride() == stride
        assert torch.equal(model[0].weight, bank[2].average["0.weight"])
    assert torch.equal(model[0].weight, live)


def test_a_compiled_model_s_bank_equals_separate_emas_and_swaps() -> None:
    """A bank of ``torch.compile(model)`` trained through the compiled module: the names are
    the plain model's, each member equals a separate EMA of the plain model, and the
    compiled forward inside ``bank[0].swap()`` gives the averages' outputs."""
    model = net()
    compiled = torch.compile(model, backend="eager")
    bank = EMABank(compiled, CONFIGS)
    separate = [EMA(model, config=c) for c in CONFIGS]
    assert bank[0].names == separate[0].names
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for batch in _data(3):
        _train_step(compiled, opt, batch)
        _update_all(bank, separate)
    _same_as_separate(bank, separate)
    model.eval()
    inputs = _data(1, seed=9)[0][0]
    twin = net()
    twin.eval()
    bank[0].copy_to(twin)
    with torch.no_grad():
        live = compiled(inputs)
        with bank[0].swap():
            inside = compiled(inputs)
        assert torch.equal(compiled(inputs), live)
        assert torch.equal(inside, twin(inputs))


@pytest.mark.usefixtures("host_kernels")
@pytest.mark.parametrize("buffers", ["average", "copy", "skip"])
def test_batchnorm_buffers_under_each_policy_equal_separate_emas(buffers: str) -> None:
    """BatchNorm statistics and its integer counter under ``buffers=`` average, copy, skip:
    every member equals a separate EMA with that policy after a training run."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bank, separate = _bank_and_separate(model, buffers=buffers)
    for batch in _data(3):
        _train_step(model, opt, batch)
        _update_all(bank, separate)
    _same_as_separate(bank, separate)
    tracked = "1.running_mean" in bank[0].names
    assert tracked == (buffers != "skip")


def test_copy_to_under_freeze_keeps_the_counter_and_writes_the_float_averages() -> None:
    """``non_float="freeze"`` bank: ``bank[k].copy_to(other)`` writes the float averages and
    leaves the other model's integer counter alone, as a separate EMA's ``copy_to`` does."""
    configs = [Config(schedule=0.5, non_float="freeze", buffers="average"),
               Config(schedule=0.9, non_float="freeze", buffers="average")]  # fmt: skip
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bank, separate = _bank_and_separate(model, configs)
    for batch in _data(3):
        _train_step(model, opt, batch)
        _update_all(bank, separate)
    _same_as_separate(bank, separate)
    for k in range(2):
        got, want = net(), net()
        with torch.no_grad():
            got[1].num_batches_tracked.fill_(7)
            want[1].num_batches_tracked.fill_(7)
        bank[k].copy_to(got)
        separate[k].copy_to(want)
        same(live_values(got), live_values(want))
        assert int(got[1].num_batches_tracked) == 7
        assert torch.equal(got[0].weight, bank[k].average["0.weight"])


# ---- resume, copies, snapshots ----


def _power_bank(model: nn.Module, folder: Path) -> EMABank:
    return EMABank(model, sigma_rels=(0.05, 0.10), snapshot_every=2, snapshot_dir=folder)


def test_snapshots_continue_at_the_right_steps_after_a_resume_into_a_fresh_bank(
    tmp_path: Path,
) -> None:
    """A power-function bank writing snapshots every 2 steps, stopped at step 3, its
    ``state_dict`` saved and loaded into a fresh bank of a fresh model that continues: the
    snapshot files are those of an uninterrupted run, byte for byte."""
    from ema_core.posthoc import list_snapshots

    data = _data(6)
    whole, parts = tmp_path / "whole", tmp_path / "parts"

    def trained(model: nn.Module, bank: EMABank, batches: list[Batch], first: int) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step, batch in enumerate(batches, start=first):
            _train_step(model, opt, batch)
            bank.update(step)

    model = net()
    trained(model, _power_bank(model, whole), data, 1)
    model = net()
    bank = _power_bank(model, parts)
    trained(model, bank, data[:3], 1)
    path = tmp_path / "bank.pt"
    torch.save({"model": model.state_dict(), "bank": bank.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    fresh = net()
    fresh.load_state_dict(saved["model"])
    resumed = _power_bank(fresh, parts)
    resumed.load_state_dict(saved["bank"])
    trained(fresh, resumed, data[3:], 4)
    names = sorted(p.name for p in whole.iterdir())
    assert names == sorted(p.name for p in parts.iterdir())
    assert sorted({s.step for s in list_snapshots(parts)}) == [2, 4, 6]
    for name in names:
        assert (whole / name).read_bytes() == (parts / name).read_bytes(), name


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_bank_copied_mid_run_continues_independently_and_equally(how: str) -> None:
    """``copy.deepcopy((model, bank))`` or a pickle round trip of both mid-run: the copy's
    members track the copied model, and both runs continue bit-equal to each other while the
    original's shadows are never the copy's."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bank = EMABank(model, CONFIGS)
    data = _data(4)
    for batch in data[:2]:
        _train_step(model, opt, batch)
        bank.update()
    pair = (model, bank)
    model2, bank2 = copy.deepcopy(pair) if how == "deepcopy" else pickle.loads(pickle.dumps(pair))
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    for batch in data[2:]:
        _train_step(model, opt, batch)
        bank.update()
        _train_step(model2, opt2, batch)
        bank2.update()
    for a, b in zip(bank, bank2, strict=True):
        same(_bits(a), _bits(b))
        assert a.average["0.weight"].data_ptr() != b.average["0.weight"].data_ptr()
    with torch.no_grad(), bank2[0].swap():
        assert _holds(model2, bank2[0])
    assert not _holds(model, bank[0])
