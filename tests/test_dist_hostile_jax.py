"""Hostile shardings under ``make_update`` on 8 CPU devices, in one subprocess (the device count
is fixed when JAX starts): a state sharded one way and params another, another mesh over the
same devices, a replicated shadow of a sharded param (refused naming the leaf, nothing
donated, also on the chunked path), leaves on two sub-meshes, a mesh of one device, donation.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.scaling_out import eight_devices

pytest.importorskip("jax")

pytestmark = pytest.mark.slow  # a subprocess with 8 devices: `pytest -m "not slow"` skips it

SCRIPT = textwrap.dedent(
    r"""
    import json, re, sys, traceback, warnings
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import ema_core as ema
    from ema_core.jax import make_update
    from tests.scaling_out import print_results
    from ema_core.jax._chunked import CHUNK

    warnings.simplefilter("error")  # a donation JAX could not use warns
    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    flipped = jax.make_mesh((4, 2), ("data", "model"))
    config = ema.Config(schedule=ema.schedules.constant(0.5), init="copy")
    w = jnp.arange(64.0).reshape(8, 8)

    def put(x, spec, on=mesh):
        return jax.device_put(x, NamedSharding(on, spec))

    def refused(state, params, pattern):
        try:
            make_update(config)(state, params)
        except ValueError as error:
            assert re.search(pattern, str(error)), str(error)
        else:
            raise AssertionError("no ValueError")
        leaves = jax.tree_util.tree_leaves(state)
        assert not any(x.is_deleted() for x in leaves), "donated before the refusal"

    def state_one_way_params_another():
        state = ema.init({"w": put(w, P("data", None))}, config)
        params = {"w": put(w + 2, P(None, "model"))}
        refused(state, params, r"state\.shadow\['w'\] is sharded .*'data'.*params\['w'\]")

    def replicated_shadow_of_a_sharded_param():
        state = ema.init({"w": put(w, P()), "b": put(jnp.ones(8), P("model"))}, config)
        params = {"w": put(w, P("data", "model")), "b": put(jnp.ones(8), P("model"))}
        refused(state, params, r"state\.shadow\['w'\] is sharded P\((None, None)?\) ")

    def another_mesh_over_the_same_devices():
        state = ema.init({"w": put(w, P("data", None))}, config)
        params = {"w": put(w, P("data", None), flipped)}
        refused(state, params, r"\['w'\].*data=4, model=2")

    def chunked_path_names_the_leaf():
        params = {f"p{i:03d}": put(jnp.ones(8), P("data")) for i in range(CHUNK + 3)}
        state = ema.init(params, config)
        last = f"p{CHUNK + 2:03d}"
        refused(state, {**params, last: put(jnp.ones(8), P("model"))}, rf"\['{last}'\]")

    def leaves_on_two_sub_meshes():
        halves = [jax.sharding.Mesh(np.array(jax.devices()[i:i + 4]), ("x",)) for i in (0, 4)]
        params = {k: put(jnp.ones(8), P("x"), m) for k, m in zip("ab", halves)}
        refused(ema.init(params, config), params, r"state\.shadow\['b'\] is on cpu:4")

    def mesh_of_one_device():
        one = jax.make_mesh((1,), ("x",))
        params = {"a": put(jnp.arange(8.0), P("x"), one)}
        update = make_update(config)
        state = update(update(ema.init(params, config), params), params)
        assert state.shadow["a"].sharding == params["a"].sharding
        np.testing.assert_array_equal(np.asarray(state.shadow["a"]), np.arange(8.0))
        assert int(state.step) == 2

    def donation_keeps_shardings():
        params = {"w": put(w, P("data", "model")), "b": put(jnp.ones(4), P("model"))}
        update = make_update(config)
        state = update(ema.init(params, config), params)
        for _ in range(2):
            old = state
            state = update(state, {k: v + 2 for k, v in params.items()})
            assert all(x.is_deleted() for x in jax.tree_util.tree_leaves(old))
            for name, leaf in params.items():
                assert state.shadow[name].sharding.is_equivalent_to(leaf.sharding, leaf.ndim)
        np.testing.assert_array_equal(np.asarray(state.shadow["w"]), np.asarray(w + 1.5))

    print_results(sys.argv[1:], globals())
    """
)

CASES = [
    "state_one_way_params_another",
    "replicated_shadow_of_a_sharded_param",
    "another_mesh_over_the_same_devices",
    "chunked_path_names_the_leaf",
    "leaves_on_two_sub_meshes",
    "mesh_of_one_device",
    "donation_keeps_shardings",
]


@pytest.fixture(scope="module")
def results() -> dict[str, str]:
    return eight_devices(["-c", SCRIPT], CASES, timeout=120)


@pytest.mark.parametrize("case", CASES)
def test_case(results, case):
    assert results.get(case) == "ok", results.get(case, f"not run; ran {sorted(results)}")
