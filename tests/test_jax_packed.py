"""``ema_core.jax.pack`` / ``unpack`` and ``make_update`` on a ``PackedState``: the same bits as
the unpacked update under every config, blocks and loose leaves in their places, a round trip
that changes nothing, and bad input refused by name before anything is donated."""

from __future__ import annotations

import re
import textwrap
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core import schedules  # noqa: E402
from ema_core.jax import (  # noqa: E402
    PackedState,
    _packed,
    make_update,
    pack,
    unpack,
)
from tests.two_cpu_devices import run_on_two_cpu_devices  # noqa: E402


def _params(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)

    def f(*shape: int, dtype: Any = jnp.float32) -> Any:
        return jnp.asarray(rng.standard_normal(shape), dtype)

    return {
        "a": f(3, 4),
        "half": f(5, dtype=jnp.bfloat16),
        "f16": f(2, 3, dtype=jnp.float16),
        "big": f(70, 70),
        "count": jnp.asarray(seed, jnp.int32),
        "flag": jnp.asarray(seed % 2 == 0),
        "none": None,
        "many": [f(7) for _ in range(9)],
        "scalar": f(),
    }


def _same(a: Any, b: Any) -> None:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(
            np.asarray(x).view(np.uint8) if x.ndim else np.asarray(x),
            np.asarray(y).view(np.uint8) if y.ndim else np.asarray(y),
        )


CONFIGS = {
    "constant": ema.Config(schedule=0.9),
    "warmup-zeros": ema.Config(schedule=schedules.warmup(0.999, power=0.75), init="zeros"),
    "interval-same": ema.Config(schedule=0.5, interval=2, dtype="same"),
    "copy-freeze": ema.Config(schedule=0.99, init="copy", non_float="freeze"),
}


@pytest.mark.parametrize("donate", [True, False], ids=["donate", "keep"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_packed_update_is_the_unpacked_update_bit_for_bit(
    name: str, donate: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_packed, "BLOCK", 4)  # blocks of 4: several per dtype
    config = CONFIGS[name]
    plain = ema.init(_params(0), config)
    packed = pack(ema.init(_params(0), config), most=100)
    assert len(packed.flats) >= 3 and len(packed.loose) == 3  # big, count, flag
    update, update_packed = make_update(config, donate=donate), make_update(config, donate=donate)
    for step in range(1, 6):
        plain = update(plain, _params(step))
        packed = update_packed(packed, _params(step))
        assert isinstance(packed, PackedState)
        _same(unpack(packed), plain)
    if not donate:  # the same packed state updated twice gives the same result
        _same(unpack(update_packed(packed, _params(9))), unpack(update_packed(packed, _params(9))))


def test_layout_blocks_by_dtype_and_size_and_round_trip() -> None:
    state = ema.init(_params(0), ema.Config(dtype="same"))
    packed = pack(state, most=100)
    layout = packed.layout
    dtypes = [{layout.dtypes[i] for i in members} for members in layout.blocks]
    assert all(len(d) == 1 for d in dtypes)  # one dtype per block
    assert sorted(d.pop() for d in dtypes) == ["bfloat16", "float16", "float32"]
    loose_shapes = sorted((layout.shapes[i], layout.dtypes[i]) for i in layout.loose)
    assert loose_shapes == [((), "bool"), ((), "int32"), ((70, 70), "float32")]
    for flat, members in zip(packed.flats, layout.blocks, strict=True):
        assert flat.ndim == 1 and flat.size == sum(int(np.prod(layout.shapes[i])) for i in members)
    _same(unpack(packed), state)
    # the packed leaves are copies: the state's own shadows are untouched and still usable
    _same(unpack(pack(state, most=0)), state)
    assert pack(state, most=0).flats == ()
    leaves = jax.tree_util.tree_leaves(packed)
    assert len(leaves) == 2 + len(packed.flats) + len(packed.loose)  # a pytree: arrays only


def test_many_leaves_in_blocks_of_chunk() -> None:
    params = {f"p{i:04d}": jnp.full((3,), float(i)) for i in range(_packed.BLOCK + 7)}
    config = ema.Config(schedule=0.5)
    packed = pack(ema.init(params, config))
    assert [len(b) for b in packed.layout.blocks] == [_packed.BLOCK, 7]
    target = jax.tree_util.tree_map(lambda x: x + 4.0, params)
    packed = make_update(config)(packed, target)
    out = unpack(packed).shadow
    assert out["p0000"].tolist() == [2.0] * 3 and out[f"p{_packed.BLOCK + 6:04d}"][0] == (
        _packed.BLOCK + 6 + 2.0
    )


def test_inside_jit_equals_outside() -> None:
    config = ema.Config(schedule=0.8)
    update = make_update(config, donate=False)
    packed = pack(ema.init(_params(0), config), most=100)
    outside = update(packed, _params(1))
    inside = jax.jit(update)(packed, _params(1))
    _same(unpack(inside), unpack(outside))


def _refused(call: Any, words: str, state: PackedState) -> None:
    with pytest.raises(ValueError, match=words):
        call()
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))


def test_bad_params_are_refused_by_path_before_any_donation() -> None:
    config = ema.Config(schedule=0.5)
    update = make_update(config)
    packed = pack(ema.init(_params(0), config), most=100)
    before = unpack(packed)
    wrong_shape = _params(1)
    wrong_shape["many"][4] = jnp.ones(8)
    _refused(lambda: update(packed, wrong_shape), re.escape("params['many'][4]"), packed)
    missing = _params(1)
    del missing["a"]
    _refused(lambda: update(packed, missing), "params", packed)
    to_int = _params(1)
    to_int["many"][0] = jnp.ones(7, jnp.int32)  # the unpacked update refuses it as well
    with pytest.raises(TypeError, match=re.escape("params['many'][0] is int32")):
        update(packed, to_int)
    nan = _params(1)
    nan["a"] = nan["a"].at[0, 0].set(jnp.nan)
    guarded = make_update(ema.Config(schedule=0.5, guard_finite=True))
    _refused(lambda: guarded(packed, nan), re.escape("params['a']"), packed)
    _same(unpack(packed), before)  # nothing changed
    after = update(packed, _params(1))  # the same state goes on
    assert int(after.step) == 1


def test_a_donated_state_or_param_is_refused() -> None:
    config = ema.Config(schedule=0.5)
    update = make_update(config)
    packed = pack(ema.init(_params(0), config), most=100)
    newer = update(packed, _params(1))
    with pytest.raises(ValueError, match="donated"):
        update(packed, _params(2))
    dead = _params(2)
    dead["many"][3].delete()
    _refused(lambda: update(newer, dead), r"params\['many'\]\[3\] was deleted", newer)


def test_a_state_fetched_to_the_host_is_refused_until_put_back() -> None:
    config = ema.Config(schedule=0.5)
    update = make_update(config)
    packed = pack(ema.init(_params(0), config), most=100)
    host = jax.device_get(packed)
    assert isinstance(host, PackedState) and isinstance(host.flats[0], np.ndarray)
    with pytest.raises(TypeError, match=re.escape("jax.device_put(state, device)")):
        update(host, _params(1))
    back = update(jax.device_put(host, jax.devices()[0]), _params(1))
    _same(unpack(back), unpack(update(packed, _params(1))))


def test_pack_and_unpack_refuse_what_they_cannot_take() -> None:
    state = ema.init(_params(0), ema.Config())
    with pytest.raises(TypeError, match="most must be an int"):
        pack(state, most=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="most must be an int"):
        pack(state, most=True)
    with pytest.raises(ValueError, match="most must be >= 0"):
        pack(state, most=-1)
    with pytest.raises(TypeError, match="EMAState"):
        pack(_params(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="JAX arrays"):
        pack(ema.init({"w": np.zeros(3, np.float32)}, ema.Config()))
    with pytest.raises(TypeError, match="PackedState"):
        unpack(state)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(lambda s: pack(s).flats)(state)


def test_two_devices_a_sharded_state_and_committed_params_elsewhere() -> None:
    run_on_two_cpu_devices(
        textwrap.dedent(
            """
            import jax, jax.numpy as jnp, numpy as np
            import ema_core as ema
            from ema_core.jax import make_update, pack, unpack
            d0, d1 = jax.devices()[:2]
            config = ema.Config(schedule=0.5)
            params = {"a": jnp.zeros(3), "b": jnp.zeros(2)}
            spread = {"a": jax.device_put(params["a"], d0), "b": jax.device_put(params["b"], d1)}
            try:
                pack(ema.init(spread, config))
                raise AssertionError("not refused")
            except ValueError as err:
                assert "one device" in str(err), err
            packed = pack(jax.device_put(ema.init(params, config), d1))
            update = make_update(config)
            try:
                update(packed, {"a": jax.device_put(jnp.ones(3), d0), "b": jnp.ones(2)})
                raise AssertionError("not refused")
            except ValueError as err:
                assert "params['a'] is on" in str(err) and "nothing was donated" in str(err), err
            assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(packed))
            packed = update(packed, {"a": jax.device_put(jnp.ones(3), d1), "b": jnp.ones(2)})
            assert unpack(packed).shadow["a"].tolist() == [0.5] * 3
            assert packed.flats[0].devices() == {d1}
            print("PACKED-DEVICES-OK")
            """
        ),
        "PACKED-DEVICES-OK",
    )


def test_steady_updates_compile_nothing_and_a_shadow_shared_with_params_is_copied() -> None:
    from tests.xla_compiles import counting_compiles

    config = ema.Config(schedule=0.5)
    params = _params(0)
    packed = pack(ema.init(params, config)._replace(shadow=params), most=100)  # reset to weights
    update = make_update(config)
    packed = update(packed, params)  # the shared "big" is copied before it is donated
    assert not params["big"].is_deleted()
    with counting_compiles() as seen:
        for step in range(2, 5):
            packed = update(packed, _params(step))
    assert seen == []
    assert int(packed.step) == 4


def test_an_equinox_module_and_a_state_with_nothing_small() -> None:
    eqx = pytest.importorskip("equinox")
    config = ema.Config(schedule=0.5)
    model = eqx.nn.MLP(3, 2, 5, 2, key=jax.random.PRNGKey(0))
    moved = jax.tree_util.tree_map(lambda x: x + 1 if eqx.is_array(x) else x, model)
    plain = make_update(config)(ema.init(model, config), moved)
    packed = make_update(config)(pack(ema.init(model, config)), moved)
    assert len(packed.flats) == 1 and packed.loose == ()
    out = unpack(packed)
    assert type(out.shadow) is type(model)  # static fields (the activations) kept
    assert out.shadow.activation is plain.shadow.activation
    _same(eqx.filter(out.shadow, eqx.is_array), eqx.filter(plain.shadow, eqx.is_array))
    big = {"w": jnp.ones((40, 40))}
    alone = pack(ema.init(big, config), most=0)
    update = make_update(config)
    alone = update(update(alone, big), {"w": jnp.zeros((40, 40))})
    assert alone.flats == () and float(unpack(alone).shadow["w"][0, 0]) == 0.5


def test_packed_equals_unpacked_on_drawn_trees_and_configs() -> None:
    """hypothesis: any config of the kit, any trajectory of float32/bfloat16 nests with integer
    buffers, any packing threshold: the packed update gives the unpacked one's bits, or the
    same error."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from ema_core import testing

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        config=testing.configs(),
        traj=testing.trajectories(jnp, length=4, dtypes=("float32", "bfloat16"), int_buffers=True),
        most=st.sampled_from([0, 3, 4096]),
    )
    def check(config: ema.Config, traj: Any, most: int) -> None:
        try:
            plain = ema.init(traj.init, config)
        except (TypeError, ValueError) as err:  # refused alike by init: nothing to pack
            with pytest.raises(type(err)):
                pack(ema.init(traj.init, config), most=most)
            return
        packed = pack(ema.init(traj.init, config), most=most)
        update, update_packed = make_update(config), make_update(config)
        for params in traj.steps:
            try:
                plain = update(plain, params)
            except (TypeError, ValueError) as err:
                with pytest.raises(type(err)):
                    update_packed(packed, params)
                return
            packed = update_packed(packed, params)
            _same(unpack(packed), plain)

    check()


def test_loose_shadows_are_raveled_copies_and_an_unraveled_state_still_updates() -> None:
    """A loose shadow is stored raveled (1-d; its params are raveled inside the compiled
    update), as a copy: the state given to ``pack`` stays usable after the packed one was
    updated (donated). A packed state whose loose shadows keep their own shapes (one packed
    before they were raveled, restored from a checkpoint) updates to the same bits."""
    config = ema.Config(schedule=0.75)
    state = ema.init(_params(0), config)
    packed = pack(state, most=100)
    layout = packed.layout
    assert [x.shape for x in packed.loose] == [
        (int(np.prod(layout.shapes[i])),) for i in layout.loose
    ]
    assert [x.shape for x in packed.loose] == [(4900,), (1,), (1,)]  # big, count, flag
    again = pack(state, most=100)  # its own arrays: an update donates every one of them
    unraveled = again._replace(
        loose=tuple(
            x.reshape(layout.shapes[i]) for x, i in zip(again.loose, layout.loose, strict=True)
        )
    )
    plain, update = ema.init(_params(0), config), make_update(config)
    for step in range(1, 4):
        packed = make_update(config)(packed, _params(step))
        unraveled = make_update(config)(unraveled, _params(step))
        plain = update(plain, _params(step))
        _same(unpack(packed), plain)
        _same(unpack(unraveled), plain)
    assert [x.shape for x in unraveled.loose] == [(70, 70), (), ()]  # kept as they came
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))
    _same(state, ema.init(_params(0), config))  # the given state as it was
