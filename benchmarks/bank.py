"""``python -m benchmarks.bank [--dtype fp32|bf16] [--rounds N]``: an ``EMABank`` of K EMAs
against K separate ``EMA`` objects with the same configs, on ResNet-50's parameter shapes on
the CPU (EDM2 power functions: sigma_rel 0.05 and 0.10; for K = 3 also 0.07).

Both sides are timed in strict alternation (bank, separate, bank, ...) so that the machine's
drift hits them alike; ``ratio`` is the bank's median time over the separate EMAs' (lower is
better), ``best`` the ratio of the fastest calls. ``ideal`` is the bytes ratio at equal
bandwidth: the bank moves ``8K + 4`` bytes per float32 element (the params read once), K EMAs
``12K`` (bfloat16 params: ``8K + 2`` against ``10K``). GB/s: the bank's bytes over its median
time. Progress goes to stderr, the table to stdout.

On a shared 2-core machine another process makes torch's per-tensor parallel regions (the
separate EMAs' ``_foreach_lerp_``) wait for a descheduled thread again and again, which the
bank's one split per update does not: a ratio far below ``ideal`` says the machine was busy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any

from benchmarks import harness, workloads
from benchmarks.cli_args import int_at_least, needs

#: The sigma_rels of the bank of K.
SIGMA_RELS = {2: (0.05, 0.10), 3: (0.05, 0.07, 0.10)}
_PARAMS_BYTES = {"fp32": 4, "bf16": 2}


def _contenders(name: str, dtype: str, k: int) -> dict[str, Callable[[], Any]]:
    import torch

    from ema_core.torch import EMA, EMABank

    pdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    shapes = workloads.load(name).shapes
    params = {f"p{i}": torch.randn(s, generator=gen).to(pdtype) for i, s in enumerate(shapes)}
    bank = EMABank(params, sigma_rels=SIGMA_RELS[k])
    separate = [EMA(params, config=ema.config) for ema in bank]

    def each() -> None:
        for ema in separate:
            ema.update()

    return {"bank": bank.update, "separate": each}


def measure(name: str, dtype: str, k: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per contender over ``rounds`` alternations, sorted (after three warm-up rounds:
    the first update copies, the first blend compiles or loads the kernels)."""
    times = harness.alternate(_contenders(name, dtype, k), rounds, warmup=3)
    return {key: sorted(v) for key, v in times.items()}


def main(dtype: str = "fp32", rounds: int = 25, name: str = "resnet50") -> str:
    """The table: one row per K, the bank against K separate EMAs."""
    elements = workloads.load(name).elements
    pb = _PARAMS_BYTES[dtype]
    lines = [
        f"{'workload':<10}{'dtype':<6}{'K':>2}{'bank ms':>9}{'sep. ms':>9}{'ratio':>7}"
        f"{'best':>6}{'ideal':>7}{'bank GB/s':>11}",
        "-" * 67,
    ]
    for k in sorted(SIGMA_RELS):
        print(f"bank: {name} {dtype} K={k}", file=sys.stderr, flush=True)
        times = measure(name, dtype, k, rounds)
        bank, separate = statistics.median(times["bank"]), statistics.median(times["separate"])
        best = times["bank"][0] / times["separate"][0]
        bank_bytes, separate_bytes = (8 * k + pb) * elements, (8 + pb) * k * elements
        lines.append(
            f"{name:<10}{dtype:<6}{k:>2}{bank * 1e3:>9.2f}{separate * 1e3:>9.2f}"
            f"{bank / separate:>7.2f}{best:>6.2f}{bank_bytes / separate_bytes:>7.2f}"
            f"{bank_bytes / bank / 1e9:>11.1f}"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bank", description=__doc__)
    ap.add_argument("--dtype", default="fp32", choices=sorted(_PARAMS_BYTES))
    ap.add_argument(
        "--rounds", type=int_at_least(1), default=25, help="timed alternations (at least 1)"
    )
    args = ap.parse_args(argv)
    problem = needs("torch")
    if problem:
        ap.error(problem)
    return args


if __name__ == "__main__":
    args = parse(None)
    print(main(args.dtype, args.rounds))
