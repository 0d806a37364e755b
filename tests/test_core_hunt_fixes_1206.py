"""Core promises a README-claims hunt of 2026-12-06 found broken, each pinned:

* the bias-correction weight was updated as ``d * w + r`` with ``d`` rounded (float32 under JAX
  without x64) beside an accurate ``r``: a weight of 1 drifted off 1 under an ``interval``
  (``average`` then refused the EMA's own config, ``checkpoint.save`` a weight above 1), and a
  zero-started read settled up to 1e-3 off; it is now updated in the blend's own form;
* a bad ``EMA_CORE_NUMBA`` raised after torch's float32 group was written;
* torch ``complex32`` under ``Config(dtype="float32")`` got a real shadow;
* ``guard_finite`` skipped copied floating buffers (torch ``buffers="copy"``)."""

from __future__ import annotations

import pytest

import ema_core as ema
from ema_core import _settings, schedules

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("interval", [2, 3, 5])
def test_a_jax_weight_of_one_stays_one_under_an_interval(interval: int) -> None:
    config = ema.Config(schedule=schedules.constant(0.999), interval=interval)
    params = {"w": jnp.ones(3)}
    state = ema.init(params, config)
    update = jax.jit(lambda s, p: ema.update(s, p, config))
    for _ in range(60):
        state = update(state, params)
    assert float(state.weight) == 1.0
    ema.average(state, config)  # refused before: "it was made with init='zeros'"


@pytest.mark.parametrize(("decay", "steps"), [(0.9999, 20_000), (0.99999, 30_000)])
def test_a_zero_started_jax_read_of_a_constant_is_the_constant(decay: float, steps: int) -> None:
    config = ema.Config(schedule=schedules.constant(decay), init="zeros")
    params = {"w": jnp.ones(())}

    def run(state: ema.EMAState) -> ema.EMAState:
        return jax.lax.fori_loop(0, steps, lambda _, s: ema.update(s, params, config), state)

    state = jax.jit(run)(ema.init(params, config))
    average = float(ema.average(state, config)["w"])
    assert abs(average - 1.0) <= 4e-7  # it was 1.00011 (0.9999) and 1.0003 (0.99999)


def test_a_bad_numba_switch_is_refused_before_any_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMA_CORE_NUMBA", "false")
    monkeypatch.setattr(_settings, "_kept", [])  # read again, as in a fresh process
    shadow = {"w32": torch.zeros(3), "wbf": torch.zeros(3)}
    params = {"w32": torch.ones(3), "wbf": torch.ones(3, dtype=torch.bfloat16)}
    with pytest.raises(ValueError, match="EMA_CORE_NUMBA"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert all(not bool(v.any()) for v in shadow.values())  # w32 was blended to 0.5 before


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_a_complex32_leaf_keeps_a_complex_shadow_under_a_real_dtype_policy() -> None:
    param = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex32)
    config = ema.Config(schedule=0.5, dtype="float32")
    state = ema.init({"z": param}, config)
    assert state.shadow["z"].dtype == torch.complex64  # complex, widened as a half leaf is
    state = ema.update(state, {"z": param * 3}, config)
    got = state.shadow["z"]
    assert torch.equal(got, torch.tensor([2 + 4j, 6 - 2j], dtype=torch.complex64))


def test_a_numpy_integer_decay_is_taken_as_the_int_it_holds() -> None:
    import numpy as np

    shadow, params = {"w": np.zeros(2)}, {"w": np.ones(2)}
    ema.ema_update(shadow, params, 1, decay=np.int64(1))  # a TypeError, while decay=1 is taken
    assert not shadow["w"].any()
    ema.ema_update(shadow, params, 1, decay=np.int32(0))
    assert (shadow["w"] == 1.0).all()
    with pytest.raises(TypeError, match="decay must be"):
        ema.ema_update(shadow, params, 1, decay=np.bool_(True))


@pytest.mark.parametrize("buffers", ["average", "copy"])
def test_guard_finite_refuses_non_finite_copied_buffers_too(buffers: str) -> None:
    """A BatchNorm's statistics gone NaN in an overflowing half forward (the optimizer step
    skipped, the params finite): copied buffers were not checked and the NaN reached the EMA."""
    from ema_core import Config

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    from ema_core.torch import EMA

    averager = EMA(model, config=Config(schedule=0.5, guard_finite=True, buffers=buffers))
    before = {k: v.clone() for k, v in averager.average.items()}
    with torch.no_grad():
        model[1].running_var[0] = float("nan")
    with pytest.raises(ValueError, match=r"1\.running_var'\] holds NaN"):
        averager.update()
    assert averager.step == 0
    assert all(torch.equal(v, before[k]) for k, v in averager.average.items())
