"""An eager ``ema_core.update`` of a JAX state computes its scalars (step, decay, rate, weight)
in one compiled call per config (``ema_core.backends.jax._scalars``): the schedule is traced
once, the numbers are ``make_update``'s, and a user's callable schedule still runs eagerly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core import schedules  # noqa: E402
from ema_core.jax import make_update  # noqa: E402
from ema_core.schedules._decays import Warmup  # noqa: E402
from tests.conftest import assert_close  # noqa: E402

STEPS = 12


def _params(shift: float = 0.0) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    return {
        "w": jnp.asarray(rng.standard_normal((5, 3)) + shift, jnp.float32),
        "b": jnp.asarray(rng.standard_normal(4) + shift, jnp.bfloat16),
        "n": jnp.asarray(int(shift), jnp.int32),
    }


def _leaves(tree: Any) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


SCHEDULES: dict[str, Callable[[], Any]] = {
    "warmup": lambda: schedules.warmup(0.99),
    "every3": lambda: schedules.every(schedules.num_updates(0.95), 3),
    "power": lambda: schedules.power_function(7.0),
    "gated": lambda: schedules.gated(0.9, every=2, start=3),
    "float32": lambda: schedules.in_float32(0.97),
}


@pytest.mark.parametrize("init", ["copy", "zeros"])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_eager_updates_give_make_updates_bits(name: str, init: str) -> None:
    """Every eager update gives the bits of ``make_update`` with ``donate=False``, and the float32
    shadow stays within 16 ulps of a float64 reference built from ``Config.decay``."""
    config = ema.Config(schedule=SCHEDULES[name](), init=init)
    compiled_update = make_update(config, donate=False)
    eager = compiled = ema.init(_params(), config)
    shadow = np.asarray(_params()["w"], np.float64) * (init != "zeros")
    weight = 0.0 if init == "zeros" else 1.0
    for t in range(1, STEPS + 1):
        target = _params(float(t))
        eager = ema.update(eager, target, config)
        compiled = compiled_update(compiled, target)
        d = float(config.decay(t))
        shadow = shadow + (1 - d) * (np.asarray(target["w"], np.float64) - shadow)
        weight = d * weight + (1 - d)
        for a, b in zip(_leaves(eager), _leaves(compiled), strict=True):
            np.testing.assert_array_equal(a, b)
    assert int(eager.step) == STEPS and eager.step.dtype == compiled.step.dtype
    assert_close(eager.shadow["w"], shadow, "float32", ulps=16)
    assert_close(float(eager.weight), weight, "float32", ulps=16)


def test_an_own_schedule_is_evaluated_once_not_at_every_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The schedule runs when the config's scalars are traced (the first update, and the
    second, whose step is committed), then never again in Python: counted on ``Warmup.pair``
    over 20 eager updates (it ran 20 times before)."""
    calls = []
    original = Warmup.pair

    def counted(self: Warmup, ops: Any) -> Any:
        calls.append(1)
        return original(self, ops)

    monkeypatch.setattr(Warmup, "pair", counted)
    config = ema.Config(schedule=schedules.warmup(0.999, power=0.75), init="params")
    state = ema.init(_params(), config)
    for t in range(20):
        state = ema.update(state, _params(float(t)), config)
    assert int(state.step) == 20
    assert 1 <= len(calls) <= 2


def test_a_callable_schedule_branching_on_the_step_value_still_runs_eagerly() -> None:
    """A user's schedule may read the step's value in Python (``int(t)``), which a trace
    refuses: it runs at every eager update, as before, and its branch is honoured."""

    def by_value(t: Any) -> float:
        return 0.0 if int(t) % 2 else 1.0  # copy on odd steps, keep on even ones

    config = ema.Config(schedule=by_value, init="params")
    state = ema.init(_params(), config)
    for t in range(1, 7):
        state = ema.update(state, _params(float(t)), config)
        last_copy = t if t % 2 else t - 1
        np.testing.assert_array_equal(state.shadow["w"], _params(float(last_copy))["w"])


def test_a_callable_schedule_reading_a_changing_setting_sees_each_value() -> None:
    """A callable schedule that reads a setting the user changes between updates gets the
    value of the moment at every eager update (a traced copy would keep the first)."""
    setting = {"decay": 1.0}
    config = ema.Config(schedule=lambda t: setting["decay"], init="params")
    state = ema.init(_params(), config)
    for t in range(1, 4):
        state = ema.update(state, _params(float(t)), config)
    np.testing.assert_array_equal(state.shadow["w"], _params()["w"])  # decay 1: kept
    setting["decay"] = 0.0
    state = ema.update(state, _params(9.0), config)
    np.testing.assert_array_equal(state.shadow["w"], _params(9.0)["w"])  # decay 0: copied


def test_a_negative_step_is_named_on_the_compiled_route_too() -> None:
    """A hand-made state whose step is negative is a ValueError naming ``state.step`` once the
    config's scalars are compiled (the value is read on the CPU, as the eager route reads it)."""
    config = ema.Config(schedule=schedules.warmup(0.99), init="params")
    state = ema.init(_params(), config)
    for _ in range(3):  # the config is now compiled
        state = ema.update(state, _params(), config)
    bad = state._replace(step=jnp.asarray(-4, state.step.dtype))
    with pytest.raises(ValueError, match=r"state\.step must be >= 0, got -4"):
        ema.update(bad, _params(), config)


def test_numpy_scalars_and_an_outer_jit_take_the_old_route_with_the_same_bits() -> None:
    """A state whose step and weight are numpy arrays and an update traced
    inside the user's ``jax.jit`` compute the scalars without the cache; both give the bits
    of the eager JAX update, and numpy scalars stay numpy (JAX's device placement refused
    them before)."""
    config = ema.Config(schedule=schedules.num_updates(0.99), init="zeros")
    jitted = jax.jit(lambda s, p: ema.update(s, p, config))
    eager = traced = ema.init(_params(), config)
    host = eager
    for t in range(1, 6):
        eager = ema.update(eager, _params(float(t)), config)
        traced = jitted(traced, _params(float(t)))
        if t == 1:
            host = host._replace(step=np.asarray(host.step), weight=np.asarray(host.weight))
        host = ema.update(host, _params(float(t)), config)
    assert isinstance(host.step, np.ndarray) and isinstance(host.weight, np.ndarray)  # kept
    for a, b, c in zip(_leaves(eager), _leaves(traced), _leaves(host), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_the_eager_benchmarks_three_routes_compute_the_same_state() -> None:
    """``python -m benchmarks --eager`` times three routes to one update: after a few calls
    each, the compiled scalars, the eager ones (the schedule wrapped in a callable) and
    ``make_update`` hold the same bits, so the benchmark compares equal work."""
    from benchmarks import eager

    calls, states = eager.contenders([(16, 8), (8,)])
    for _ in range(4):
        for call in calls.values():
            call()
    assert sorted(states) == ["make_update", "update", "update, callable"]
    assert int(states["update"].step) == 4
    for key in ("update", "update, callable"):
        for a, b in zip(_leaves(states[key]), _leaves(states["make_update"]), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("correction", ["exact", "power", "none"])
@pytest.mark.parametrize("updates", [0, 1, 5])
def test_the_fused_read_of_a_zeros_state_gives_the_per_leaf_reads_bits(
    correction: str, updates: int
) -> None:
    """``average`` of an ``init="zeros"`` JAX state divides every float leaf in one compiled
    call (a device weight, a host weight under ``"power"``, weight 0 before the first update);
    each leaf has the bits of ``_core.correct`` applied to it alone, bf16 shadows read in
    float32, integer leaves as they are."""
    from ema_core import _core

    config = ema.Config(schedule=schedules.warmup(0.9), init="zeros", correction=correction)
    config_half = ema.Config(
        schedule=schedules.warmup(0.9), init="zeros", correction=correction, dtype="same"
    )
    for cfg in (config, config_half):
        state = ema.init(_params(), cfg)
        for t in range(1, updates + 1):
            state = ema.update(state, _params(float(t)), cfg)
        weight: Any = state.weight
        if correction == "power":
            weight = 1.0 - float(cfg.decay(updates)) ** updates if updates else 0.0
        elif correction == "none":
            weight = 1.0
        read = ema.average(state, cfg)
        for key, shadow in state.shadow.items():
            inexact = jnp.issubdtype(shadow.dtype, jnp.inexact)
            expected = _core.correct(jnp, shadow, weight) if inexact else shadow
            assert read[key].dtype == expected.dtype, key
            np.testing.assert_array_equal(np.asarray(read[key]), np.asarray(expected))
        assert read["b"].dtype == jnp.float32  # a bf16 shadow reads in float32
