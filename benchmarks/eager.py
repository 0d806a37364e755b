"""``python -m benchmarks --eager``: one eager ``ema_core.update`` of a JAX state, per call,
against ``make_update`` (``donate=False``) on the same tree, timed in strict alternation.

Three contenders per tree: ``update`` with one of ema-core's schedules (its scalars in one
compiled call, ``ema_core.backends.jax._scalars``), ``update`` with the same schedule wrapped in
a Python callable (the scalars computed by eager JAX operations, as every config was before
2026-12-03 and as a user's callable still is), and ``make_update``. Each call is waited for
(``block_until_ready``); the ratio is ``make_update``'s median time over the contender's.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from typing import Any

from benchmarks import harness, workloads
from benchmarks.cli_args import no_options


def _cases() -> list[tuple[str, list[tuple[int, ...]]]]:
    """(tree name, shapes) pairs: a two-array tree, and ResNet-50's tensors."""
    return [("tiny_2", [(16, 8), (8,)]), ("resnet50", list(workloads.load("resnet50").shapes))]


def contenders(
    shapes: list[tuple[int, ...]],
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """One call per route, and the states they advance (by route)."""
    import jax
    import jax.numpy as jnp

    import ema_core as ema
    from ema_core.jax import make_update

    schedule = ema.schedules.warmup(0.999)
    own = ema.Config(schedule=schedule, init="copy")
    wrapped = ema.Config(schedule=schedule.__call__, init="copy")  # a callable: eager scalars
    params = {f"p{i}": jnp.full(s, 0.5, jnp.float32) for i, s in enumerate(shapes)}
    compiled = make_update(own, donate=False)
    states = {"update": ema.init(params, own), "update, callable": ema.init(params, wrapped)}
    states["make_update"] = ema.init(params, own)
    steps: dict[str, Callable[[Any], Any]] = {
        "update": lambda s: ema.update(s, params, own),
        "update, callable": lambda s: ema.update(s, params, wrapped),
        "make_update": lambda s: compiled(s, params),
    }

    def call(key: str) -> Callable[[], Any]:
        def run() -> Any:
            states[key] = jax.block_until_ready(steps[key](states[key]))

        return run

    return {key: call(key) for key in steps}, states


def measure(shapes: list[tuple[int, ...]], rounds: int) -> dict[str, float]:
    """Median seconds per contender over ``rounds`` alternations (after three warm-up rounds,
    which also compile the config's scalars and the updates)."""
    calls, _ = contenders(shapes)
    times = harness.alternate(calls, rounds, warmup=3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(rounds: int = 50) -> str:
    lines = [
        f"{'tree':<10}{'leaves':>7}  {'contender':<18}{'ms':>9}{'x make_update':>15}",
        "-" * 59,
    ]
    for name, shapes in _cases():
        print(f"eager: {name}", file=sys.stderr, flush=True)
        med = measure(shapes, rounds)
        for key, sec in med.items():
            ratio = med["make_update"] / sec
            lines.append(f"{name:<10}{len(shapes):>7}  {key:<18}{sec * 1e3:>9.3f}{ratio:>15.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    no_options("python -m benchmarks.eager", __doc__, "jax")
    print(main())
