"""The JAX paths under JAX's transformations and modes: deleted (donated) arrays anywhere in a
state or params, a state made with x64 on and updated with it off, steps near their dtype's top,
and vmap, scan, grad and eval_shape around ``update`` and ``make_update``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core.jax import _chunked, make_bank_update, make_update  # noqa: E402

CFG = ema.Config(schedule=ema.schedules.warmup(0.99), init="zeros")
CHUNK = 4  # the chunk size for the chunked path here (1024 in use: same code, slow to compile)
MANY = CHUNK + 2  # the chunked path: a full chunk, then a short one


def _tree(n: int) -> dict[str, Any]:
    return {f"k{i:05d}": jnp.full((2,), float(i)) for i in range(n)}


def _alive(tree: Any) -> bool:
    return not any(x.is_deleted() for x in jax.tree_util.tree_leaves(tree))


# --- deleted arrays: named, and nothing donated -------------------------------------------------


@pytest.mark.parametrize("n", [1, MANY], ids=["single", "chunked"])
def test_a_deleted_shadow_leaf_is_named_and_nothing_is_donated(
    n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_chunked, "CHUNK", CHUNK)
    params = _tree(n)
    update = make_update(CFG)
    state = update(ema.init(params, CFG), params)
    last = sorted(params)[-1]
    state.shadow[last].delete()  # as a state put together from an old, donated shadow
    with pytest.raises(ValueError, match=rf"state\.shadow\['{last}'\] was deleted.*nothing was"):
        update(state, params)
    assert not state.step.is_deleted() and not state.weight.is_deleted()
    assert _alive({k: v for k, v in state.shadow.items() if k != last})


def test_a_fresh_state_with_a_deleted_shadow_is_named() -> None:
    """A fresh ``init`` state is uncommitted: committing it must not hit the deleted array."""
    params = {"w": jnp.ones(3)}
    update = make_update(CFG)
    old = ema.init(params, CFG)
    new = update(old, params)
    mixed = ema.EMAState(new.step, old.shadow, new.weight)
    with pytest.raises(ValueError, match=r"state\.shadow\['w'\] was deleted"):
        update(mixed, params)
    assert _alive((new.step, new.weight))


@pytest.mark.parametrize("n", [1, MANY], ids=["single", "chunked"])
def test_deleted_params_are_named_before_anything_is_donated(
    n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_chunked, "CHUNK", CHUNK)
    params = _tree(n)
    state = ema.init(params, CFG)
    first = sorted(params)[0]
    gone = dict(params)
    gone[first] = jnp.ones(2)
    gone[first].delete()
    with pytest.raises(ValueError, match=rf"params\['{first}'\] was deleted"):
        make_update(CFG)(state, gone)
    assert _alive(state)


def test_a_bank_names_a_deleted_shadow_and_keeps_the_other_states() -> None:
    configs = [ema.Config(schedule=0.9), ema.Config(schedule=0.5)]
    params = {"w": jnp.ones(3)}
    bank = make_bank_update(configs)
    out = bank(bank.init(params), params)
    out[1].shadow["w"].delete()
    with pytest.raises(ValueError, match=r"states\[1\]\.shadow\['w'\] was deleted"):
        bank(out, params)
    assert _alive(out[0]) and _alive((out[1].step, out[1].weight))


# --- x64 on when the state was made, off when it is updated -------------------------------------


def _made_with_x64(shadow_dtype: Any, step_dtype: Any) -> Any:
    with jax.enable_x64(True):
        state = ema.init({"w": jnp.arange(3.0, dtype=shadow_dtype)}, CFG)
        return state._replace(step=jnp.asarray(0, step_dtype))


@pytest.mark.parametrize(
    ("shadow", "step", "named"),
    [
        ("float64", "int64", r"state\.step has dtype int64"),
        ("float64", "int32", r"state\.shadow\['w'\] has dtype float64"),
    ],
)
def test_a_64_bit_state_without_x64_is_refused_before_donating(
    shadow: str, step: str, named: str
) -> None:
    state = _made_with_x64(shadow, step)
    with pytest.raises(TypeError, match=named + r".*x64 mode is off.*as (int|float)32"):
        make_update(CFG)(state, {"w": jnp.ones(3)})
    assert _alive(state) and state.shadow["w"].dtype == np.float64


def test_a_bank_refuses_a_64_bit_state_without_x64() -> None:
    state = _made_with_x64("float64", "int32")
    bank = make_bank_update([CFG])
    with pytest.raises(TypeError, match=r"states\[0\]\.shadow\['w'\] has dtype float64"):
        bank((state,), {"w": jnp.ones(3)})
    assert _alive(state)


# --- steps near their dtype's top (needs the ema_core/_ops.py change in the report) -------------


def _saturates(dtype: str) -> None:
    top = int(np.iinfo(dtype).max)
    params = {"w": jnp.ones(2)}
    state = ema.init(params, CFG)._replace(step=jnp.asarray(top - 1, dtype))
    update = make_update(CFG, donate=False)
    once = update(state, params)
    twice = update(once, params)
    eager = ema.update(ema.update(state, params, CFG), params, CFG)
    assert (int(once.step), int(twice.step), int(eager.step)) == (top, top, top)
    assert twice.step.dtype == eager.step.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", ["uint16", "int8", "uint8"])
def test_a_small_step_saturates_at_its_top(dtype: str) -> None:
    _saturates(dtype)


def test_a_uint32_step_saturates_at_its_top() -> None:
    _saturates("uint32")


# --- transformations: the same numbers as the plain loop ----------------------------------------


def _steps(n: int) -> list[dict[str, Any]]:
    return [{"w": jnp.arange(3.0) * (i + 1) * 0.37} for i in range(n)]


def _equal(a: Any, b: Any) -> None:
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_scan_carrying_the_state_is_the_make_update_loop_bit_for_bit() -> None:
    steps = _steps(40)
    start = ema.init(steps[0], CFG)
    carried, _ = jax.lax.scan(
        lambda s, p: (ema.update(s, p, CFG), None),
        start,
        jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *steps),
    )
    update, looped = make_update(CFG, donate=False), start
    for p in steps:
        looped = update(looped, p)
    _equal(carried, looped)


def test_vmap_over_batched_steps_is_each_ema_alone() -> None:
    params = {"w": jnp.arange(3.0)}
    start = ema.init(params, CFG)
    steps = jnp.asarray([0, 5, 1000], start.step.dtype)
    update = make_update(CFG, donate=False)
    batched = jax.vmap(lambda t: update(start._replace(step=t), params))(steps)
    for i, t in enumerate(steps.tolist()):
        alone = update(start._replace(step=jnp.asarray(t, start.step.dtype)), params)
        _equal(jax.tree_util.tree_map(lambda x, i=i: x[i], batched), alone)


def test_grad_flows_through_update_and_average_with_a_float0_step() -> None:
    params = {"w": jnp.arange(3.0)}
    start = ema.init(params, CFG)

    def loss(state: Any, p: Any) -> Any:
        return jnp.sum(ema.average(ema.update(state, p, CFG), CFG)["w"])

    g_state, g_params = jax.grad(loss, argnums=(0, 1), allow_int=True)(start, params)
    assert g_state.step.dtype == jax.dtypes.float0
    # at the first update of a zero-started EMA the average is the params themselves
    np.testing.assert_allclose(np.asarray(g_params["w"]), np.ones(3), rtol=1e-6)


def test_eval_shape_of_make_update_reads_nothing() -> None:
    """Shapes only: a read of any value (the step's range check) would fail on these."""
    params = jax.ShapeDtypeStruct((3,), jnp.float32)
    state = jax.eval_shape(lambda p: ema.init({"w": p}, CFG), params)
    out = jax.eval_shape(make_update(CFG), state, {"w": params})
    assert (out.shadow["w"].shape, out.step.dtype) == ((3,), state.step.dtype)


# --- the eager paths (need the ema_core/_leaf_checks.py change in the report) -------------------

_EAGER = {
    "update": lambda s, p: ema.update(s, p, CFG),
    "average": lambda s, p: ema.average(s, CFG),
    "ema_update": lambda s, p: ema.ema_update(s.shadow, p, 1, decay=0.5),
}


@pytest.mark.parametrize("call", sorted(_EAGER))
def test_an_eager_call_names_a_donated_shadow(call: str) -> None:
    params = {"w": jnp.ones(3)}
    state = ema.init(params, CFG)
    make_update(CFG)(state, params)  # donates state
    with pytest.raises(ValueError, match=r"shadow\['w'\] was deleted"):
        _EAGER[call](state, params)


def test_an_eager_update_refuses_a_float64_shadow_without_x64() -> None:
    state = _made_with_x64("float64", "int32")
    with pytest.raises(TypeError, match=r"state\.shadow\['w'\] has dtype float64"):
        ema.update(state, {"w": jnp.ones(3)}, CFG)
