"""Tests that kill mutants of the 7193739 (post-hoc snapshots leave out non-persistent buffers),
c56b960 (compat.tensorflow: one array named and unnamed is one variable), 2d696a7 (``copy_to``
skips integers only under ``non_float="freeze"``), 5db819a (gated's ``copy_through`` beyond the
count's range) and dd1042e (the eager JAX update decides once per config whether its schedule
is ema-core's own) fixes, which the hostile probes left alive.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ema_core as ema

torch = pytest.importorskip("torch")


# ---- post-hoc: a snapshot of a torch EMA holds what module.state_dict() holds ----


class _Rotary(torch.nn.Module):
    """A linear layer beside a non-persistent buffer (rotary ``inv_freq``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("inv_freq", torch.arange(4.0), persistent=False)


def test_save_snapshot_of_a_torch_ema_leaves_out_its_non_persistent_buffers(
    tmp_path: Path,
) -> None:
    """``save_snapshot(dir, ema)`` of a torch ``EMA`` writes what ``module.state_dict()``
    holds (as an export does): the non-persistent ``inv_freq`` is left out, so
    ``reconstruct(..., like=model.state_dict())`` loads strictly into the model."""
    from ema_core.posthoc import reconstruct, save_snapshot
    from ema_core.schedules import power_function
    from ema_core.torch import EMA

    torch.manual_seed(0)
    model = _Rotary()
    averager = EMA(model, config=ema.Config(schedule=power_function(sigma_rel=0.05)))
    for step in range(1, 5):
        with torch.no_grad():
            model.lin.weight.add_(0.1)
        averager.update()
        if step % 2 == 0:
            save_snapshot(tmp_path, averager)
    weights = reconstruct(tmp_path, 0.05, like=model.state_dict())
    assert sorted(weights) == sorted(model.state_dict())
    model.load_state_dict(weights)  # strict


# ---- compat.tensorflow: an array averaged unnamed, then by name, is kept under its name ----


def test_tf_an_array_averaged_unnamed_then_named_saves_under_its_name() -> None:
    """An array applied first as itself and then as ``("x", array)`` is one variable kept
    under its name: nothing is left under the unnamed array, so ``state_dict()`` (which needs
    named variables) saves it, as ``"x"`` only, and a new averager loads it."""
    from ema_core.compat import tensorflow

    x = np.zeros(2, np.float32)
    averager = tensorflow.ExponentialMovingAverage(0.5)
    averager.apply([x])
    x += 2.0
    averager.apply([("x", x)])
    state = averager.state_dict()
    assert list(state["shadows"]) == ["x"]
    np.testing.assert_array_equal(np.asarray(state["shadows"]["x"]), np.full(2, 1.0, np.float32))
    fresh = tensorflow.ExponentialMovingAverage(0.5)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(np.asarray(fresh.average("x")), np.full(2, 1.0, np.float32))


def test_tf_an_immutable_array_twice_in_one_var_list_is_refused_by_apply() -> None:
    """A JAX array (immutable: no in-place write would catch it) named and unnamed in one
    ``var_list`` is refused by ``apply`` itself ("each is averaged once"), and its shadow is
    unchanged."""
    jnp = pytest.importorskip("jax.numpy")
    from ema_core.compat import tensorflow

    x = jnp.full(2, 2.0, jnp.float32)
    averager = tensorflow.ExponentialMovingAverage(0.5)
    averager.apply([("x", x)])
    with pytest.raises(ValueError, match="one array twice, named and not"):
        averager.apply([("x", x), x])  # (a named JAX array is a variable of its own in var_items)
    with pytest.raises(ValueError, match="one array twice, named and not"):
        averager.apply([("x", jnp.ones(2, jnp.float32)), x])  # x by its slot, another as "x"
    np.testing.assert_array_equal(np.asarray(averager.average("x")), np.full(2, 2.0, np.float32))


# ---- copy_to: only frozen integers are left alone ----


def test_copy_to_under_the_default_copy_writes_the_integer_counter() -> None:
    """Only ``non_float="freeze"`` keeps ``copy_to`` off integer tensors: under the default
    ``"copy"`` the EMA's ``num_batches_tracked`` (the model's count, copied at each update) is
    written like every tracked tensor, into the same dtype."""
    from ema_core.torch import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    averager = EMA(model, config=ema.Config(schedule=0.5))
    model.train()
    for _ in range(3):
        model(torch.randn(4, 3))
        averager.update()
    target = {n: torch.zeros_like(t) for n, t in model.state_dict().items()}
    averager.copy_to(target)
    assert int(averager.average["1.num_batches_tracked"]) == 3  # three counted batches
    assert target["1.num_batches_tracked"].dtype == torch.int64
    assert int(target["1.num_batches_tracked"]) == 3


# ---- gated: copy_through beyond the count's integer range ----


def test_a_copy_through_past_an_int32_count_s_range_copies_at_every_step() -> None:
    """``gated``: ``d_t = 0`` while ``t <= copy_through``; a ``copy_through`` past int32's
    range (``presets.timm(update_after_step=2**40)``) holds for every step of an int32 JAX
    count (JAX's default without x64), which cannot hold the number itself."""
    jnp = pytest.importorskip("jax.numpy")
    from ema_core import schedules

    schedule = schedules.gated(0.75, copy_through=2**40)
    assert float(schedule(jnp.asarray(3, jnp.int32))) == 0.0
    assert schedule(3) == 0.0


def test_a_negative_copy_through_past_an_int32_count_s_range_copies_at_no_step() -> None:
    """5db819a made ``copy_through`` signed ("a negative one copies at no step"), and
    ``presets.timm`` passes ``update_after_step + 1`` down to ``-2**63``: with an int32 JAX
    count the decay is the inner schedule's, as for a Python int and a numpy state, not an
    ``OverflowError`` of the comparison."""
    jnp = pytest.importorskip("jax.numpy")
    from ema_core import presets, schedules

    schedule = schedules.gated(0.75, copy_through=-(2**40))
    assert schedule(3) == 0.75
    assert float(schedule(jnp.asarray(3, jnp.int32))) == 0.75
    # an unsigned count beside copy_through=-1 (timm's update_after_step=-2): no copy either
    # (the comparison with -1 wrapped to the dtype's top and copied at every step)
    assert float(schedules.gated(0.75, copy_through=-1)(jnp.asarray(3, jnp.uint8))) == 0.75
    config = presets.timm(0.9, update_after_step=-(2**40))
    state = ema.init({"w": jnp.zeros(2, jnp.float32)}, config)
    state = ema.update(state, {"w": jnp.ones(2, jnp.float32)}, config)
    assert np.asarray(state.shadow["w"]).tolist() == pytest.approx([0.1, 0.1])


# ---- JAX eager: a schedule that is not ema-core's own is recognised once per config ----


def test_a_user_schedule_is_recognised_once_per_config_not_at_every_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dd1042e: the eager update "decides once per config whether its schedule is
    ema-core's own" and keeps that answer beside the compiled scalars: for a user's callable,
    ``_own`` runs at the first update only (it walked the schedule at every call before), the
    updates still run eagerly with the callable's decay."""
    jnp = pytest.importorskip("jax.numpy")
    from ema_core.backends.jax import _scalars

    monkeypatch.setattr(_scalars, "_HEADS", OrderedDict())
    calls: list[Any] = []
    original = _scalars._own

    def counted(schedule: Any) -> bool:
        calls.append(schedule)
        return original(schedule)

    monkeypatch.setattr(_scalars, "_own", counted)

    def half(t: Any) -> float:
        return 0.5

    config = ema.Config(schedule=half, init="params")
    state = ema.init({"w": jnp.zeros(3, jnp.float32)}, config)
    for t in range(1, 6):
        state = ema.update(state, {"w": jnp.full(3, float(t), jnp.float32)}, config)
    assert len(calls) == 1
    assert _scalars._HEADS[config] is None  # kept: not compiled, not asked again
    expected = 0.0
    for t in range(1, 6):
        expected = 0.5 * expected + 0.5 * t
    np.testing.assert_allclose(np.asarray(state.shadow["w"]), np.full(3, expected), rtol=1e-6)
