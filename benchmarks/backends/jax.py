"""JAX: ema-core's ``make_update`` (one jitted update, state donated, step traced); ceiling: one
flat donated jit of the same bytes; ``tree_map``: the hand-written jitted, donated
``s + (1 - d) * (p - s)`` that JAX users write today (skipped past 1,000 leaves, where XLA's
compile time on the CPU grows to minutes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ema_core
from benchmarks.backends._common import flat_elements, host_arrays
from benchmarks.backends._common import missing as _missing
from benchmarks.workloads import Workload

NAME = "jax"
DECAY = 0.999
#: Past this many leaves the hand-written baseline is not compiled (minutes of XLA on a CPU).
MAX_BASELINE_LEAVES = 1000


def missing() -> str | None:
    return _missing("jax")


def cases(workload: Workload, dtype: str, device: str) -> dict[str, Callable[[int], Any]]:
    import jax
    import jax.numpy as jnp

    from ema_core.jax import make_update

    try:
        dev = jax.devices("cuda" if device == "cuda" else "cpu")[0]
    except RuntimeError:
        return {}
    shadows_np, params_np = host_arrays(workload)
    pdtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    params = [jax.device_put(jnp.asarray(p, dtype=pdtype), dev) for p in params_np]
    config = ema_core.Config(schedule=DECAY)
    box = {
        "state": ema_core.init(params, config),
        "s": [jax.device_put(jnp.asarray(s), dev) for s in shadows_np],
        "a": jax.device_put(jnp.ones(flat_elements(workload, dtype)), dev),
    }
    b = jnp.ones_like(box["a"])
    del shadows_np, params_np

    flat = jax.jit(lambda a, b: a + (1 - DECAY) * (b - a), donate_argnums=0)
    update = make_update(config)
    by_hand = jax.jit(
        lambda s, p: [x + (1 - DECAY) * (y.astype(x.dtype) - x) for x, y in zip(s, p, strict=True)],
        donate_argnums=0,
    )

    def ceiling(t: int) -> Any:
        box["a"] = flat(box["a"], b)
        return box["a"]

    def ema_step(t: int) -> Any:
        box["state"] = update(box["state"], params)
        return box["state"]

    def tree_map(t: int) -> Any:
        box["s"] = by_hand(box["s"], params)
        return box["s"]

    found = {"ceiling": ceiling, "ema_core": ema_step}
    return found if len(params) > MAX_BASELINE_LEAVES else {**found, "tree_map": tree_map}


def sync(result: Any) -> None:
    import jax

    jax.block_until_ready(result)
