"""Shardings: on 8 CPU devices (a 2 x 4 mesh) the shadow keeps each leaf's sharding, the compiled
update holds no collective, and the numbers equal the unsharded ones. Runs in a subprocess, since
the device count is fixed when JAX starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import ema_core as ema
    from ema_core import schedules
    from ema_core.jax import make_update

    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    specs = {"w": P("data", "model"), "v": P(None, "model"), "b": P("model"), "s": P(),
             "h": P("data", None)}
    shapes = {"w": (8, 16), "v": (6, 8), "b": (12,), "s": (3,), "h": (4, 5)}
    dtypes = {"h": jnp.bfloat16}
    rng = np.random.default_rng(0)

    def host(k):
        return {n: (rng.standard_normal(shapes[n]) + k).astype(np.float32) for n in shapes}

    def put(arrays, sharded):
        out = {}
        for n, a in arrays.items():
            x = jnp.asarray(a, dtypes.get(n, jnp.float32))
            out[n] = jax.device_put(x, NamedSharding(mesh, specs[n])) if sharded else x
        return out

    config = ema.Config(schedule=schedules.warmup(0.99), init="copy")
    data = [host(k) for k in range(5)]
    results = {}
    for sharded in (True, False):
        step = make_update(config)
        params = put(data[0], sharded)
        state = ema.init(params, config)
        if sharded:
            for n in specs:
                assert state.shadow[n].sharding.is_equivalent_to(params[n].sharding, 2), n
            hlo = step.lower(state, params).compile().as_text().lower()
            for op in ("all-reduce", "all-gather", "all-to-all", "reduce-scatter",
                       "collective-permute"):
                assert op not in hlo, op
        for arrays in data[1:]:
            params = put(arrays, sharded)
            state = step(state, params)
            if sharded:
                for n in specs:
                    assert state.shadow[n].sharding.is_equivalent_to(params[n].sharding, 2), n
        results[sharded] = state
    for a, b in zip(jax.tree_util.tree_leaves(results[True]),
                    jax.tree_util.tree_leaves(results[False])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    print("SHARDING-OK")
    """
)


def test_sharded_update_keeps_shardings_and_has_no_collectives():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SHARDING-OK" in proc.stdout
