"""Tests from the mutation audit of 2026-12-03 (b): the eager JAX scalars
(``ema_core.backends.jax._scalars``: which states and schedules take the compiled route, the
cache of the last ``SIZE`` configs), the leaf decay's nudge, the torch ``copy_to`` under
``non_float="freeze"`` and the negative ``copy_through`` of ``schedules.gated``. Each pins a
documented behaviour that a plausible change of these modules broke while the suite passed
(``/work/notes/mutants_1203b.md``)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import presets, schedules
from ema_core._ops import Ops


def _jax() -> tuple[Any, Any]:
    """``jax`` and ``jax.numpy``, or a skip where JAX is not installed."""
    jax = pytest.importorskip("jax")
    return jax, pytest.importorskip("jax.numpy")


def _params(value: float) -> dict[str, Any]:
    """A one-leaf float32 JAX tree holding ``value``."""
    _, jnp = _jax()
    return {"w": jnp.full((3,), value, jnp.float32)}


# ---- which states take the compiled scalars ----


def test_a_numpy_step_beside_a_jax_weight_stays_numpy_and_the_weight_jax() -> None:
    """The compiled scalars are for a state whose step and weight are both JAX arrays; a state
    with a numpy step beside a JAX weight takes the eager route, and each scalar keeps its own
    namespace ("a numpy step/weight beside JAX shadows stays numpy")."""
    jax, _ = _jax()
    config = ema.Config(schedule=schedules.num_updates(0.9), init="zeros")
    start = ema.init(_params(0.0), config)
    mixed = start._replace(step=np.asarray(start.step))
    for t in range(1, 4):
        mixed = ema.update(mixed, _params(float(t)), config)
    assert isinstance(mixed.step, np.ndarray) and int(mixed.step) == 3
    assert isinstance(mixed.weight, jax.Array)


@dataclass(frozen=True)
class _Dial(schedules.Schedule):
    """A user's own ``Schedule`` subclass: its decay is whatever ``SETTING`` holds at the call."""

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        decay = _DIAL_SETTING["decay"]
        return ops.const(decay), ops.const(1.0 - decay)


_DIAL_SETTING = {"decay": 1.0}


def test_a_user_schedule_subclass_reading_a_changing_setting_sees_each_value() -> None:
    """Only ema-core's own schedule classes are compiled: a user's ``Schedule`` subclass (not
    a callable) may read a setting that changes between calls, and an eager update honours
    the value of the moment (a traced copy would keep the first)."""
    config = ema.Config(schedule=_Dial(), init="params")
    state = ema.init(_params(0.0), config)
    _DIAL_SETTING["decay"] = 1.0
    try:
        for t in range(1, 4):
            state = ema.update(state, _params(float(t)), config)
        np.testing.assert_array_equal(state.shadow["w"], np.zeros(3, np.float32))  # kept
        _DIAL_SETTING["decay"] = 0.0
        state = ema.update(state, _params(9.0), config)
    finally:
        _DIAL_SETTING["decay"] = 1.0
    np.testing.assert_array_equal(state.shadow["w"], np.full(3, 9.0, np.float32))  # copied


def test_the_compiled_scalars_keep_the_last_size_configs_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The module keeps "the last ``SIZE`` configs": after ``SIZE + 1`` configs, the first one
    used is dropped; a config used again counts as recent (least recently used goes first), and
    the config of the latest update is always kept."""
    _jax()
    from ema_core.backends.jax import _scalars

    monkeypatch.setattr(_scalars, "_HEADS", OrderedDict())
    size = _scalars.SIZE
    configs = [
        ema.Config(schedule=schedules.warmup(0.9 + i / 1000), init="params")
        for i in range(size + 2)
    ]
    states = [ema.init(_params(0.0), c) for c in configs]

    def use(i: int) -> None:
        states[i] = ema.update(states[i], _params(1.0), configs[i])

    for i in range(size):
        use(i)
    assert list(_scalars._HEADS) == configs[:size]
    use(0)  # now the most recent: configs[1] is the least recently used
    use(size)
    assert len(_scalars._HEADS) == size
    assert configs[size] in _scalars._HEADS and configs[0] in _scalars._HEADS
    assert configs[1] not in _scalars._HEADS
    use(size + 1)
    assert len(_scalars._HEADS) == size and configs[size + 1] in _scalars._HEADS
    assert configs[2] not in _scalars._HEADS


# ---- the leaf decay's nudge and the weight ----


@dataclass(frozen=True)
class _NearOne(schedules.Schedule):
    """A user's ``Schedule`` subclass (computed eagerly): decay ``1 - 1e-9``, rate ``1e-9``."""

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        return ops.const(1.0 - 1e-9), ops.const(1e-9)


def test_a_decay_rounding_to_one_still_blends_on_the_eager_route() -> None:
    """``leaf_decay``: a decay that rounds to 1 in float32 while its rate is not 0 becomes the
    float below 1, "so that it still blends by its rate and is not taken for a skip". A user's
    schedule class runs eagerly and hands the leaves a float32 array decay of exactly 1 (nudged
    inside the compiled leaf update): the shadow moves by ``rate * (p - s)``, the bits of the
    compiled route of ``schedules.constant(1 - 1e-9)``."""
    rate = 1e-9
    user = ema.Config(schedule=_NearOne(), init="params")
    own = ema.Config(schedule=schedules.constant(1.0 - rate), init="params")
    target = _params(1e6)
    eager = ema.update(ema.init(_params(0.0), user), target, user)
    compiled = ema.update(ema.init(_params(0.0), own), target, own)
    expected = np.float32(rate) * np.float32(1e6)  # s + rate * (p - s), s = 0
    np.testing.assert_allclose(np.asarray(eager.shadow["w"]), expected, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(eager.shadow["w"]), np.asarray(compiled.shadow["w"]))


def test_a_skipped_step_keeps_a_negative_zero_shadow_bit_for_bit() -> None:
    """A gated step off the gate has decay 1 and rate 0: the shadow is kept bit-exactly (the
    leaf decay is nudged below 1 only while the rate is not 0), so a shadow of -0.0 keeps its
    sign bit even though the params are positive."""
    config = ema.Config(schedule=schedules.gated(0.5, every=2), init="params")
    assert config.decay_and_rate(1) == (1.0, 0.0)  # step 1 is off the gate
    state = ema.init(_params(-0.0), config)
    state = ema.update(state, _params(3.0), config)
    shadow = np.asarray(state.shadow["w"])
    np.testing.assert_array_equal(shadow, np.zeros(3, np.float32))
    assert np.signbit(shadow).all()


def test_the_weight_of_an_eager_update_uses_the_schedule_s_decay_not_the_leaf_decay() -> None:
    """``w_t = d_t * w_{t-1} + (1 - d_t)`` with the schedule's decay: from weight 1 it stays
    exactly 1 in float32 for a decay that rounds to 1 (the leaves' nudged decay would give the
    float below 1), and the eager update gives ``make_update``'s bits."""
    _jax()
    from ema_core.jax import make_update

    config = ema.Config(schedule=schedules.constant(1.0 - 1e-9), init="params")
    eager = compiled = ema.init(_params(0.0), config)
    step = make_update(config, donate=False)
    for t in range(1, 4):
        eager = ema.update(eager, _params(float(t)), config)
        compiled = step(compiled, _params(float(t)))
    assert float(eager.weight) == 1.0
    np.testing.assert_array_equal(np.asarray(eager.weight), np.asarray(compiled.weight))
    np.testing.assert_array_equal(np.asarray(eager.shadow["w"]), np.asarray(compiled.shadow["w"]))


# ---- torch copy_to under non_float="freeze" ----


def test_copy_to_a_mapping_without_a_frozen_integer_buffer_writes_the_floats() -> None:
    """Under ``non_float="freeze"`` integer buffers held at their value from construction are
    not averages: ``copy_to`` neither checks nor writes them, so a mapping of the model's float
    tensors alone (without ``num_batches_tracked``) takes the averages."""
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    averager = EMA(model, config=ema.Config(schedule=0.0, non_float="freeze"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    averager.update()  # decay 0: the averages are the shifted params
    floats = {
        n: torch.zeros_like(t) for n, t in model.state_dict().items() if t.is_floating_point()
    }
    assert "1.num_batches_tracked" not in floats
    averager.copy_to(floats)
    for name, value in floats.items():
        assert torch.equal(value, averager.average[name].to(value.dtype)), name


def test_copy_to_under_freeze_leaves_the_model_s_own_num_batches_tracked() -> None:
    """README: integer tensors held at their value from construction (``non_float="freeze"``)
    "are not written: the model keeps its own ``num_batches_tracked``", while the float
    tensors take the averages."""
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    averager = EMA(model, config=ema.Config(schedule=0.0, non_float="freeze"))
    model.train()
    for _ in range(5):
        model(torch.randn(4, 3))  # five batches counted by the model, none by the shadow
        averager.update()
    assert int(model[1].num_batches_tracked) == 5
    model.eval()
    averager.copy_to(model)
    assert int(model[1].num_batches_tracked) == 5
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, averager.average[name].to(value.dtype)), name


# ---- gated: a negative copy_through copies at no step ----


def test_a_negative_copy_through_copies_at_no_step_on_a_device_count_too() -> None:
    """``gated``: ``d_t = 0`` while ``t <= copy_through``, "a negative one copies at no step":
    at ``t = 0`` (on the gate with ``start=0``) the decay is the inner schedule's, for a
    Python int and for a JAX count alike."""
    _, jnp = _jax()
    schedule = schedules.gated(0.75, copy_through=-1)
    assert schedule(0) == 0.75
    assert float(schedule(jnp.asarray(0, jnp.int32))) == 0.75
    assert float(schedules.gated(0.75, copy_through=0)(jnp.asarray(0, jnp.int32))) == 0.0


def test_timm_with_update_after_step_minus_one_copies_nothing() -> None:
    """``presets.timm``: "a negative ``update_after_step`` copies nothing: the shadow starts as
    the params", -1 included; the first update then uses ``decay``."""
    config = presets.timm(0.9, update_after_step=-1)
    assert config.init == "params"
    assert config.decay(1) == 0.9
