"""A 0-d CPU tensor step (or a CPU ``decay=`` tensor) is read as a host value: the update
takes the host-float routes (one fused call per group, the host engine for half params) and
gives the same bits as the same Python-int step; it used to take the per-tensor device routes
(a lerp and two selects per tensor, the core leaf by leaf for half params)."""

from __future__ import annotations

import copy

import pytest

import ema_core as ema
from ema_core import Config, schedules

torch = pytest.importorskip("torch")

from ema_core.backends.torch import _routes  # noqa: E402
from ema_core.torch import EMA, EMABank  # noqa: E402
from tests.stateful_models import bits, snapshot  # noqa: E402
from tests.torch_models import copies, net, nudge, same  # noqa: E402

HOST_ROUTES = {"skip", "copy", "foreach-lerp", "host-engine"}
CONFIG = Config(schedule=schedules.warmup(0.999), init="copy")


@pytest.fixture
def taken(monkeypatch):
    """The routes ``_routes.apply`` takes, in order."""
    seen: list[str] = []
    real = _routes.routes

    def spy(plan, decay):
        out = real(plan, decay)
        seen.extend(way for _, way in out)
        return out

    monkeypatch.setattr(_routes, "routes", spy)
    return seen


def _mixed_model():
    model = net()
    model[3].to(torch.bfloat16)  # a float32 shadow over bf16 params: the mixed bucket
    return model


def test_the_ema_class_blends_a_cpu_tensor_step_as_the_int_step(taken):
    model = _mixed_model()
    by_int, by_tensor = EMA(model, config=CONFIG), EMA(model, config=CONFIG)
    for t in range(1, 4):
        nudge(model, t)
        by_int.update(t)
        by_tensor.update(torch.tensor(t))
        same(copies(by_tensor), copies(by_int))
    assert set(taken) <= HOST_ROUTES and "host-engine" in taken
    assert isinstance(by_tensor.step, torch.Tensor) and int(by_tensor.step) == 3  # its counter


def test_ema_update_blends_a_cpu_tensor_step_or_decay_as_host_values(taken):
    torch.manual_seed(0)
    params = {"w": torch.randn(64), "h": torch.randn(64).bfloat16()}
    shadow = {n: p.float() for n, p in params.items()}
    twin = copy.deepcopy(shadow)
    for t in range(1, 4):
        ema.ema_update(shadow, params, torch.tensor(t), schedule=schedules.warmup(0.99))
        ema.ema_update(twin, params, t, schedule=schedules.warmup(0.99))
        same(shadow, twin)
    ema.ema_update(shadow, params, 5, decay=torch.tensor(0.5, dtype=torch.float64))
    ema.ema_update(twin, params, 5, decay=0.5)
    same(shadow, twin)
    assert set(taken) <= HOST_ROUTES and "host-engine" in taken


def test_a_cpu_tensor_decay_of_one_skips_as_a_float_one_does(taken):
    params = {"w": torch.ones(4)}
    shadow = {"w": torch.zeros(4)}
    ema.ema_update(shadow, params, 1, decay=torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(shadow["w"], torch.zeros(4)) and taken == []  # nothing to move


def test_the_bank_blends_cpu_tensor_steps_as_int_steps():
    model = _mixed_model()
    configs = [CONFIG, Config(0.9)]
    by_int, by_tensor = EMABank(model, configs), EMABank(model, configs)
    for t in range(1, 4):
        nudge(model, t)
        by_int.update(t)
        by_tensor.update(torch.tensor(t))
    for k in range(len(configs)):
        same(copies(by_tensor[k]), copies(by_int[k]))


def test_cpu_tensor_step_blends_as_the_int_step_under_an_interval() -> None:
    """README "Choices": a CPU tensor step blends exactly as the same int step does. Under
    ``Config(interval=2)`` the compensated product's rate at a CPU tensor step came out one ulp
    off the int step's (found by the machine: ``ema.update``'s tensor count against
    ``ema_update``'s int step)."""
    config = ema.Config(schedule=schedules.warmup(0.999, power=0.75), interval=2)
    gen = torch.Generator().manual_seed(0)
    shadow, params = (torch.randn(1000, dtype=torch.float64, generator=gen) for _ in range(2))
    model = torch.nn.Linear(30, 30).double()
    by_int, by_tensor = EMA(model, config=config), EMA(model, config=config)
    with torch.no_grad():
        model.weight.add_(1.0)
    for t in (8, 20):
        host = ema.ema_update(shadow.clone(), params, t, config=config)
        cpu = ema.ema_update(shadow.clone(), params, torch.tensor(t), config=config)
        assert bits(cpu) == bits(host), t
        by_int.update(t)
        by_tensor.update(torch.tensor(t))
        assert snapshot(by_tensor)["weight"] == snapshot(by_int)["weight"]
        assert bits(by_tensor.average["weight"]) == bits(by_int.average["weight"]), t
