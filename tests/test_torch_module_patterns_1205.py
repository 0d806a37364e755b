"""torch ``EMA`` / ``EMABank`` promises a module-patterns hunt of 2026-12-05 found broken, each
pinned: a CPU tensor step kept by reference (the caller's ``step += 1`` after the call changed
the EMA's count), a bank given one-shot iterables (K constructors, one read), and
``swap(copy=False)`` inside a compiled function (the model left on the shadows)."""

from __future__ import annotations

import pytest
import torch

from ema_core import presets
from ema_core.torch import EMA, EMABank


def _train(step_as_tensor: bool) -> EMA:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1, bias=False)
    averager = EMA(model, config=presets.paddle(0.9))
    step: int | torch.Tensor = torch.tensor(1) if step_as_tensor else 1
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(value)
        averager.update(step)
        step += 1  # the loop's own counter, in place for a tensor
    return averager


def test_a_cpu_tensor_step_bumped_in_place_after_the_call_is_not_the_emas() -> None:
    by_int, by_tensor = _train(False), _train(True)
    assert int(by_tensor.step) == int(by_int.step) == 3
    assert torch.equal(by_tensor.average["weight"], by_int.average["weight"])
    assert int(by_tensor.state_dict()["step"]) == 3


def test_a_bank_keeps_its_own_copy_of_a_cpu_tensor_step() -> None:
    model = torch.nn.Linear(2, 1)
    bank = EMABank(model, sigma_rels=(0.05, 0.1))
    step = torch.tensor(5)
    bank.update(step)
    step += 10
    assert [int(e.step) for e in bank.emas] == [5, 5]
    bank.update()
    assert [int(e.step) for e in bank.emas] == [6, 6]


def test_a_bank_reads_a_generator_of_pairs_and_of_patterns_once() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].requires_grad_(False)
    pairs = ((n, p) for n, p in model.named_parameters() if p.requires_grad)
    bank = EMABank(pairs, sigma_rels=(0.05, 0.1))
    assert [e.names for e in bank.emas] == [("1.weight", "1.bias", "2.weight", "2.bias")] * 2
    frozen = ["0", "1"]
    bank = EMABank(model, sigma_rels=(0.05, 0.1), exclude=(f"{m}.*" for m in frozen))
    assert [e.names for e in bank.emas] == [("2.weight", "2.bias")] * 2


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_swap_without_copy_inside_a_compiled_function_restores_the_model(backend: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    averager = EMA(model, decay=0.0)
    with torch.no_grad():
        model.weight.add_(1.0)
    averager.update()  # averages: the weights + 1
    with torch.no_grad():
        model.weight.sub_(1.0)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    averages = {k: v.clone() for k, v in averager.average.items()}
    x = torch.randn(3, 4)

    @torch.compile(backend=backend)
    def evaluate(x: torch.Tensor) -> torch.Tensor:
        with averager.swap(copy=False):
            return model(x)

    out = evaluate(x)
    want = torch.nn.functional.linear(x, averages["weight"], averages["bias"])
    assert torch.allclose(out, want)
    assert all(torch.equal(model.state_dict()[k], live[k]) for k in live)
    assert model.weight.data_ptr() != averager._bound.shadows[0].data_ptr()
    assert all(torch.equal(averager.average[k], averages[k]) for k in averages)
