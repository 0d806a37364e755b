"""``ema_core.torch.EMABank``: K EMAs updated in one pass over the params, each bit-equal to a
separate ``EMA`` with its config (mixed schedules, inits and intervals; fp32/bf16/fp16 params;
buffers; with numba and without), resumed bit for bit, writing snapshots. Bad input:
``test_bank_torch_refusals``."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ema_core import Config, schedules  # noqa: E402
from ema_core.torch import EMA, EMABank  # noqa: E402
from ema_core.torch._bank_fused import lerp_form  # noqa: E402

pytestmark = pytest.mark.usefixtures("host_kernels")

CONFIGS = [
    Config(schedule=0.99, init="copy"),
    Config(schedule=schedules.power_function(sigma_rel=0.05), init="copy", interval=3),
    Config(schedule=schedules.warmup(0.999), init="params"),
    Config(schedule=0.9, init="zeros"),
    Config(schedule=schedules.power_function(sigma_rel=0.10), init="copy", compensate=False,
           interval=2),
]  # fmt: skip


class Net(torch.nn.Module):
    """Many small tensors, a large one (cut over threads), a BatchNorm with its counter."""

    def __init__(self, dtype: torch.dtype, big: int = 0) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            *[torch.nn.Linear(8, 8) for _ in range(12)], torch.nn.BatchNorm1d(8)
        )
        self.big = torch.nn.Parameter(torch.randn(big)) if big else None
        self.to(dtype)


def _nudge(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen).to(t.dtype))
            else:
                t.add_(1)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.is_floating_point() and t.ndim else t


def _assert_same(bank: EMABank, separate: list[EMA]) -> None:
    for got, want in zip(bank, separate, strict=True):
        a, b = got.average, want.average
        assert list(a) == list(b)
        for name in a:
            assert torch.equal(_bits(a[name]), _bits(b[name])), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("buffers", ["average", "copy"])
def test_every_average_equals_a_separate_ema_bit_for_bit(dtype, buffers, host_kernels):
    gen = torch.Generator().manual_seed(0)
    model = Net(dtype, big=2_100_000 if buffers == "copy" else 0)
    bank = EMABank(model, CONFIGS, buffers=buffers)
    separate = [EMA(model, config=c, buffers=buffers) for c in CONFIGS]
    for step in range(1, 26):
        _nudge(model, gen)
        explicit = step if step % 2 else None
        bank.update(explicit)
        for ema in separate:
            ema.update(explicit)
    _assert_same(bank, separate)
    fused = bank._fused
    assert fused is not None
    if host_kernels == "off":
        assert not fused.forms  # without numba each EMA updates alone
    elif dtype != torch.float32 or lerp_form(dtype) is not None:
        averaged = len(list(model.parameters())) + (2 if buffers == "average" else 0)
        assert len(fused.forms) == averaged  # the bank kernel ran for every averaged tensor
        if buffers == "copy" and torch.get_num_threads() > 1:  # the big tensor was cut
            assert len(fused.plans[0].shares) == 2
    for ema in bank:
        assert ema.step == 25


def test_the_bank_follows_params_whose_memory_moved():
    gen = torch.Generator().manual_seed(4)
    model = Net(torch.bfloat16)
    bank = EMABank(model, CONFIGS[:3])
    separate = [EMA(model, config=c) for c in CONFIGS[:3]]
    for step in range(8):
        if step in (3, 6):  # the same Parameter object, new storage (a checkpoint load does it)
            for p in model.parameters():
                p.data = p.data.clone()
        _nudge(model, gen)
        bank.update()
        for ema in separate:
            ema.update()
    _assert_same(bank, separate)


def test_a_float32_bank_fuses_with_torchs_own_lerp_arithmetic(host_kernels):
    if host_kernels == "off":
        assert lerp_form(torch.float32) is None  # without numba: K foreach lerps
        return
    assert lerp_form(torch.float32) in ("lerp-fma", "lerp-muladd")
    assert lerp_form(torch.float64) in ("lerp-fma", "lerp-muladd")


def test_resume_continues_the_bank_bit_for_bit(tmp_path):
    gen = torch.Generator().manual_seed(1)
    model = Net(torch.bfloat16)
    bank = EMABank(model, CONFIGS)
    for _ in range(10):
        _nudge(model, gen)
        bank.update()
    path = tmp_path / "bank.pt"
    torch.save(bank.state_dict(), path)
    fresh = EMABank(model, CONFIGS)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    for _ in range(10):
        _nudge(model, gen)
        bank.update()
        fresh.update()
    _assert_same(fresh, list(bank))
    assert [e.step for e in fresh] == [20] * len(CONFIGS)


def test_sigma_rels_build_edm2_power_functions():
    model = torch.nn.Linear(4, 4)
    bank = EMABank(model, sigma_rels=[0.05, 0.10], interval=4)
    assert bank.sigma_rels == (0.05, 0.10)
    for ema, s in zip(bank, (0.05, 0.10), strict=True):
        assert ema.config == Config(
            schedule=schedules.power_function(sigma_rel=s), init="copy", interval=4,
            buffers="copy",
        )  # fmt: skip
    assert len(bank) == 2 and bank[1] is bank.emas[1]


def test_swap_and_copy_to_work_on_a_member():
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    bank = EMABank(model, [Config(schedule=0.5, init="params"), Config(schedule=0.0)])
    live = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    bank.update()
    with bank[0].swap():
        assert torch.equal(model.weight, live + 1.0)
    target = torch.nn.Linear(3, 1, bias=False)
    bank[1].copy_to(target)
    assert torch.equal(target.weight, live + 2.0)


def test_snapshot_every_writes_one_snapshot_per_ema_at_its_steps(tmp_path):
    posthoc = pytest.importorskip("ema_core.posthoc", reason="posthoc not built yet")

    gen = torch.Generator().manual_seed(2)
    model = torch.nn.Linear(4, 3)
    bank = EMABank(model, sigma_rels=[0.05, 0.10], interval=2, snapshot_every=4,
                   snapshot_dir=tmp_path)  # fmt: skip
    for _ in range(9):
        _nudge(model, gen)
        bank.update()
    found = posthoc.list_snapshots(tmp_path)
    assert [(i.step, i.sigma_rel, i.interval) for i in found] == [
        (4, 0.05, 2), (4, 0.10, 2), (8, 0.05, 2), (8, 0.10, 2),
    ]  # fmt: skip
    assert found[0].names == ("weight", "bias")


def test_snapshot_every_decides_each_ema_by_its_own_step(tmp_path):
    """EMAs a step apart (one updated alone) each write at their own multiples, as the JAX
    bank does (tests/test_bank_hostile_jax.py)."""
    posthoc = pytest.importorskip("ema_core.posthoc", reason="posthoc not built yet")

    model = torch.nn.Linear(4, 3)
    bank = EMABank(model, sigma_rels=[0.05, 0.10], snapshot_every=2, snapshot_dir=tmp_path)
    bank[1].update()
    for _ in range(4):
        bank.update()
    assert [ema.step for ema in bank] == [4, 5]
    found = posthoc.list_snapshots(tmp_path)
    assert [(i.step, i.sigma_rel) for i in found] == [(2, 0.05), (2, 0.10), (4, 0.05), (4, 0.10)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("device", [None, "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_cuda_bank_equals_separate_emas_bit_for_bit(device, dtype):
    gen = torch.Generator().manual_seed(3)
    model = Net(dtype).to("cuda")
    bank = EMABank(model, CONFIGS, device=device)
    separate = [EMA(model, config=c, device=device) for c in CONFIGS]
    for step in range(1, 12):
        _nudge_cuda(model, gen)
        bank.update(torch.tensor(step, device="cuda") if step % 3 == 0 else None)
        for ema in separate:
            ema.update(torch.tensor(step, device="cuda") if step % 3 == 0 else None)
    _assert_same(bank, separate)


def _nudge_cuda(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen).to(t))
