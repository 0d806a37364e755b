"""``python -m benchmarks --stateless``: the stateless torch ``ema_update`` against the ``EMA``
class on the same tensors, timed in strict alternation (class, list, dict, class, ...) so that
the machine's drift hits all three alike; the ratio is the class's median time over each
stateless call's (1.0: as fast as the class).

Both sides update a float32 shadow per tensor: the class over its own shadows of a module's
parameters, the stateless call over a list and over a ``state_dict``-style dict of shadows.
"""

from __future__ import annotations

import functools
import itertools
import statistics
import sys
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks import harness, workloads
from benchmarks.cli_args import no_options

#: (workload, params dtype) pairs timed by default.
CASES = (
    ("resnet50", "fp32"),
    ("resnet50", "bf16"),
    ("vit_b16", "fp32"),
    ("many_small_20k", "fp32"),
    ("many_small_20k", "bf16"),
)


def _pair(name: str, dtype: str) -> dict[str, Callable[[int], Any]]:
    import torch

    import ema_core
    from ema_core.torch import EMA

    pdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    shapes = workloads.load(name).shapes
    params = {f"p{i}": torch.randn(s, generator=gen).to(pdtype) for i, s in enumerate(shapes)}
    shadow_dict = {k: v.to(torch.float32, copy=True) for k, v in params.items()}
    shadow_list, params_list = list(shadow_dict.values()), list(params.values())
    ema = EMA(params, decay=0.999)
    return {
        "EMA class": ema.update,
        "ema_update list": lambda t: ema_core.ema_update(shadow_list, params_list, t, decay=0.999),
        "ema_update dict": lambda t: ema_core.ema_update(shadow_dict, params, t, decay=0.999),
    }


def measure(name: str, dtype: str, rounds: int) -> dict[str, float]:
    """Median seconds per contender over ``rounds`` alternations (after two warm-up rounds)."""
    calls = _pair(name, dtype)
    timed = {k: functools.partial(_stepped, call, itertools.count(1)) for k, call in calls.items()}
    times = harness.alternate(timed, rounds, warmup=2)
    return {k: statistics.median(v) for k, v in times.items()}


def _stepped(call: Callable[[int], Any], steps: Iterator[int]) -> Any:
    return call(next(steps))  # each contender counts its own steps: 1, 2, 3, ...


def main(rounds: int = 30) -> str:
    lines = [
        f"{'workload':<16}{'dtype':<6}{'contender':<17}{'ms':>9}{'x class':>9}",
        "-" * 57,
    ]
    for name, dtype in CASES:
        print(f"stateless: {name} {dtype}", file=sys.stderr, flush=True)
        med = measure(name, dtype, rounds)
        for key, sec in med.items():
            ratio = med["EMA class"] / sec
            lines.append(f"{name:<16}{dtype:<6}{key:<17}{sec * 1e3:>9.2f}{ratio:>9.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    no_options("python -m benchmarks.stateless", __doc__, "torch")
    print(main())
