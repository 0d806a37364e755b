"""``python -m benchmarks.jax_host [--device cuda]``: where ``make_update``'s time goes on GPT-2
small's arrays, beside a hand-written jitted ``tree_map`` of the same blend (donated, a constant
decay: what ``make_update`` compiles for a constant schedule), and ``make_update`` on the
packed state (``ema_core.jax.pack``: one compiled call that returns the loose shadows and one
flat buffer of the small ones).

Prints both medians (one update then a sync, as the benchmark times them), the median of
``make_update``'s call alone (the host's work until it returns, nothing synced), and
cProfile's top functions over a few calls. The H200 run of 2026-12-04 (run 3) found
``make_update`` 0.64 ms slower than ``tree_map`` on these arrays (1.933 against 1.297 ms),
while on a CPU the two compiled updates have the same loops: this says where the difference
lies on the machine that has it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks import workloads
from benchmarks.cli_args import int_at_least, needs

CALLS = 30


def _median_ms(
    step: Callable[[], Any], sync: Callable[[Any], Any], calls: int, synced: bool = True
) -> float:
    """Median ms of ``step`` then ``sync`` (``synced``), or of ``step`` alone, called with the
    device idle (its previous update synced before the clock starts): the host's part."""
    result = None
    for _ in range(3):
        result = sync(step())
    times = []
    for _ in range(calls):
        sync(result)
        tic = time.perf_counter()
        result = step()
        if synced:
            sync(result)
        times.append(time.perf_counter() - tic)
    sync(result)
    return statistics.median(times) * 1e3


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked before anything is built or compiled (exit 2 otherwise)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.jax_host", description=__doc__)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--workload", default="gpt2_small", choices=workloads.available())
    ap.add_argument(
        "--calls", type=int_at_least(1), default=CALLS, help="timed calls per median (at least 1)"
    )
    args = ap.parse_args(argv)
    problem = needs("jax") or _device_problem(args.device)
    if problem:
        ap.error(problem)
    return args


def _device_problem(device: str) -> str | None:
    import jax

    try:
        jax.devices(device)
    except RuntimeError as err:
        return f"--device {device}, but JAX has no such device on this machine ({err})"
    return None


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    import ema_core
    from ema_core.jax import make_update, pack

    dev = jax.devices("cuda" if args.device == "cuda" else "cpu")[0]
    shapes = workloads.load(args.workload).shapes
    rng = np.random.default_rng(0)
    params = [jax.device_put(jnp.asarray(rng.random(s), jnp.float32), dev) for s in shapes]
    config = ema_core.Config(schedule=0.999)
    update = make_update(config)
    by_hand = jax.jit(
        lambda s, p: [x + (1 - 0.999) * (y - x) for x, y in zip(s, p, strict=True)],
        donate_argnums=0,
    )
    packed_update = make_update(config)
    box: dict[str, Any] = {
        "state": ema_core.init(params, config),
        "packed": pack(ema_core.init(params, config)),
        "shadows": [jax.device_put(jnp.zeros(s, jnp.float32), dev) for s in shapes],
    }

    def ours() -> Any:
        box["state"] = update(box["state"], params)
        return box["state"]

    def packed() -> Any:
        box["packed"] = packed_update(box["packed"], params)
        return box["packed"]

    def theirs() -> Any:
        box["shadows"] = by_hand(box["shadows"], params)
        return box["shadows"]

    sync = jax.block_until_ready
    lines = [f"{args.workload} on {dev}: {len(shapes)} arrays"]
    n = args.calls
    lines.append(f"make_update, synced  {_median_ms(ours, sync, n):9.3f} ms")
    lines.append(f"packed, synced       {_median_ms(packed, sync, n):9.3f} ms")
    lines.append(f"tree_map, synced     {_median_ms(theirs, sync, n):9.3f} ms")
    lines.append(f"make_update call     {_median_ms(ours, sync, n, False):9.3f} ms (host's part)")
    lines.append(f"packed call          {_median_ms(packed, sync, n, False):9.3f} ms (host's part)")
    lines.append(f"tree_map call        {_median_ms(theirs, sync, n, False):9.3f} ms (host's part)")
    jax.block_until_ready(box["state"])
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(n):
        ours()
    jax.block_until_ready(box["state"])
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(15)
    lines.append(f"cProfile of {n} make_update calls (then one sync), by own time:")
    lines.append(out.getvalue().strip())
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
