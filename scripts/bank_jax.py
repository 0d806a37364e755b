"""The JAX EMA bank (``make_bank_update``) against as many separate ``make_update`` calls, on
ResNet-50's fp32 parameter shapes, and what XLA fused: the loop fusions of the compiled bank
and how many of them have more than one output (a fusion that reads the params once for K EMAs).

    JAX_PLATFORMS=cpu python scripts/bank_jax.py [--repeats 15]   (median ms per update)

Power-function EMAs of sigma_rel 0.05, 0.10 and 0.15 (EDM2), the steady state (donated).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import ema_core as ema
from ema_core.jax import make_bank_update, make_update

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package
from benchmarks.cli_args import int_at_least

WORKLOAD = Path(__file__).resolve().parents[1] / "benchmarks" / "workloads" / "resnet50.json"
SIGMA_RELS = (0.05, 0.10, 0.15)


def params() -> dict[str, jax.Array]:
    shapes = [tuple(shape) for _, shape in json.loads(WORKLOAD.read_text())["params"]]
    rng = np.random.default_rng(0)
    return {f"p{i}": jnp.asarray(rng.standard_normal(s, np.float32)) for i, s in enumerate(shapes)}


def median_ms(run: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(run())  # compile and reach the steady state
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def fusions(text: str) -> tuple[int, int]:
    """(array-valued loop fusions in the entry computation, those with several outputs)."""
    entry = text[text.index("ENTRY") :]
    calls = [line for line in entry.splitlines() if "kind=kLoop" in line]
    arrays = [
        line for line in calls if not re.search(r"= [su]32\[\] fusion|= f32\[\] fusion", line)
    ]
    return len(arrays), sum(1 for line in arrays if re.search(r"= \(", line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int_at_least(1), default=15)
    repeats = parser.parse_args().repeats
    tree = params()
    n = sum(x.size for x in tree.values())
    print(f"ResNet-50 fp32: {len(tree)} arrays, {n / 1e6:.1f}M elements; {jax.devices()[0]}")
    for k in (1, 2, 3):
        bank = make_bank_update(sigma_rels=SIGMA_RELS[:k])
        state = {"bank": bank.init(tree)}
        steps = [make_update(c) for c in bank.configs]
        separate = {"states": [ema.init(tree, c) for c in bank.configs]}

        def run_bank(state: dict[str, Any] = state, bank: Any = bank) -> Any:
            state["bank"] = bank(state["bank"], tree)
            return state["bank"]

        def run_separate(box: dict[str, Any] = separate, steps: Any = steps) -> Any:
            box["states"] = [f(s, tree) for f, s in zip(steps, box["states"], strict=True)]
            return box["states"]

        bank_ms = median_ms(run_bank, repeats)
        separate_ms = median_ms(run_separate, repeats)
        total, multi = fusions(bank.lower(state["bank"], tree).compile().as_text())
        print(
            f"K={k}: bank {bank_ms:7.1f} ms   {k} x make_update {separate_ms:7.1f} ms   "
            f"ratio {bank_ms / separate_ms:.2f}   loop fusions {total}, multi-output {multi}"
        )


if __name__ == "__main__":
    main()
