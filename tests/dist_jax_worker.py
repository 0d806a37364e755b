"""A worker process for tests/test_dist_jax.py: one of 2 JAX processes with 4 CPU devices each.

Run as ``python -m tests.dist_jax_worker PROCESS_ID PORT DIR``. The two processes form one
8-device (2 x 4) mesh through ``jax.distributed`` (gloo collectives on CPU), run the compiled EMA
update on arrays sharded across both, and print ``JAX-DIST-OK <check>`` after each check.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

jax = pytest.importorskip("jax")  # pytest imports this file for doctests too

COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "reduce-scatter", "collective-permute")
SHAPES = {"w": (8, 16), "b": (12,), "h": (4, 6), "s": (3,)}


def main() -> None:
    process_id, port, folder = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    jax.config.update("jax_num_cpu_devices", 4)  # here, not at import: pytest imports this file
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import ema_core as ema
    from ema_core.jax import make_update

    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    specs = {"w": P("data", "model"), "b": P("model"), "h": P("data", None), "s": P()}
    dtypes = {"h": jnp.bfloat16}
    rng = np.random.default_rng(0)  # the same data on both processes
    data = [
        {n: (rng.standard_normal(s) + k).astype(np.float32) for n, s in SHAPES.items()}
        for k in range(5)
    ]

    def sharded(arrays: dict) -> dict:
        return {
            n: jax.make_array_from_callback(
                a.shape, NamedSharding(mesh, specs[n]), lambda i, a=a, n=n: _cast(a[i], n)
            )
            for n, a in arrays.items()
        }

    def _cast(a: np.ndarray, name: str) -> jax.Array:
        return jnp.asarray(a, dtypes.get(name, jnp.float32))

    def local(arrays: dict) -> dict:  # the unsharded reference, on this process's first device
        return {n: jax.device_put(_cast(a, n), jax.local_devices()[0]) for n, a in arrays.items()}

    config = ema.Config(schedule=ema.schedules.warmup(0.99), init="copy")
    step, step_ref = make_update(config), make_update(config)
    params = sharded(data[0])
    state = ema.init(params, config)  # eager, on arrays no process holds whole
    jitted = jax.jit(lambda p: ema.init(p, config))(params)  # and inside jit
    pairs = zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(jitted), strict=True)
    for leaf, other in pairs:
        assert leaf.sharding.is_equivalent_to(other.sharding, leaf.ndim)
    assert state.step.sharding.is_fully_replicated and len(state.step.sharding.device_set) == 8
    state_ref = ema.init(local(data[0]), config)
    for name in specs:
        assert not state.shadow[name].is_fully_addressable, name
        assert state.shadow[name].sharding.is_equivalent_to(params[name].sharding, 2), name
    hlo = step.lower(state, params).compile().as_text().lower()
    assert not [op for op in COLLECTIVES if op in hlo], [op for op in COLLECTIVES if op in hlo]
    print("JAX-DIST-OK no-collectives", flush=True)

    for arrays in data[1:]:
        state, state_ref = step(state, sharded(arrays)), step_ref(state_ref, local(arrays))
    for name in specs:
        assert state.shadow[name].sharding.is_equivalent_to(params[name].sharding, 2), name
        want = np.asarray(state_ref.shadow[name])
        for shard in state.shadow[name].addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index], name)
    assert int(state.step.addressable_data(0)) == 4
    print("JAX-DIST-OK update-equals-unsharded", flush=True)

    _orbax_to_another_mesh(state, state_ref, folder, specs)
    jax.distributed.shutdown()


def _orbax_to_another_mesh(state: object, state_ref: object, folder: Path, specs: dict) -> None:
    """Save with orbax from the (2, 4) mesh; restore onto a (4, 2) mesh with other specs."""
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        print("JAX-DIST-SKIP orbax is not installed", flush=True)
        return
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    other = jax.make_mesh((4, 2), ("x", "y"))
    new_specs = {"w": P("y", "x"), "b": P("x"), "h": P(None, "y"), "s": P()}

    def target(leaf: jax.Array, spec: P) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(other, spec))

    like = jax.tree_util.tree_map(lambda x: target(x, P()), state)
    like = like._replace(shadow={n: target(state.shadow[n], new_specs[n]) for n in specs})
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(folder / "orbax", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(folder / "orbax", like)
    for name in specs:
        value = restored.shadow[name]
        assert value.sharding.is_equivalent_to(like.shadow[name].sharding, value.ndim), name
        want = np.asarray(state_ref.shadow[name])
        for shard in value.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index], name)
    print("JAX-DIST-OK orbax-restore-on-another-mesh", flush=True)


if __name__ == "__main__":
    main()
