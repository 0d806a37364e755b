"""optax: ``optax.incremental_update(new, old, step_size)`` over the params pytree under
``jax.jit`` with the old average donated, as an optax user writes a target-network EMA."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from benchmarks.backends._common import host_arrays
from benchmarks.workloads import Workload


def cases(workload: Workload, dtype: str, device: str) -> dict[str, Callable[[int], Any]]:
    if importlib.util.find_spec("optax") is None:
        return {}
    import jax
    import jax.numpy as jnp
    import optax

    shadows_np, params_np = host_arrays(workload)
    pdtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    params = [jnp.asarray(p, dtype=pdtype) for p in params_np]
    box = {"s": [jnp.asarray(s, dtype=pdtype) for s in shadows_np]}
    del shadows_np, params_np
    update = jax.jit(
        lambda new, old: optax.incremental_update(new, old, 1 - 0.999), donate_argnums=1
    )

    def step(t: int) -> Any:
        box["s"] = update(params, box["s"])
        return box["s"]

    return {"optax incremental_update": step}
