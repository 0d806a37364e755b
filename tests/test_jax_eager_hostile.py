"""Hostile probe of the functional API called eagerly on JAX arrays (no ``jax.jit`` around
``ema_core.update``): since the eager scalars became one compiled call per config
(``ema_core.backends.jax._scalars``), every schedule family and preset, every step dtype near
its top, x64 switched on mid-session, one config over two structures, more configs than the
cache keeps, configs equal by value, host steps, callable schedules of every return type,
transforms (``vmap``, ``grad``, ``disable_jit``) and threads must give ``make_update``'s
bits (README "JAX in depth": an eager update and a compiled one give the same bits), and bad
values must be named ("Errors")."""

from __future__ import annotations

import dataclasses
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core import presets, schedules  # noqa: E402
from ema_core.backends.jax import _scalars  # noqa: E402
from ema_core.jax import make_update  # noqa: E402
from ema_core.schedules._decays import Warmup  # noqa: E402
from tests.two_cpu_devices import run_on_two_cpu_devices  # noqa: E402

STEPS = 30


def _params(t: int) -> dict[str, Any]:
    """A float32 leaf, a bf16 leaf and an int32 counter that move with ``t``."""
    rng = np.random.default_rng(t)
    return {
        "w": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32),
        "h": jnp.asarray(rng.standard_normal(4), jnp.bfloat16),
        "n": jnp.asarray(t, jnp.int32),
    }


def _one(value: float) -> dict[str, Any]:
    return {"w": jnp.full((3,), value, jnp.float32)}


def _leaves(tree: Any) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    """The same leaves, dtypes and bits (NaN equal to NaN)."""
    left, right = _leaves(a), _leaves(b)
    assert len(left) == len(right), where
    for x, y in zip(left, right, strict=True):
        assert x.dtype == y.dtype, (where, x.dtype, y.dtype)
        np.testing.assert_array_equal(x, y, err_msg=where)


def _run_both(config: ema.Config, params: Callable[[int], Any], steps: int = STEPS) -> None:
    """``steps`` eager updates beside ``make_update(donate=False)``: equal after every step,
    and their averages too."""
    compiled_update = make_update(config, donate=False)
    eager = compiled = ema.init(params(0), config)
    for t in range(1, steps + 1):
        eager = ema.update(eager, params(t), config)
        compiled = compiled_update(compiled, params(t))
        _assert_same(eager, compiled, f"t={t}")
    _assert_same(ema.average(eager, config), ema.average(compiled, config), "average")


PRESETS: dict[str, Callable[[], ema.Config]] = {
    "timm-after5": lambda: presets.timm(0.99, update_after_step=5),
    "ema_pytorch-every4": lambda: presets.ema_pytorch(update_after_step=3, update_every=4),
    "tensorflow-zero_debias": lambda: presets.tensorflow(0.99, zero_debias=True),
    "mmedit-interval2": lambda: presets.mmedit(0.1, interval=2),
    "karras-every3": lambda: presets.ema_pytorch_karras(0.05, update_every=3),
    "torchtitan": presets.torchtitan,
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_run_eagerly_gives_make_updates_bits(name: str) -> None:
    """Each preset (its gates, first copies, offsets, floors, float32 roundings, zero start)
    updated eagerly for 30 steps over float32, bf16 and int32 leaves holds ``make_update``'s
    bits after every step, and reads the same average."""
    _run_both(PRESETS[name](), _params)


FAMILIES: dict[str, Callable[[], ema.Config]] = {
    "annealing-zeros-power": lambda: ema.Config(
        schedule=schedules.annealing(0.01, 10.0), init="zeros", correction="power"
    ),
    "num_updates-zeros-uncorrected": lambda: ema.Config(
        schedule=schedules.num_updates(0.999), init="zeros", correction="none"
    ),
    "warmup-min_decay-copy": lambda: ema.Config(
        schedule=schedules.warmup(0.999, inv_gamma=2.0, power=0.75, min_decay=0.3), init="copy"
    ),
    "ramped_half_life-interval3-compensate": lambda: ema.Config(
        schedule=schedules.ramped_half_life(8.0, ratio=0.25), interval=3, compensate=True
    ),
    "momentum-interval4-plain-zeros": lambda: ema.Config(
        schedule=schedules.momentum(0.2), interval=4, compensate=False, init="zeros"
    ),
    "in_float32-gated-copy": lambda: ema.Config(
        schedule=schedules.in_float32(schedules.gated(0.97, every=3, phase=1, floor=0.5)),
        init="copy",
    ),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_schedule_families_and_intervals_run_eagerly_give_make_updates_bits(name: str) -> None:
    """The schedule families the other tests leave out (``annealing``,
    ``ramped_half_life``, ``momentum``, ``in_float32`` over ``gated``, ``warmup`` with all its
    knobs) under every init, ``Config(interval, compensate)`` and the three corrections: 30
    eager steps, and their averages, equal ``make_update``'s."""
    _run_both(FAMILIES[name](), _params)


def test_an_interval_longer_than_one_block_gives_make_updates_bits() -> None:
    """``interval=5000`` with compensation (a product of 5,000 decays, more than ``every``'s
    4,096-step block) at a gated step (t = 10,000) and the skipped one before it: the eager
    update holds ``make_update``'s bits."""
    config = ema.Config(schedule=schedules.warmup(0.9999), interval=5000, init="zeros")
    state = ema.init(_one(0.0), config)._replace(step=jnp.asarray(9998, jnp.int32))
    eager = ema.update(state, _one(1.0), config)
    eager = ema.update(eager, _one(2.0), config)
    compiled_update = make_update(config, donate=False)
    compiled = compiled_update(compiled_update(state, _one(1.0)), _one(2.0))
    _assert_same(eager, compiled)
    assert int(eager.step) == 10_000 and float(eager.weight) > 0.0  # it did move


@pytest.mark.parametrize("dtype", ["uint8", "int32"])
def test_a_step_near_its_dtypes_top_saturates_eagerly_as_compiled(dtype: str) -> None:
    """A hand-made step two below its dtype's largest value: four eager updates stop at the
    top (no wrap to a negative count, where warmup's power is NaN), keep the dtype, and equal
    ``make_update``'s four updates bit for bit."""
    config = ema.Config(schedule=schedules.warmup(0.99), init="zeros")
    top = int(np.iinfo(dtype).max)
    state = ema.init(_one(0.0), config)._replace(step=jnp.asarray(top - 2, dtype))
    eager = compiled = state
    compiled_update = make_update(config, donate=False)
    for t in range(4):
        eager = ema.update(eager, _one(float(t)), config)
        compiled = compiled_update(compiled, _one(float(t)))
    assert eager.step.dtype == np.dtype(dtype) and int(eager.step) == top
    assert np.isfinite(float(eager.weight))
    _assert_same(eager, compiled)


def test_an_int64_step_at_its_top_saturates_under_x64(x64: None) -> None:
    """With x64 on, an int64 step at 2**63 - 2 advances once, then stays at 2**63 - 1; the
    shadow (float64 params) and weight equal ``make_update``'s."""
    config = ema.Config(schedule=schedules.num_updates(0.99), init="zeros")
    params = {"w": jnp.arange(3, dtype=jnp.float64)}
    state = ema.init(params, config)._replace(step=jnp.asarray(2**63 - 2, jnp.int64))
    compiled_update = make_update(config, donate=False)
    eager = compiled = state
    for _ in range(3):
        eager = ema.update(eager, params, config)
        compiled = compiled_update(compiled, params)
    assert eager.step.dtype == np.int64 and int(eager.step) == 2**63 - 1
    assert eager.weight.dtype == np.float64
    _assert_same(eager, compiled)


def test_x64_switched_on_mid_session_recompiles_the_configs_scalars() -> None:
    """One config used eagerly before x64, with x64 on, and after it is off again: each regime
    gives ``make_update``'s bits for its own states (a 64-bit state under x64, the 32-bit
    state before and after, which keeps its dtypes), never the other regime's compiled
    scalars."""
    config = ema.Config(schedule=schedules.warmup(0.99, power=0.75), init="zeros")
    before = ema.init(_one(0.0), config)
    for t in range(3):
        before = ema.update(before, _one(float(t)), config)
    jax.config.update("jax_enable_x64", True)
    try:
        on32 = ema.update(before, _one(5.0), config)  # the 32-bit state under x64
        assert (on32.step.dtype, on32.weight.dtype) == (np.int32, np.float32)
        wide = ema.init({"w": jnp.arange(3, dtype=jnp.float64)}, config)
        compiled_update = make_update(config, donate=False)
        eager = compiled = wide
        for t in range(2):
            target = {"w": jnp.full(3, float(t), jnp.float64)}
            eager, compiled = ema.update(eager, target, config), compiled_update(compiled, target)
        assert (eager.step.dtype, eager.weight.dtype) == (np.int64, np.float64)
        _assert_same(eager, compiled)
    finally:
        jax.config.update("jax_enable_x64", False)
    off32 = ema.update(before, _one(5.0), config)
    _assert_same(off32, make_update(config, donate=False)(before, _one(5.0)))
    _assert_same(on32.shadow, off32.shadow)  # float32 params: the same blend in both regimes


def test_one_config_over_two_structures_in_turn() -> None:
    """One config object updating two states of different trees (dict of one leaf; a nest of
    a matrix and a bf16 vector) in alternation: each stays equal to its own ``make_update``."""
    config = ema.Config(schedule=schedules.num_updates(0.99), init="copy", interval=2)

    def nest(t: int) -> dict[str, Any]:
        return {"a": [jnp.full((2, 2), float(t)), jnp.full(3, -float(t), jnp.bfloat16)]}

    one, two = ema.init(_one(0.0), config), ema.init(nest(0), config)
    compiled_one, compiled_two = one, two
    update_one, update_two = make_update(config, donate=False), make_update(config, donate=False)
    for t in range(1, 5):
        one = ema.update(one, _one(float(t)), config)
        two = ema.update(two, nest(t), config)
        compiled_one = update_one(compiled_one, _one(float(t)))
        compiled_two = update_two(compiled_two, nest(t))
        _assert_same(one, compiled_one, f"one t={t}")
        _assert_same(two, compiled_two, f"two t={t}")


def test_configs_rotating_past_the_cache_size_stay_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """More configs in turn than the compiled scalars' cache keeps (``SIZE`` made 2, three
    configs): evicted heads are made again, the cache never grows past its size, and every
    state equals the exact float64 loop (decays 1/2, 3/4, 7/8 on small integers are exact in
    float32)."""
    monkeypatch.setattr(_scalars, "SIZE", 2)
    monkeypatch.setattr(_scalars, "_HEADS", type(_scalars._HEADS)())  # others' heads left out
    decays = (0.5, 0.75, 0.875)
    configs = [ema.Config(schedule=schedules.constant(d), init="zeros") for d in decays]
    states = [ema.init(_one(0.0), c) for c in configs]
    shadows, weights = [0.0] * 3, [0.0] * 3
    for t in range(1, 4):
        for i, (config, d) in enumerate(zip(configs, decays, strict=True)):
            states[i] = ema.update(states[i], _one(float(t)), config)
            shadows[i] += (1 - d) * (t - shadows[i])
            weights[i] = d * weights[i] + (1 - d)
            assert len(_scalars._HEADS) <= 2
    for state, shadow, weight in zip(states, shadows, weights, strict=True):
        np.testing.assert_array_equal(state.shadow["w"], np.full(3, shadow, np.float32))
        assert float(state.weight) == weight


def test_configs_equal_by_value_share_one_compiled_head() -> None:
    """Two configs built separately but equal by value find one compiled head (the second
    compiles nothing more), and their states hold the same bits."""

    def build() -> ema.Config:
        return ema.Config(schedule=schedules.warmup(0.998, power=0.6), init="copy", interval=3)

    first, second = build(), build()
    assert first is not second and first == second
    a = ema.update(ema.init(_one(0.0), first), _one(1.0), first)
    b = ema.update(ema.init(_one(0.0), second), _one(1.0), second)
    assert _scalars._head(first) is _scalars._head(second)
    for t in range(2, 7):
        a, b = ema.update(a, _one(float(t)), first), ema.update(b, _one(float(t)), second)
    _assert_same(a, b)


def test_dtype_same_over_bf16_params_keeps_a_bf16_shadow_and_a_float32_read() -> None:
    """``dtype="same"`` over bf16 params, ``init="zeros"``: the eager shadow stays bf16, its
    read is float32 (never rounded back to bf16), and both equal ``make_update``'s."""
    config = ema.Config(schedule=schedules.warmup(0.99), dtype="same", init="zeros")

    def params(t: int) -> dict[str, Any]:
        return {"w": (jnp.linspace(-1.0, 1.0, 7) + 0.1 * t).astype(jnp.bfloat16)}

    _run_both(config, params, steps=4)
    state = ema.update(ema.init(params(0), config), params(1), config)
    assert state.shadow["w"].dtype == jnp.bfloat16
    assert ema.average(state, config)["w"].dtype == jnp.float32


@pytest.mark.parametrize(
    "step", [5, np.int32(5), np.int64(5), np.asarray(5, np.int16)], ids=["int", "i32", "i64", "0d"]
)
def test_a_host_step_beside_jax_shadows_keeps_its_kind_and_the_shadows_bits(step: Any) -> None:
    """A hand-made state whose step is a Python int or numpy integer: it advances by one and
    stays a Python int or numpy (its dtype kept); the shadow equals the JAX-step update's bit
    for bit and the weight agrees to its last bit (README "Choices": host float64 decay)."""
    config = ema.Config(schedule=schedules.warmup(0.99), init="zeros")
    state = ema.init(_one(0.0), config)
    host = ema.update(state._replace(step=step), _one(2.0), config)
    device = ema.update(state._replace(step=jnp.asarray(5, jnp.int32)), _one(2.0), config)
    if isinstance(step, int):
        assert type(host.step) is int and host.step == 6
    else:
        assert isinstance(host.step, np.ndarray) and host.step.dtype == np.asarray(step).dtype
        assert int(host.step) == 6
    np.testing.assert_array_equal(host.shadow["w"], device.shadow["w"])
    assert abs(float(host.weight) - float(device.weight)) <= float(np.spacing(np.float32(1)))


RETURNS: dict[str, Callable[[Any], Any]] = {
    "python-float": lambda t: 0.75,
    "numpy-float32": lambda t: np.float32(0.75),
    "numpy-0d": lambda t: np.asarray(0.75),
    "jax-array": lambda t: jnp.asarray(0.75, jnp.float32),
    "jax-of-the-step": lambda t: jnp.where(t > 0, 0.75, 0.5).astype(jnp.float32),
}


@pytest.mark.parametrize("name", sorted(RETURNS))
def test_a_callable_schedule_of_any_allowed_return_type_runs_every_call(name: str) -> None:
    """A callable returning a Python float, numpy float32, a 0-d numpy array or a 0-d JAX
    float32 (also computed from the step) runs at every eager update and gives the bits of
    ``constant(0.75)`` (0.75 is exact in float32, so its rate 0.25 is the same)."""
    calls: list[int] = []
    fn = RETURNS[name]

    def schedule(t: Any) -> Any:
        calls.append(1)
        return fn(t)

    config = ema.Config(schedule=schedule, init="zeros")
    own = ema.Config(schedule=schedules.constant(0.75), init="zeros")
    a, b = ema.init(_one(0.0), config), ema.init(_one(0.0), own)
    for t in range(1, 6):
        a, b = ema.update(a, _one(float(t)), config), ema.update(b, _one(float(t)), own)
    assert len(calls) == 5
    _assert_same(a, b)
    _assert_same(ema.average(a, config), ema.average(b, own))


@pytest.mark.parametrize(
    ("bad", "shown"),
    [(1.5, "1.5"), (float("nan"), "nan"), (-0.25, "-0.25"), (jnp.asarray(1.5), "1.5")],
    ids=["above-one", "nan", "negative", "jax-above-one"],
)
def test_a_bad_decay_from_a_callable_is_named_at_its_step_and_the_state_lives(
    bad: Any, shown: str
) -> None:
    """A callable schedule returning 1.5, NaN, -0.25 or a JAX 1.5 at step 5: a ValueError
    naming ``schedule(t)``, the step and the value; the state passed in is intact (nothing
    deleted, same bits) and updates with a good config afterwards."""
    config = ema.Config(schedule=lambda t: bad, init="zeros")
    good = ema.Config(schedule=0.5, init="zeros")
    state = ema.update(ema.init(_one(0.0), good), _one(2.0), good)
    state = state._replace(step=jnp.asarray(4, jnp.int32))
    kept = _leaves(state)
    with pytest.raises(ValueError, match=rf"schedule\(t\).*step 5.*got {shown}"):
        ema.update(state, _one(9.0), config)
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))
    _assert_same(state, kept)
    assert int(ema.update(state, _one(9.0), good).step) == 5


def test_an_unchecked_own_schedule_with_a_bad_decay_is_named_on_the_compiled_route() -> None:
    """``schedules.Constant(1.5)`` built directly (its factory would refuse it) is one of
    ema-core's own classes, so its scalars are compiled: the decay is still read and refused
    by name before any leaf is blended."""
    config = ema.Config(schedule=schedules.Constant(1.5))
    state = ema.init(_one(1.0), config)
    with pytest.raises(ValueError, match=r"decay.*1\.5"):
        ema.update(state, _one(3.0), config)
    _assert_same(state, ema.init(_one(1.0), config))


def test_frozen_integers_and_guard_finite_run_eagerly_as_compiled() -> None:
    """``non_float="freeze"`` with int32 and bool leaves and ``guard_finite=True``: eager
    updates equal ``make_update``'s (the integers keep their value from ``init``), and NaN
    params are a ValueError naming ``params['w']`` with the state intact."""
    config = ema.Config(
        schedule=schedules.warmup(0.99), non_float="freeze", guard_finite=True, init="copy"
    )

    def params(t: int) -> dict[str, Any]:
        return {"w": jnp.full(3, float(t)), "n": jnp.asarray(t, jnp.int32), "b": jnp.asarray(t > 0)}

    _run_both(config, params, steps=4)
    state = ema.update(ema.init(params(0), config), params(1), config)
    assert int(state.shadow["n"]) == 0 and not bool(state.shadow["b"])
    bad = {**params(2), "w": params(2)["w"].at[1].set(jnp.nan)}
    kept = _leaves(state)
    with pytest.raises(ValueError, match=r"params\['w'\].*NaN"):
        ema.update(state, bad, config)
    _assert_same(state, kept)


_SETTING = {"decay": 1.0}


@dataclasses.dataclass(frozen=True)
class _ConfigReadingASetting(ema.Config):
    """A user's ``Config`` subclass whose decay is a setting read in Python at every call."""

    def decay_and_rate(self, t: Any, /) -> tuple[Any, Any]:
        return _SETTING["decay"], 1.0 - _SETTING["decay"]


def test_a_config_subclass_reading_a_setting_sees_each_value() -> None:
    """A ``Config`` subclass (README "Errors": a subclass may define fields) whose
    ``decay_and_rate`` reads a setting the user changes: each eager update sees the value of
    the moment, as before 8f23337 (decay 1 keeps the shadow, then decay 0 copies)."""
    _SETTING["decay"] = 1.0
    config = _ConfigReadingASetting(schedule=schedules.constant(0.5))
    state = ema.init(_one(0.0), config)
    for t in range(1, 3):
        state = ema.update(state, _one(float(t)), config)
    np.testing.assert_array_equal(state.shadow["w"], _one(0.0)["w"])  # decay 1: kept
    _SETTING["decay"] = 0.0
    try:
        state = ema.update(state, _one(7.0), config)
    finally:
        _SETTING["decay"] = 1.0
    np.testing.assert_array_equal(state.shadow["w"], _one(7.0)["w"])  # decay 0: copied


class _Switchable(Warmup):
    """A user's subclass of an own schedule that reads a setting in Python at every call."""

    setting: dict[str, float] = {"decay": 1.0}  # noqa: RUF012 - class-level, read per call

    def pair(self, ops: Any, /) -> tuple[Any, Any]:
        d = self.setting["decay"]
        return ops.const(d), ops.const(1.0 - d)


def test_a_users_subclass_of_an_own_schedule_is_not_compiled_away() -> None:
    """A ``Warmup`` subclass defined outside ema-core (here, reading a setting the user
    changes), also inside ``every``: it is evaluated at every eager update, so the change is
    seen (a compiled copy would keep the first value)."""
    _Switchable.setting["decay"] = 1.0
    for schedule in (
        _Switchable(0.9, 1.0, 1.0, 0.0),
        schedules.every(_Switchable(0.9, 1.0, 1.0, 0.0), 1),
    ):
        _Switchable.setting["decay"] = 1.0
        config = ema.Config(schedule=schedule)
        state = ema.init(_one(0.0), config)
        for t in range(1, 3):
            state = ema.update(state, _one(float(t)), config)
        np.testing.assert_array_equal(state.shadow["w"], _one(0.0)["w"])  # decay 1: kept
        _Switchable.setting["decay"] = 0.0
        state = ema.update(state, _one(7.0), config)
        np.testing.assert_array_equal(state.shadow["w"], _one(7.0)["w"])  # decay 0: copied


def test_an_eager_update_under_vmap_is_each_ema_alone() -> None:
    """``jax.vmap`` of the eager ``update`` over two stacked states (traced: the scalars are
    computed in the trace): each slice equals the eager update of that EMA alone."""
    config = ema.Config(schedule=schedules.warmup(0.99), init="zeros")
    first = ema.update(ema.init(_one(0.0), config), _one(1.0), config)
    second = first._replace(step=jnp.asarray(7, jnp.int32))
    both = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), first, second)
    targets = {"w": jnp.stack([jnp.full(3, 2.0), jnp.full(3, -2.0)])}
    out = jax.vmap(lambda s, p: ema.update(s, p, config))(both, targets)
    for i, (alone, value) in enumerate(((first, 2.0), (second, -2.0))):
        expected = ema.update(alone, _one(value), config)
        sliced = jax.tree_util.tree_map(lambda x, i=i: x[i], out)
        np.testing.assert_array_equal(sliced.shadow["w"], expected.shadow["w"])
        assert int(sliced.step) == int(expected.step)
        assert abs(float(sliced.weight) - float(expected.weight)) <= 1e-7


def test_grad_through_an_eager_update_and_average() -> None:
    """``jax.grad`` of ``sum(average(update(state, params)))`` for a zeros EMA with respect to
    the params: the average of one update is the params themselves (weight ``1 - d``), so the
    gradient is one everywhere (within float32 rounding)."""
    config = ema.Config(schedule=schedules.warmup(0.99), init="zeros")
    state = ema.init(_one(0.0), config)

    def loss(params: dict[str, Any]) -> Any:
        return jnp.sum(ema.average(ema.update(state, params, config), config)["w"])

    grad = jax.grad(loss)(_one(1.0))
    np.testing.assert_allclose(np.asarray(grad["w"]), np.ones(3), rtol=1e-6)


def test_disable_jit_gives_the_uncompiled_make_updates_bits() -> None:
    """Inside ``jax.disable_jit()`` the eager update and ``make_update`` both run op by op and
    agree bit for bit; both stay within 2 ulps of the compiled run."""
    config = ema.Config(schedule=schedules.warmup(0.99), init="zeros")
    compiled_update = make_update(config, donate=False)
    compiled = eager = uncompiled = ema.init(_one(0.0), config)
    with jax.disable_jit():
        for t in range(2):
            eager = ema.update(eager, _one(float(t)), config)
            uncompiled = compiled_update(uncompiled, _one(float(t)))
    for t in range(2):
        compiled = compiled_update(compiled, _one(float(t)))
    _assert_same(eager, uncompiled)
    np.testing.assert_array_max_ulp(np.asarray(eager.shadow["w"]), compiled.shadow["w"], 2)
    np.testing.assert_array_max_ulp(np.asarray(eager.weight), np.asarray(compiled.weight), 2)


def test_threads_updating_two_states_with_one_new_config() -> None:
    """Four threads updating their own states with one config never used before (its head is
    made while the others wait on it): each state equals its ``make_update`` run."""
    config = ema.Config(schedule=schedules.power_function(5.5), init="copy", interval=2)
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            state = ema.init(_one(float(i)), config)
            for t in range(12):
                state = ema.update(state, _one(float(100 * i + t)), config)
            results[i] = state
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    compiled_update = make_update(config, donate=False)
    for i in range(4):
        compiled = ema.init(_one(float(i)), config)
        for t in range(12):
            compiled = compiled_update(compiled, _one(float(100 * i + t)))
        _assert_same(results[i], compiled, f"thread {i}")


def test_weak_and_committed_scalars_give_the_same_bits() -> None:
    """A hand-made state with a weak-typed step and weight (``jnp.asarray(3)``,
    ``jnp.asarray(0.5)``), and one whose scalars are committed with ``jax.device_put``: the
    eager updates hold the plain state's bits (the step stays an integer)."""
    config = ema.Config(schedule=schedules.num_updates(0.99), init="zeros")
    base = ema.init(_one(0.0), config)
    plain = base._replace(step=jnp.asarray(3, jnp.int32), weight=jnp.asarray(0.5, jnp.float32))
    weak = base._replace(step=jnp.asarray(3), weight=jnp.asarray(0.5))
    device = jax.devices()[0]
    committed = plain._replace(
        step=jax.device_put(plain.step, device), weight=jax.device_put(plain.weight, device)
    )
    results = [ema.update(s, _one(4.0), config) for s in (plain, weak, committed)]
    for other in results[1:]:
        _assert_same(results[0], other)
    assert jnp.issubdtype(results[1].step.dtype, jnp.integer)


@pytest.mark.parametrize(
    ("step", "words"),
    [(jnp.asarray(2.0), "state.step"), (jnp.asarray(True), "state.step")],
    ids=["float", "bool"],
)
def test_a_non_integer_jax_step_is_named_before_the_compiled_call(step: Any, words: str) -> None:
    """A float or bool JAX step (a hand-made state) is a TypeError naming ``state.step``, not
    JAX's error from inside the compiled scalars."""
    config = ema.Config(schedule=schedules.warmup(0.99))
    state = ema.init(_one(0.0), config)._replace(step=step)
    with pytest.raises(TypeError, match=words):
        ema.update(state, _one(1.0), config)


def test_strict_dtype_promotion_gives_the_standard_bits() -> None:
    """Under ``jax.numpy_dtype_promotion("strict")`` an eager update (own schedule and
    interval) runs and gives the bits of the standard promotion."""
    config = ema.Config(schedule=schedules.warmup(0.99), init="zeros", interval=2)
    strict = standard = ema.init(_one(0.0), config)
    for t in range(4):
        with jax.numpy_dtype_promotion("strict"):
            strict = ema.update(strict, _one(float(t)), config)
        standard = ema.update(standard, _one(float(t)), config)
    _assert_same(strict, standard)


def test_a_bf16_weight_is_taken_by_the_eager_and_the_compiled_update_alike() -> None:
    """A hand-made ``state.weight`` in bfloat16 (a 0-d float array, as README "Errors" asks)
    is taken by the eager update; ``make_update`` must take it too and give the same state."""
    config = ema.Config(schedule=schedules.warmup(0.99), init="zeros")
    state = ema.init(_one(0.0), config)._replace(weight=jnp.asarray(0.0, jnp.bfloat16))
    eager = ema.update(state, _one(1.0), config)
    assert eager.weight.dtype == jnp.bfloat16
    _assert_same(eager, make_update(config, donate=False)(state, _one(1.0)))


DEVICES_SCRIPT = textwrap.dedent(
    """
    import re
    import jax, jax.numpy as jnp
    import ema_core as ema

    d0, d1 = jax.devices()[:2]
    config = ema.Config(schedule=ema.schedules.warmup(0.99), init="zeros")
    params = {"w": jax.device_put(jnp.ones(3), d0)}
    state = ema.update(ema.init(params, config), params, config)
    problems = []
    calls = [("update", "step", lambda s: ema.update(s, params, config)),
             ("update", "weight", lambda s: ema.update(s, params, config)),
             ("average", "weight", lambda s: ema.average(s, config))]
    for call, field, run in calls:
        moved = state._replace(**{field: jax.device_put(getattr(state, field), d1)})
        try:
            run(moved)
        except ValueError as error:
            if not re.search(rf"state\\.{field}.*cpu:1", str(error)):
                problems.append(f"{call} with state.{field} on cpu:1: {error}")
        else:
            problems.append(f"{call} with state.{field} on cpu:1 was not refused")
    print("\\n".join(problems) or "EAGER-DEVICES-OK")
    """
)


def test_a_step_or_weight_on_another_device_is_named() -> None:
    """Two CPU devices (a subprocess: ``XLA_FLAGS`` must be set before JAX starts): a state
    whose step or weight was put on ``cpu:1`` while its shadows are on ``cpu:0`` is a
    ValueError naming ``state.step`` / ``state.weight`` and the device from ``update``, and
    a weight there from ``average`` of a zeros EMA, as ``make_update`` names them (README
    "Errors": messages name the argument)."""
    run_on_two_cpu_devices(DEVICES_SCRIPT, "EAGER-DEVICES-OK")
