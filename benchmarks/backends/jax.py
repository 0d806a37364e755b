"""JAX: ema-core's ``ema_update`` under ``jax.jit`` with the shadow donated; ceiling: one flat
donated jit of the same bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ema_core
from benchmarks.backends._common import flat_elements, host_arrays
from benchmarks.backends._common import missing as _missing
from benchmarks.workloads import Workload

NAME = "jax"


def missing() -> str | None:
    return _missing("jax")


def cases(workload: Workload, dtype: str, device: str) -> dict[str, Callable[[int], Any]]:
    import jax
    import jax.numpy as jnp

    shadows_np, params_np = host_arrays(workload)
    pdtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    box = {"s": [jnp.asarray(s) for s in shadows_np], "a": jnp.ones(flat_elements(workload, dtype))}
    params = [jnp.asarray(p, dtype=pdtype) for p in params_np]
    b = jnp.ones_like(box["a"])
    del shadows_np, params_np

    flat = jax.jit(lambda a, b: a + 0.001 * (b - a), donate_argnums=0)
    ema = jax.jit(lambda s, p, t: ema_core.ema_update(s, p, t, decay=0.999), donate_argnums=0)

    def ceiling(t: int) -> Any:
        box["a"] = flat(box["a"], b)
        return box["a"]

    def ema_step(t: int) -> Any:
        box["s"] = ema(box["s"], params, jnp.asarray(t))
        return box["s"]

    return {"ceiling": ceiling, "ema_core": ema_step}


def sync(result: Any) -> None:
    import jax

    jax.block_until_ready(result)
