"""JAX users' pytrees against silent recompilation and silent dtype drift.

Every jitted entry point (``make_update``, ``make_bank_update``, ``with_ema`` inside a user's
``jax.jit``, the eager ``update`` / ``ema_update``) must compile once for a signature and never
again in the steady state, and the state it returns must keep its shapes, dtypes and weak types
from step to step (a drifting state recompiles at every step, or breaks a ``lax.scan`` carry).
Compilations are counted with ``tests.xla_compiles``; signatures compare ``(shape, dtype,
weak_type)`` of every leaf.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core.jax import ema_average, make_bank_update, make_update, with_ema  # noqa: E402
from tests.xla_compiles import counting_compiles  # noqa: E402

CFG = ema.Config(schedule=ema.schedules.warmup(0.99))
STEPS = 6


def _sig(tree: Any) -> Any:
    """``(shape, dtype, weak_type)`` of every array leaf; other leaves as they are."""
    leaves = jax.tree_util.tree_leaves(tree)
    return [
        (x.shape, np.dtype(x.dtype), _weak(x))
        if isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))
        else x
        for x in leaves
    ]


def _weak(x: Any) -> bool:
    """Whether ``x`` (an array or the ``ShapeDtypeStruct`` of ``eval_shape``) is weakly typed."""
    return bool(x.weak_type if isinstance(x, jax.ShapeDtypeStruct) else jax.typeof(x).weak_type)


def _steady(update: Callable[..., Any], state: Any, targets: list[Any]) -> tuple[int, Any, list]:
    """Run ``update`` over ``targets``: the compilations after the first call, the last state and
    the signature of every returned state."""
    jax.block_until_ready(targets)
    state = update(state, targets[0])
    sigs = [_sig(state)]
    with counting_compiles() as seen:
        for target in targets[1:]:
            state = update(state, target)
            sigs.append(_sig(state))
        jax.block_until_ready(state)
    return len(seen), state, sigs


def _shifted(params: Any, n: int = STEPS) -> list[Any]:
    return [jax.tree_util.tree_map(lambda x, i=i: x + i, params) for i in range(n)]


def _assert_same_bits(a: Any, b: Any) -> None:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert np.dtype(x.dtype) == np.dtype(y.dtype)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- make_update over unusual leaves and containers ---------------------------------------------


def test_weak_zero_d_empty_and_none_leaves_compile_once_and_keep_their_signature() -> None:
    """Weak-typed leaves (``jnp.asarray(1.0)``, ``jnp.full(3, 2.0)``), a 0-d leaf, a size-0 leaf
    and a ``None`` node: one compilation, a state whose signature never moves and no weak type
    in the shadow (``init`` strips it, or a scan carry would change type)."""
    params = {
        "s": jnp.asarray(1.0),
        "w": jnp.full(3, 2.0),
        "z": jnp.zeros((0, 4)),
        "n": None,
    }
    assert jax.typeof(params["s"]).weak_type  # the hostile part: weak leaves
    state = ema.init(params, CFG)
    assert not any(weak for _, _, weak in _sig(state))
    targets = [
        {"s": jnp.asarray(float(i)), "w": jnp.full(3, float(i)), "z": jnp.zeros((0, 4)), "n": None}
        for i in range(STEPS)
    ]
    compiles, state, sigs = _steady(make_update(CFG), state, targets)
    assert compiles == 0
    assert all(s == _sig(ema.init(params, CFG)) for s in sigs)
    assert state.shadow["n"] is None and state.shadow["z"].shape == (0, 4)


def test_dict_key_order_changing_between_calls_neither_recompiles_nor_swaps_leaves() -> None:
    """Dicts are matched by key, order free: alternating insertion orders compile once and give
    the bits of the same-order loop."""
    a, b = jnp.arange(2.0), jnp.arange(3.0)
    forward = [{"a": a + i, "b": b - i} for i in range(STEPS)]
    mixed = [d if i % 2 else {"b": d["b"], "a": d["a"]} for i, d in enumerate(forward)]
    compiles, state, _ = _steady(make_update(CFG), ema.init({"b": b, "a": a}, CFG), mixed)
    assert compiles == 0
    reference = ema.init({"a": a, "b": b}, CFG)
    update = make_update(CFG)
    for target in forward:
        reference = update(reference, target)
    _assert_same_bits(state, reference)


def test_params_cast_between_float32_and_bfloat16_keep_a_float32_shadow() -> None:
    """Mixed precision that casts the params to bf16 every other step: the shadow stays float32
    (the dtype ``init`` gave it, never the params' of the moment), and the update compiles once
    per params dtype, not once per step."""
    params = {"w": jnp.ones(4)}
    state = ema.init(params, CFG)
    targets = [
        {"w": jnp.full(4, float(i), jnp.bfloat16 if i % 2 else jnp.float32)} for i in range(STEPS)
    ]
    compiles, state, sigs = _steady(make_update(CFG), state, targets)
    assert compiles == 1  # the bf16 signature; the float32 one was compiled by the first call
    assert all(s == sigs[0] for s in sigs)
    assert state.shadow["w"].dtype == jnp.float32


_NT = collections.namedtuple("_NT", "a b")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Tagged:
    x: Any
    tag: str = dataclasses.field(default="t", metadata={"static": True})


def _container(kind: str, value: float) -> Any:
    w, s = jnp.full(3, value), jnp.asarray(value, jnp.float32)
    if kind == "namedtuple":
        return _NT(w, s)
    if kind == "dataclass":
        return _Tagged(w)
    if kind == "frozendict":
        flax_core = pytest.importorskip("flax.core")
        return flax_core.FrozenDict({"layer": {"w": w, "s": s}})
    return _block_class()(w, s)


@functools.cache
def _block_class() -> Any:
    """An equinox module with a static field (one class for every call: a class made per call
    would be another pytree type)."""
    eqx = pytest.importorskip("equinox")

    class Block(eqx.Module):
        w: Any
        s: Any
        act: str = eqx.field(static=True, default="relu")

    return Block


@pytest.mark.parametrize("kind", ["namedtuple", "dataclass", "frozendict", "equinox"])
def test_containers_compile_once_and_come_back_as_the_same_type(kind: str) -> None:
    """namedtuples, registered dataclasses with a static field, flax ``FrozenDict`` and equinox
    modules with a static field: one compilation, the container type and static fields kept."""
    params = _container(kind, 1.0)
    targets = [_container(kind, float(i)) for i in range(STEPS)]
    compiles, state, sigs = _steady(make_update(CFG), ema.init(params, CFG), targets)
    assert compiles == 0
    assert all(s == sigs[0] for s in sigs)
    assert type(state.shadow).__name__ == type(params).__name__
    assert jax.tree_util.tree_structure(state.shadow) == jax.tree_util.tree_structure(params)


# --- the step and the weight as users pass them -------------------------------------------------


@pytest.mark.parametrize(
    ("step", "dtype"),
    [
        (jnp.asarray(0, jnp.int32), jnp.int32),
        (jnp.asarray(0, jnp.uint8), jnp.uint8),
        (jnp.asarray(0, jnp.uint32), jnp.uint32),
        (jnp.asarray(0, jnp.int16), jnp.int16),
        (0, jnp.int32),
        (np.int64(0), jnp.int32),
        (np.asarray(0, np.uint16), jnp.uint16),
    ],
    ids=["jnp-int32", "jnp-uint8", "jnp-uint32", "jnp-int16", "int", "np-int64", "np-uint16"],
)
def test_a_step_of_any_integer_kind_compiles_once_and_keeps_a_dtype(step: Any, dtype: Any) -> None:
    """A JAX step keeps its integer dtype, and so does a numpy one of a dtype JAX has (as the
    eager update keeps it); a Python int, or a numpy int64 without x64, becomes JAX's default
    int; either way the steady state never recompiles and counts on."""
    params = {"w": jnp.ones(3)}
    state = ema.init(params, CFG)._replace(step=step)
    compiles, state, sigs = _steady(make_update(CFG), state, _shifted(params))
    assert compiles == 0
    assert all(s == sigs[0] for s in sigs)
    assert state.step.dtype == dtype and int(state.step) == STEPS


def test_a_weak_typed_step_stays_as_given_without_recompiling() -> None:
    """``jnp.asarray(0)`` is a weak int32: the update keeps it weak (stable) and compiles once."""
    params = {"w": jnp.ones(3)}
    state = ema.init(params, CFG)._replace(step=jnp.asarray(0))
    compiles, state, sigs = _steady(make_update(CFG), state, _shifted(params))
    assert compiles == 0 and all(s == sigs[0] for s in sigs)


def test_a_state_of_python_scalars_compiles_once() -> None:
    """``EMAState(step=0, shadow, weight=1.0)`` built by hand: the Python scalars become 0-d
    arrays before the first call, which then serves every later step."""
    params = {"w": jnp.ones(3)}
    state = ema.EMAState(step=0, shadow=params, weight=1.0)
    update = make_update(CFG, donate=False)
    compiles, state, _ = _steady(update, state, _shifted(params))
    assert compiles == 0
    assert _sig(state) == _sig(ema.init(params, CFG))


def test_a_hand_built_state_with_a_weak_weight_compiles_once() -> None:
    """``weight=jnp.asarray(1.0)`` (weak float32): the second call must not compile again."""
    params = {"w": jnp.ones(3)}
    state = ema.EMAState(step=jnp.zeros((), jnp.int32), shadow=params, weight=jnp.asarray(1.0))
    compiles, _, _ = _steady(make_update(CFG, donate=False), state, _shifted(params))
    assert compiles == 0


@pytest.mark.parametrize("entry", ["make_update", "make_bank_update"])
def test_a_state_snapshotted_to_the_host_resumes_with_one_compilation(entry: str) -> None:
    """``jax.device_get(state)`` (a host snapshot, pickled and resumed): numpy float32 states
    are accepted, and resuming must compile once like any fresh state."""
    params = {"w": jnp.ones(3)}
    if entry == "make_update":  # the snapshot's update is not the one that resumes it
        state = make_update(CFG)(ema.init(params, CFG), params)
        update: Any = make_update(CFG)
    else:
        bank = make_bank_update((CFG,))
        state = bank(bank.init(params), params)
        update = make_bank_update((CFG,))
    state = jax.device_get(state)
    assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(state))
    compiles, _, _ = _steady(update, state, _shifted(params))
    assert compiles == 0


# --- donation -----------------------------------------------------------------------------------


def test_an_ema_reset_to_the_params_then_updated_with_them() -> None:
    """``state._replace(shadow=params)`` (timm's ``set``: restart the EMA at the weights) then
    ``update(state, params)``: the donated shadow is also the params. Either the update works
    (the shadow stays the params: they are equal) or a ValueError names the shared array; JAX's
    bare runtime error is neither."""
    params = {"w": jnp.full(3, 2.0)}
    update = make_update(CFG)
    state = update(ema.init({"w": jnp.zeros(3)}, CFG), {"w": jnp.zeros(3)})
    reset = state._replace(shadow=params)
    try:
        new = update(reset, params)
    except ValueError as error:
        assert "params" in str(error) and "shadow" in str(error)
        assert not params["w"].is_deleted()
        return
    np.testing.assert_array_equal(np.asarray(new.shadow["w"]), np.full(3, 2.0, np.float32))
    assert int(new.step) == 2


# --- the bank, vmap, x64 ------------------------------------------------------------------------


def test_a_bank_over_mixed_dtypes_compiles_once_and_keeps_its_states() -> None:
    """``make_bank_update`` over float32 and bf16 params with two configs: one compilation, and
    each of the K states keeps its signature (bf16 params get a float32 shadow)."""
    bank = make_bank_update((ema.Config(schedule=0.9), ema.Config(schedule=0.99, init="zeros")))
    params = {"w": jnp.ones(3), "b": jnp.zeros((), jnp.bfloat16)}
    compiles, states, sigs = _steady(bank, bank.init(params), _shifted(params))
    assert compiles == 0
    assert all(s == sigs[0] for s in sigs)
    assert all(s.shadow["b"].dtype == jnp.float32 for s in states)


def test_vmap_of_make_update_over_a_batch_of_emas_is_each_ema_alone() -> None:
    """``jax.jit(jax.vmap(update))`` over 4 EMAs with their own params: one compilation, and
    every row is bit for bit the EMA updated alone."""
    config = ema.Config(schedule=ema.schedules.warmup(0.99), init="zeros")
    update = make_update(config, donate=False)
    rows = jnp.arange(12.0).reshape(4, 3)
    start = ema.init({"w": jnp.zeros(3)}, config)
    batched = jax.tree_util.tree_map(lambda x: jnp.stack([x] * 4), start)
    stepped = jax.jit(jax.vmap(update))
    targets = [{"w": rows * i} for i in range(STEPS)]
    compiles, batched, sigs = _steady(stepped, batched, targets)
    assert compiles == 0 and all(s == sigs[0] for s in sigs)
    for r in range(4):
        alone = start
        for target in targets:
            alone = update(alone, {"w": target["w"][r]})
        _assert_same_bits(jax.tree_util.tree_map(lambda x, r=r: x[r], batched), alone)


def test_under_x64_the_update_compiles_once_and_keeps_64_bit_dtypes() -> None:
    """With x64 on: an int64 step, float64 shadows for float64 params and float32 ones for
    float32 params, all kept, one compilation."""
    with jax.enable_x64(True):
        params = {"d": jnp.ones(3, jnp.float64), "f": jnp.ones(2, jnp.float32)}
        state = ema.init(params, CFG)
        compiles, state, sigs = _steady(make_update(CFG), state, _shifted(params))
        assert compiles == 0 and all(s == sigs[0] for s in sigs)
        assert state.step.dtype == jnp.int64
        assert (state.shadow["d"].dtype, state.shadow["f"].dtype) == (jnp.float64, jnp.float32)


# --- optax, scan, grad, the eager path ----------------------------------------------------------


@pytest.mark.parametrize("init", ["params", "copy", "zeros"])
def test_with_ema_inside_a_jitted_train_step_compiles_once(init: str) -> None:
    """The optax wrapper in a user's ``jax.jit`` train step with weak-typed params: the opt
    state's signature never moves, so the step compiles once for every init policy."""
    config = ema.Config(schedule=ema.schedules.warmup(0.99), init=init)
    opt = with_ema(optax_sgd(), config)

    @jax.jit
    def train_step(carry: Any, grads: Any) -> Any:
        params, opt_state = carry
        updates, opt_state = opt.update(grads, opt_state, params)
        return jax.tree_util.tree_map(lambda p, u: p + u, params, updates), opt_state

    params = {"w": jnp.full(3, 1.0), "s": jnp.asarray(0.5)}
    grads = [jax.tree_util.tree_map(lambda x, i=i: x * i, params) for i in range(STEPS)]
    compiles, (_, opt_state), sigs = _steady(train_step, (params, opt.init(params)), grads)
    assert compiles == 0 and all(s == sigs[0] for s in sigs)
    assert int(opt_state.ema.step) == STEPS
    assert ema_average(opt_state, config)["w"].dtype == jnp.float32


def optax_sgd() -> Any:
    """``optax.sgd(0.1)``, or a skip when optax is missing."""
    optax = pytest.importorskip("optax")
    return optax.sgd(0.1)


def test_with_ema_around_multisteps_is_a_stable_scan_carry() -> None:
    """``lax.scan`` with params and a ``with_ema(MultiSteps(...))`` state as the carry: the
    ``lax.cond`` between a step and a micro-step returns the carry's exact types (scan raises
    otherwise), and the EMA moves once per optimizer step."""
    optax = pytest.importorskip("optax")
    opt = with_ema(optax.MultiSteps(optax.sgd(0.1), 2), ema.Config(schedule=0.5, init="zeros"))
    params = {"w": jnp.zeros(3)}

    def body(carry: Any, g: Any) -> Any:
        p, opt_state = carry
        updates, opt_state = opt.update({"w": g}, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    start = (params, opt.init(params))
    (_, opt_state), _ = jax.lax.scan(body, start, jnp.ones((STEPS, 3)))
    assert _sig(opt_state) == _sig(start[1])
    assert int(opt_state.ema.step) == STEPS // 2


@pytest.mark.parametrize(
    "config",
    [
        ema.Config(schedule=0.9),
        ema.Config(schedule=ema.schedules.warmup(0.99), init="copy"),
        ema.Config(schedule=ema.schedules.power_function(sigma_rel=0.05), init="zeros"),
        ema.Config(schedule=0.9, dtype="same"),
        ema.Config(schedule=0.9, interval=3),
    ],
    ids=["constant", "copy", "zeros", "same-dtype", "interval"],
)
def test_update_returns_the_carry_signature_it_was_given(config: ema.Config) -> None:
    """For scan: ``update(state, params)`` traced has the state's exact signature (dtypes and
    weak types included) over weak, bf16, 0-d, empty and integer leaves, from ``init`` and from
    a state of Python scalars; a scan over the steps then runs."""
    params = {
        "weak": jnp.full(2, 1.0),
        "half": jnp.ones(3, jnp.bfloat16),
        "zero_d": jnp.asarray(1.0, jnp.float32),
        "empty": jnp.zeros((0,)),
        "count": jnp.asarray(0, jnp.int32),
    }
    state = ema.init(params, config)
    out = jax.eval_shape(lambda s, p: ema.update(s, p, config), state, params)
    assert _sig(out) == _sig(state)
    xs = jax.tree_util.tree_map(lambda x: jnp.stack([x] * 4), params)
    scanned, _ = jax.lax.scan(lambda s, p: (ema.update(s, p, config), None), state, xs)
    assert _sig(scanned) == _sig(state) and int(scanned.step) == 4
    hand = ema.EMAState(step=0, shadow=state.shadow, weight=1.0)
    scanned, _ = jax.lax.scan(lambda s, p: (ema.update(s, p, config), None), hand, xs)
    # a Python-number carry is weakly typed in JAX's scan; the shadows are not
    assert _sig(scanned.shadow) == _sig(state.shadow) and int(scanned.step) == 4


def test_grad_of_a_debiased_average_with_respect_to_the_shadow_is_one_over_the_weight() -> None:
    """``jax.grad`` through ``average`` of an ``init="zeros"`` state: d(sum(shadow / weight)) /
    d(shadow) is ``1 / weight`` for every element, in the shadow's dtype."""
    config = ema.Config(schedule=0.9, init="zeros")
    params = {"w": jnp.arange(3.0)}
    state = make_update(config)(ema.init(params, config), params)

    def total(shadow: Any) -> Any:
        return jnp.sum(ema.average(state._replace(shadow=shadow), config)["w"])

    grad = jax.grad(total)(state.shadow)
    assert grad["w"].dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(grad["w"]), np.full(3, 1.0 / float(state.weight)), rtol=1e-6
    )


def test_the_eager_update_and_average_stop_compiling_after_the_second_step() -> None:
    """The eager ``update`` runs compiled: after the first two steps (the second sees committed
    arrays) a schedule that moves every step compiles nothing more, for ``average`` either."""
    config = ema.Config(schedule=ema.schedules.warmup(0.99), init="zeros")
    params = {"w": jnp.full(3, 1.0), "s": jnp.asarray(0.0)}
    targets = _shifted(params, STEPS + 2)
    jax.block_until_ready(targets)
    state = ema.init(params, config)
    for target in targets[:2]:
        state = ema.update(state, target, config)
        ema.average(state, config)
    first = _sig(state)
    with counting_compiles() as seen:
        for target in targets[2:]:
            state = ema.update(state, target, config)
            ema.average(state, config)
        jax.block_until_ready(state)
    assert len(seen) == 0
    assert _sig(state) == first


def test_the_stateless_update_with_a_moving_host_decay_stops_compiling() -> None:
    """``ema_update`` with a Python-float decay that changes every call: the decay enters as a
    0-d array, so the steady state compiles nothing and the shadow keeps its dtype."""
    params = {"w": jnp.full(3, 1.0)}
    targets = _shifted(params, STEPS + 2)
    jax.block_until_ready(targets)
    shadow = {"w": jnp.zeros(3)}
    for i, target in enumerate(targets[:2]):
        shadow = ema.ema_update(shadow, target, i + 1, decay=0.9)
    with counting_compiles() as seen:
        for i, target in enumerate(targets[2:]):
            shadow = ema.ema_update(shadow, target, i + 3, decay=0.9 - 0.01 * i)
        jax.block_until_ready(shadow)
    assert len(seen) == 0
    assert _sig(shadow) == _sig({"w": jnp.zeros(3, jnp.float32)})


def test_an_integer_leaf_whose_dtype_drifts_is_refused_before_donation() -> None:
    """A counter leaf cast from int32 to int8 between steps (a copied leaf cannot silently
    change dtype): ``make_update`` raises a TypeError naming both paths and donates nothing,
    and the same state then continues with the int32 counter."""
    params = {"w": jnp.ones(3), "n": jnp.asarray(1, jnp.int32)}
    update = make_update(CFG)
    state = update(ema.init(params, CFG), params)
    drifted = {"w": jnp.ones(3), "n": jnp.asarray(2, jnp.int8)}
    with pytest.raises(TypeError, match=r"state\.shadow\['n'\] has dtype int32 but params\['n'\]"):
        update(state, drifted)
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))
    state = update(state, params)
    assert state.shadow["n"].dtype == jnp.int32 and int(state.step) == 2
