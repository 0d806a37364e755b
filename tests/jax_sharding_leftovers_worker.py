"""Worker of ``test_jax_leftovers_sharding``: run with 8 CPU devices (``XLA_FLAGS=
--xla_force_host_platform_device_count=8``); the cases named in argv, one ``RESULTS`` json line.

A shadow sharded otherwise than its param is refused by name before anything is donated: in a
later chunk of the chunked path once that path's signature is known (JAX refused only that
chunk, after the head and the earlier chunks had donated theirs), and on meshes of
``AxisType.Auto`` axes (JAX compiled a shadow of a third sharding), also for a bank."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

jax = pytest.importorskip("jax")  # pytest imports this file for doctests too
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import ema_core as ema  # noqa: E402
from ema_core.jax import _chunked, make_bank_update, make_update  # noqa: E402
from tests.scaling_out import print_results  # noqa: E402

CONFIG = ema.Config(schedule=ema.schedules.constant(0.5), init="copy")
# the meshes and the array, made in main(), not at import: pytest imports this file (one CPU
# device there)
ON = SimpleNamespace()


def put(x: Any, spec: Any, mesh: Any) -> Any:
    return jax.device_put(x, NamedSharding(mesh, spec))


def refused(call: Callable[[], Any], kept: Any, pattern: str) -> None:
    try:
        call()
    except ValueError as error:
        assert re.search(pattern, str(error)), str(error)
    else:
        raise AssertionError("no ValueError")
    deleted = [x for x in jax.tree_util.tree_leaves(kept) if x.is_deleted()]
    assert not deleted, f"{len(deleted)} arrays donated before the refusal"


def tree(mesh: Any, n: int = 5) -> dict[str, Any]:
    return {f"p{i}": put(ON.w + i, P("data", None), mesh) for i in range(n)}


def later_chunk(mesh: Any) -> None:
    old, _chunked.CHUNK = _chunked.CHUNK, 2  # 5 leaves: chunks of 2, 2 and 1
    try:
        update, params = make_update(CONFIG), tree(mesh)
        state = update(ema.init(params, CONFIG), params)  # this signature is now known
        bad = {**params, "p4": put(ON.w, P(None, "model"), mesh)}
        refused(lambda: update(state, bad), state, r"state\.shadow\['p4'\] is sharded P\('data'")
        state = update(state, params)  # the same state goes on
        assert int(state.step) == 2
    finally:
        _chunked.CHUNK = old


def explicit_later_chunk() -> None:
    later_chunk(ON.explicit)


def auto_later_chunk() -> None:
    later_chunk(ON.auto)


def auto_one_call() -> None:
    state = ema.init({"w": put(ON.w, P("data", None), ON.auto)}, CONFIG)
    params = {"w": put(ON.w + 2, P(None, "model"), ON.auto)}
    words = (
        r"state\.shadow\['w'\] is sharded P\('data', None\) on a mesh \(data=2, model=4\) .*"
        r"but params\['w'\] P\(None, 'model'\) on a mesh .*nothing was donated"
    )
    refused(lambda: make_update(CONFIG)(state, params), state, words)


def auto_replicated_and_other_mesh() -> None:
    flipped = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    state = ema.init({"w": put(ON.w, P(), ON.auto)}, CONFIG)
    sharded = {"w": put(ON.w, P("data", "model"), ON.auto)}
    refused(lambda: make_update(CONFIG)(state, sharded), state, r"\['w'\] is sharded P\(\)")
    state = ema.init({"w": put(ON.w, P("data", None), ON.auto)}, CONFIG)
    other = {"w": put(ON.w, P("data", None), flipped)}
    refused(lambda: make_update(CONFIG)(state, other), state, r"\['w'\].*data=4, model=2")


def auto_mismatch_after_steps() -> None:
    update, params = make_update(CONFIG), tree(ON.auto, 2)
    state = ema.init(params, CONFIG)
    for _ in range(3):
        old = state
        state = update(state, params)
        assert all(x.is_deleted() for x in jax.tree_util.tree_leaves(old))
        for name, leaf in params.items():
            assert state.shadow[name].sharding.is_equivalent_to(leaf.sharding, leaf.ndim)
    bad = {**params, "p1": put(ON.w, P("model", None), ON.auto)}
    refused(lambda: update(state, bad), state, r"state\.shadow\['p1'\]")


def auto_bank() -> None:
    bank = make_bank_update(sigma_rels=(0.05, 0.10))
    states = bank.init({"w": put(ON.w, P("data", None), ON.auto)})
    params = {"w": put(ON.w, P(None, "model"), ON.auto)}
    refused(lambda: bank(states, params), states, r"states\[0\]\.shadow\['w'\] is sharded")


def uncommitted_then_committed() -> None:
    d0, d1 = jax.devices()[:2]
    update = make_update(CONFIG)
    state = jax.device_put(ema.init({"w": jnp.zeros(3)}, CONFIG), d1)
    state = update(state, {"w": jnp.ones(3)})  # uncommitted on cpu:0: moved to cpu:1
    committed = {"w": jax.device_put(jnp.ones(3), d0)}  # the same sharding, now committed
    refused(lambda: update(state, committed), state, r"params\['w'\] is on cpu:0")


def partly_on_a_mesh() -> None:
    """Params only partly ``device_put`` on a mesh (a bias left uncommitted): ``init``'s state
    goes through ``make_update`` (its uncommitted shadow was committed to one device and then
    refused beside the mesh), compiles once, keeps the sharded shadow's sharding and matches
    the eager update; the chunked path and the bank too."""
    from tests.xla_compiles import counting_compiles

    for mesh in (ON.explicit, ON.auto):
        params = {"w": put(ON.w, P(None, "model"), mesh), "b": jnp.arange(8.0)}
        assert not params["b"].committed
        eager, compiled = ema.init(params, CONFIG), ema.init(params, CONFIG)
        update = make_update(CONFIG)
        steps = [{"w": params["w"] + i, "b": params["b"] - i} for i in range(3)]
        compiled = update(compiled, params)  # the first call compiles
        with counting_compiles() as seen:
            for moved in steps:
                compiled = update(compiled, moved)
        assert not seen, f"{len(seen)} compilations after the first call"
        eager = ema.update(eager, params, CONFIG)
        for moved in steps:
            eager = ema.update(eager, moved, CONFIG)
        assert compiled.shadow["w"].sharding.spec == P(None, "model")
        for name in params:
            assert bool(jnp.array_equal(compiled.shadow[name], eager.shadow[name])), name
        # the EMA reset to the weights: the uncommitted bias is copied before it is spread
        # over the mesh (a put onto several devices kept its buffer: donated and read at once,
        # the process crashed in XLA)
        compiled = update(compiled._replace(shadow=params), params)
        assert not params["b"].is_deleted()
        assert bool(jnp.array_equal(compiled.shadow["b"], params["b"]))
    old, _chunked.CHUNK = _chunked.CHUNK, 1
    try:
        params = {"w": put(ON.w, P(None, "model"), ON.explicit), "b": jnp.arange(8.0)}
        make_update(CONFIG)(ema.init(params, CONFIG), params)
    finally:
        _chunked.CHUNK = old
    bank = make_bank_update(sigma_rels=(0.05, 0.10))
    bank(bank.init(params), params)


def uncommitted_beside_one_device() -> None:
    """A fresh state (uncommitted, on the default device) beside params committed to another
    device goes to theirs, as a plain ``jax.jit`` moves it; so does the state the eager update
    left half committed (its shadow beside the params, its step where it was)."""
    d3 = jax.devices()[3]
    params = {"w": jax.device_put(jnp.ones(3), d3)}
    for start in ("fresh", "eager"):
        state = ema.init({"w": jnp.zeros(3)}, CONFIG)
        if start == "eager":
            state = ema.update(state, params, CONFIG)
        state = make_update(CONFIG)(state, params)
        assert state.shadow["w"].sharding.device_set == {d3}, start
        assert bool(jnp.array_equal(state.shadow["w"], jnp.ones(3))), start


def state_before_device_put() -> None:
    """The EMA made from the params as ``model.init`` returns them (uncommitted), the params
    then ``device_put`` on a mesh: the eager update and a plain ``jax.jit`` give each shadow its
    param's sharding; ``make_update`` (one call and chunked) and the bank replicated the
    shadows over the mesh and then refused them as sharded ``P()``. An uncommitted bias beside
    them stays replicated."""
    from ema_core.jax import _chunked

    for mesh in (ON.explicit, ON.auto):
        fresh = {"w": ON.w, "b": jnp.arange(8.0)}
        params = {"w": put(ON.w, P("data", "model"), mesh), "b": fresh["b"]}
        eager = ema.update(ema.init(fresh, CONFIG), params, CONFIG)
        for chunk in (None, 1):
            old = _chunked.CHUNK
            _chunked.CHUNK = chunk or old
            try:
                state = make_update(CONFIG)(ema.init(fresh, CONFIG), params)
                state = make_update(CONFIG, donate=False)(ema.init(fresh, CONFIG), params)
            finally:
                _chunked.CHUNK = old
            assert state.shadow["w"].sharding.is_equivalent_to(params["w"].sharding, 2), chunk
            for name in fresh:
                assert bool(jnp.array_equal(state.shadow[name], eager.shadow[name])), name
        bank = make_bank_update(sigma_rels=(0.05, 0.10))
        states = bank(bank.init(fresh), params)
        assert all(s.shadow["w"].sharding.spec == P("data", "model") for s in states)


def main(names: list[str]) -> None:
    assert jax.device_count() == 8, jax.devices()
    ON.explicit = jax.make_mesh((2, 4), ("data", "model"))
    ON.auto = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    ON.w = jnp.arange(64.0).reshape(8, 8)
    print_results(names, globals())


if __name__ == "__main__":
    main(sys.argv[1:])
