"""What a hunt for broken promises on the JAX side found (2026-12-04), each fixed:

* a state fetched to the host (numpy) given to ``make_update`` with params on another device,
  or sharded, was refused: its step went to the default device while its shadows went where
  the params are;
* the bank took a Python or numpy step/weight as static values (never advancing, or with its
  outputs shifted a place), and failed on every call under ``guard_finite=True``;
* the packed update skipped the x64 check (a state packed under x64 was narrowed and
  donated), and a missing param was a bare ``IndexError``;
* ``state_dict`` saved an equinox state's functions as object arrays (``np.savez`` refused
  them; ``load_state_dict`` of its own output failed);
* ``Config(dtype="float32")`` over a complex leaf dropped its imaginary part in ``init``.
"""

from __future__ import annotations

import io
import textwrap
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core.jax import (  # noqa: E402
    load_state_dict,
    make_bank_update,
    make_update,
    pack,
    state_dict,
    unpack,
)
from tests.two_cpu_devices import run_on_two_cpu_devices  # noqa: E402


def test_a_host_state_goes_where_the_params_are_also_another_device_or_sharded() -> None:
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np, ema_core as ema
        from jax.sharding import NamedSharding, PartitionSpec as P
        from ema_core.jax import make_update
        d0, d1 = jax.devices()
        config = ema.Config(schedule=0.5)
        params = {"w": jax.device_put(jnp.arange(4.0), d1)}
        host = jax.device_get(ema.init(params, config))  # numpy step, weight and shadow
        assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(host))
        out = make_update(config)(host, {"w": params["w"] + 2.0})
        assert {d for x in jax.tree_util.tree_leaves(out) for d in x.devices()} == {d1}
        assert out.shadow["w"].tolist() == [1.0, 2.0, 3.0, 4.0] and int(out.step) == 1
        mesh = jax.make_mesh((2,), ("x",))
        sharded = {"w": jax.device_put(jnp.arange(4.0), NamedSharding(mesh, P("x")))}
        out = make_update(config)(host, sharded)
        assert out.shadow["w"].sharding.spec == P("x"), out.shadow["w"].sharding
        assert out.step.sharding.device_set == {d0, d1} and int(out.step) == 1
        print("HOST-STATE-OK")
        """
    )
    run_on_two_cpu_devices(script, "HOST-STATE-OK")


@pytest.mark.parametrize(
    "scalars",
    [
        {"step": 0, "weight": 1.0},
        {"step": np.int64(0), "weight": np.float32(1.0)},
        {"step": np.asarray(0, np.int32)},
    ],
    ids=["python", "numpy-scalar", "numpy-0d"],
)
def test_the_bank_takes_host_scalars_as_make_update_does(scalars: dict[str, Any]) -> None:
    config = ema.Config(schedule=0.5, init="copy")
    params = {"w": jnp.arange(3.0)}
    update, bank = make_update(config), make_bank_update([config])
    alone, banked = ema.init(params, config)._replace(**scalars), None
    banked = (ema.init(params, config)._replace(**scalars),)
    for k in range(1, 4):
        moved = {"w": params["w"] + 10.0 * k}
        alone, banked = update(alone, moved), bank(banked, moved)
    assert int(banked[0].step) == int(alone.step) == 3
    np.testing.assert_array_equal(np.asarray(banked[0].shadow["w"]), np.asarray(alone.shadow["w"]))
    np.testing.assert_array_equal(np.asarray(banked[0].weight), np.asarray(alone.weight))


def test_the_bank_guards_finite_params_on_the_host_before_anything_is_donated() -> None:
    guarded = ema.Config(schedule=0.5, guard_finite=True)
    bank = make_bank_update([guarded, ema.Config(schedule=0.9)])
    params = {"w": jnp.ones(3)}
    states = bank(bank.init(params), params)
    assert [int(s.step) for s in states] == [1, 1]
    with pytest.raises(ValueError, match=r"params\['w'\]"):
        bank(states, {"w": jnp.asarray([1.0, jnp.nan, 1.0])})
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(states))
    assert [int(s.step) for s in bank(states, params)] == [2, 2]


def test_a_state_packed_under_x64_is_refused_with_x64_off_and_kept() -> None:
    config = ema.Config(schedule=0.5)
    with jax.enable_x64(True):
        params = {"w": jnp.ones(3, jnp.float64), "v": jnp.ones(2, jnp.float32)}
        packed = pack(ema.init(params, config))
    with pytest.raises(TypeError, match=r"state\.step has dtype int64.*x64"):
        make_update(config)(packed, {"w": jnp.full(3, 3.0), "v": jnp.full(2, 3.0)})
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(packed))
    with jax.enable_x64(True):  # and it updates where it was made
        new = make_update(config)(packed, {"w": jnp.full(3, 3.0, jnp.float64), "v": params["v"]})
        assert [f.dtype for f in new.flats] == [f.dtype for f in packed.flats]


def test_a_missing_or_extra_param_of_a_packed_state_is_named_by_path() -> None:
    config = ema.Config(schedule=0.5)
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2), "kernel": jnp.zeros((64, 128))}  # loose
    update = make_update(config)
    for tree, where in [
        ({"a": jnp.ones(2), "kernel": jnp.ones((64, 128))}, r"params\['b'\]: key is missing"),
        ({**params, "c": jnp.ones(2)}, r"params\['c'\]: unexpected key"),
    ]:
        packed = pack(ema.init(params, config))
        with pytest.raises(ValueError, match=where):
            update(packed, tree)
        assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(packed))


def test_an_equinox_state_saves_its_arrays_only_and_loads_back() -> None:
    eqx = pytest.importorskip("equinox")
    config = ema.Config(schedule=0.5)
    model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    state = make_update(config)(ema.init(model, config), model)
    saved = state_dict(state)
    assert all(v.dtype != object for v in saved.values())
    arrays = eqx.filter(state.shadow, eqx.is_array)
    assert len(saved) == len(jax.tree_util.tree_leaves(arrays)) + 2  # and the step, the weight
    buf = io.BytesIO()
    np.savez(buf, **saved)
    buf.seek(0)
    back = load_state_dict(dict(np.load(buf)), state)
    assert back.shadow.activation is state.shadow.activation  # taken from like
    leaves = jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(state)
    for got, want in zip(*leaves, strict=True):
        if isinstance(want, jax.Array):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    again = make_update(config)(back, model)  # and it trains on
    assert int(again.step) == 2


@pytest.mark.parametrize(
    ("xp_name", "dtype"),
    # JAX without x64 has no float64 for the real leaf: refused, as it should be
    [("numpy", d) for d in ("float32", "float64", "same", None)]
    + [("jax", d) for d in ("float32", "same", None)],
)
def test_a_complex_leaf_keeps_its_dtype_whatever_config_dtype_says(
    xp_name: str, dtype: str | None
) -> None:
    xp: Any = np if xp_name == "numpy" else jnp
    config = ema.Config(schedule=0.5, dtype=dtype)
    params = {"z": xp.asarray([1 + 2j], dtype=xp.complex64), "r": xp.ones(1, dtype=xp.float32)}
    state = ema.init(params, config)
    assert state.shadow["z"].dtype == params["z"].dtype
    state = ema.update(state, {"z": params["z"] * 3, "r": params["r"]}, config)
    assert complex(np.asarray(ema.average(state, config)["z"])[0]) == 2 + 4j


def test_a_donated_state_given_to_pack_unpack_or_state_dict_is_named() -> None:
    config = ema.Config(schedule=0.5)
    params = {"w": jnp.ones(3), "big": jnp.zeros((70, 70))}
    update = make_update(config)
    state = ema.init(params, config)
    update(state, params)  # donates state
    packed = pack(ema.init(params, config))
    update(packed, params)  # donates packed
    for call, given in [(pack, state), (state_dict, state), (unpack, packed), (state_dict, packed)]:
        with pytest.raises(ValueError, match=r"state\.step was deleted"):
            call(given)
    fresh = pack(ema.init(params, config))
    fresh.flats[0].delete()  # one buffer deleted by hand: named by its field
    with pytest.raises(ValueError, match=r"state\.flats\[0\] was deleted"):
        unpack(fresh)


# --- a second hunt (optax, jit, banks) ----------------------------------------------------------


def _with_ema_run(inner: Any, grads: list[float]) -> tuple[list[float], Any]:
    optax = pytest.importorskip("optax")
    from ema_core.jax import with_ema

    opt = with_ema(inner, ema.Config(schedule=0.5))
    params = {"a": jnp.zeros(2)}
    state = opt.init(params)

    @jax.jit
    def step(params: Any, state: Any, g: Any) -> Any:
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for g in grads:
        params, state = step(params, state, {"a": jnp.full(2, g)})
    return [float(params["a"][0]), float(state.ema.shadow["a"][0])], int(state.ema.step)


def test_with_ema_reads_apply_if_finite_nested_in_multisteps_and_the_other_way() -> None:
    """Each kind's outermost state is read, also inside the other kind: a step
    apply_if_finite rejected, or a micro-batch, does not move the EMA."""
    optax = pytest.importorskip("optax")
    sgd = optax.sgd(1.0)
    alone = _with_ema_run(optax.apply_if_finite(sgd, 5), [-1.0, float("nan")])
    nested = _with_ema_run(optax.MultiSteps(optax.apply_if_finite(sgd, 5), 1), [-1.0, float("nan")])
    assert nested == alone == ([1.0, 0.5], 1)
    micro = _with_ema_run(optax.apply_if_finite(optax.MultiSteps(sgd, 2), 5), [-1.0] * 4)
    assert micro == ([2.0, 1.25], 2)  # two optimizer steps of four micro-batches


def test_half_params_computed_inside_the_same_jit_are_averaged_as_the_model_holds_them() -> None:
    """XLA may drop the bf16 rounding of ``params + updates`` before the EMA widens them to
    float32; the EMA must average the bf16 values the model holds (as outside the jit)."""
    config = ema.Config(schedule=0.5)
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    delta = jnp.asarray([1e-3, 3e-3, 5e-3], jnp.bfloat16)  # below a bf16 unit at 1.0
    state = ema.init(params, config)

    @jax.jit
    def step(state: Any, params: Any) -> Any:
        new = {"w": params["w"] + delta}  # a bf16 add: XLA computes it in float32
        return ema.update(state, new, config), new

    inside, new = step(state, params)
    outside = ema.update(state, new, config)
    np.testing.assert_array_equal(np.asarray(inside.shadow["w"]), np.asarray(outside.shadow["w"]))


@pytest.mark.parametrize("where", ["jit", "vmap", "scan-closed-over"])
def test_guard_finite_on_traced_params_is_a_value_error_pointing_to_apply_if_finite(
    where: str,
) -> None:
    config = ema.Config(schedule=0.5, guard_finite=True)
    params = {"w": jnp.ones(3)}
    state = ema.init(params, config)
    calls = {
        "jit": lambda: jax.jit(lambda s, p: ema.update(s, p, config))(state, params),
        "vmap": lambda: jax.vmap(lambda p: ema.update(state, p, config))({"w": jnp.ones((2, 3))}),
        "scan-closed-over": lambda: jax.lax.scan(
            lambda s, _: (ema.update(s, params, config), None), state, jnp.arange(2)
        ),
    }
    with pytest.raises(ValueError, match=r"guard_finite=True.*traced.*apply_if_finite"):
        calls[where]()


def test_bank_save_snapshots_of_a_donated_state_names_it(tmp_path: Any) -> None:
    bank = make_bank_update(sigma_rels=(0.05, 0.1))
    params = {"w": jnp.ones(3)}
    states = bank.init(params)
    bank(states, params)  # donates states
    with pytest.raises(ValueError, match=r"states\[0\]\.step was deleted"):
        bank.save_snapshots(tmp_path, states)
    assert list(tmp_path.iterdir()) == []


def test_float16_subnormal_params_are_averaged_not_flushed() -> None:
    """The half-params fix keeps the rounding without ``reduce_precision``, which flushed
    float16 values below 6.1e-5 to zero."""
    from ema_core.jax import make_update

    config = ema.Config(schedule=0.5)
    values = np.asarray([1e-6, -3e-7, 5.96e-8, 1e-5, 0.5], np.float16)
    params = {"w": jnp.asarray(values)}
    want = (values.astype(np.float32) * np.float32(0.5)).tolist()
    for update in (lambda s, p: ema.update(s, p, config), make_update(config)):
        state = ema.init({"w": jnp.zeros(5, jnp.float16)}, config)
        assert state.shadow["w"].dtype == jnp.float32
        assert update(state, params).shadow["w"].tolist() == want


def test_an_empty_sharded_leaf_and_equivalent_shardings_on_a_mesh() -> None:
    """``init`` keeps an empty leaf's sharding (JAX's copy of an empty sharded array dropped
    it, and ``make_update`` then refused the state ``init`` made); the eager update takes a
    shadow whose sharding places the elements as its param's does under another spelling
    (``P('x',)`` and ``P('x', None)``, or ``P()`` and ``P(None,)``)."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, ema_core as ema
        from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
        from ema_core.jax import make_update
        config = ema.Config(schedule=0.5)
        mesh = jax.make_mesh((2,), ("x",))
        empty = {"z": jax.device_put(jnp.zeros((0, 4)), NamedSharding(mesh, P(None, "x")))}
        state = ema.init(empty, config)
        assert state.shadow["z"].sharding.is_equivalent_to(empty["z"].sharding, 2)
        assert int(make_update(config)(state, empty).step) == 1
        auto = jax.make_mesh((2,), ("x",), axis_types=(AxisType.Auto,))
        params = {"w": jax.device_put(jnp.ones((8, 4)), NamedSharding(auto, P("x")))}
        state = ema.init(params, config)
        step = jax.jit(lambda t: {"w": t["w"] + 1.0},
                       out_shardings={"w": NamedSharding(auto, P("x", None))})
        moved = step(params)
        assert moved["w"].sharding != state.shadow["w"].sharding  # as the check compared them
        assert ema.update(state, moved, config).shadow["w"].tolist()[0] == [1.5] * 4
        explicit = jax.make_mesh((2,), ("x",), axis_types=(AxisType.Explicit,))
        flat = {"r": jax.device_put(jnp.ones(5), NamedSharding(explicit, P()))}
        state = ema.init(flat, config)
        assert int(ema.update(state, flat, config).step) == 1
        print("MESH-OK")
        """
    )
    run_on_two_cpu_devices(script, "MESH-OK")
