"""What a hunt for broken promises in the schedules and the config found (2026-12-04), fixed:

* a CPU torch tensor step computed the decay in torch float64 (a multiply by the reciprocal,
  torch's ``pow``): other bits than the same int step, which the README promises;
* ``Config(interval=2**31)`` (or ``every(..., 2**31)``) overflowed every JAX entry point with
  x64 off (a constant wider than the step's int32);
* ``correction="power"`` was not equal to ``"exact"`` for a constant decay once ``interval > 1``
  (its exponent counted calls, not the decays the shadow took).
"""

from __future__ import annotations

import numpy as np
import pytest

import ema_core as ema
from ema_core import schedules


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.num_updates(0.999),
        schedules.warmup(0.9999, inv_gamma=1.3, power=0.81),
        schedules.power_function(6.94),
    ],
    ids=["num_updates", "warmup", "power_function"],
)
def test_a_cpu_tensor_step_gives_the_bits_of_the_same_int_step(schedule: object) -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    gen = torch.Generator().manual_seed(0)
    shadow = torch.randn(1000, dtype=torch.float64, generator=gen)
    params = torch.randn(1000, dtype=torch.float64, generator=gen)
    config = ema.Config(schedule=schedule)  # type: ignore[arg-type]
    by_int = ema.ema_update(shadow.clone(), params, 1000, config=config)
    by_tensor = ema.ema_update(shadow.clone(), params, torch.tensor(1000), config=config)
    assert torch.equal(by_int, by_tensor)
    models = [torch.nn.Linear(30, 30).double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    emas = [EMA(m, config=config) for m in models]
    for t in range(1, 6):
        for m in models:
            with torch.no_grad():
                m.weight.mul_(1.01)
        emas[0].update(t * 97)
        emas[1].update(torch.tensor(t * 97))
    assert torch.equal(emas[0].average["weight"], emas[1].average["weight"])


def test_a_callable_schedule_still_gets_the_step_as_given() -> None:
    torch = pytest.importorskip("torch")
    seen: list[str] = []

    def schedule(t: object) -> float:
        seen.append(type(t).__name__)
        return 0.5

    ema.ema_update(torch.zeros(2), torch.ones(2), torch.tensor(3), schedule=schedule)
    ema.ema_update(torch.zeros(2), torch.ones(2), 3, schedule=schedule)
    assert seen == ["Tensor", "int"]


@pytest.mark.parametrize("compensate", [True, False])
def test_an_interval_past_int32_never_updates_under_jax_without_x64(compensate: bool) -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from ema_core.jax import make_update

    config = ema.Config(schedule=0.9, interval=2**31, compensate=compensate)
    params = {"w": jnp.ones(2)}
    state = ema.init({"w": jnp.zeros(2)}, config)
    for update in (make_update(config), lambda s, p: ema.update(s, p, config)):
        out = update(ema.init({"w": jnp.zeros(2)}, config), params)
        assert out.shadow["w"].tolist() == [0.0, 0.0] and int(out.step) == 1
    skip = schedules.every(0.9, 2**31, compensate=compensate)
    assert float(skip(jnp.asarray(5, jnp.int32))) == 1.0
    copy = ema.Config(schedule=0.9, init="copy", interval=2**31)
    assert int(make_update(copy)(ema.init(params, copy), params).step) == 1
    assert state.shadow["w"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(("interval", "compensate"), [(1, True), (3, True), (3, False)])
def test_power_correction_equals_exact_for_a_constant_decay_with_an_interval(
    interval: int, compensate: bool
) -> None:
    reads = {}
    for correction in ("exact", "power"):
        config = ema.Config(
            schedule=0.9,
            init="zeros",
            interval=interval,
            compensate=compensate,
            correction=correction,
        )
        state = ema.init({"w": np.zeros(1)}, config)
        reads[correction] = []
        for _ in range(7):
            state = ema.update(state, {"w": np.full(1, 5.0)}, config)
            reads[correction].append(float(ema.average(state, config)["w"][0]))
    np.testing.assert_allclose(reads["power"], reads["exact"], rtol=1e-12)
    assert reads["exact"][interval - 1 :] == pytest.approx([5.0] * (8 - interval))


def test_power_correction_of_the_torch_class_with_an_interval() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = torch.nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.fill_(5.0)
    config = ema.Config(schedule=0.9, init="zeros", interval=3, correction="power")
    target = EMA(model, config=config)
    for _ in range(4):  # step 4: one decay taken (at 3), not four
        target.update()
    assert torch.allclose(target.average["weight"], torch.full((2, 2), 5.0, dtype=torch.float64))
