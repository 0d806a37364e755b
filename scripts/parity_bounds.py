"""Measure the parity bounds of the presets against the real peers and their float64 oracles.

For each peer and decay band (0.5-0.99, 0.99-0.999, 0.999-0.99999), draws settings of the
peer's own arguments (seeded numpy, the spaces of ``tests/test_presets_peers_random.py``), runs
each over 150-180 steps beside ema-core and the peer's float64 oracle (``tests/peer_oracles.py``)
and prints a markdown table of the largest float32 ulps (at the values' magnitude) seen after
any step: ema-core vs the peer, ema-core vs the oracle, the peer vs the oracle. Integer buffers
are compared exactly (a mismatch is counted in the notes), as is a preset that refuses a
setting. Progress goes to stderr.

Usage: ``.venv/bin/python scripts/parity_bounds.py [--settings N] [--seed S] [--peers a,b]``
(default 6 settings per peer and band, seed 0: a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package

from tests.peers import BANDS, MEASURE, Judge, KerasWorker, Setting
from tests.test_presets_peers import run_torch
from tests.test_presets_peers_random import SPACES, run_keras, run_optax

T = TypeVar("T")

#: (row label, peer, arguments forced over the drawn ones, banded by decay)
ROWS: list[tuple[str, str, dict[str, Any], bool]] = [
    ("timm ModelEmaV3", "timm", {}, True),
    ("torch-ema", "torch_ema", {}, True),
    ("ema-pytorch EMA", "ema_pytorch", {}, True),
    ("ema-pytorch KarrasEMA", "ema_pytorch_karras", {}, False),
    ("diffusers EMAModel", "diffusers", {}, True),
    ("torch swa_utils", "swa_utils", {}, True),
    ("mmengine (EMA, MomentumAnnealingEMA)", "mmengine", {}, True),
    ("optax, float32", "optax", {"accumulator_dtype": None}, True),
    ("optax, bfloat16 accumulator", "optax", {"accumulator_dtype": "bfloat16"}, True),
    ("optax, float16 accumulator", "optax", {"accumulator_dtype": "float16"}, True),
    ("Keras 3, jax", "keras:jax", {}, True),
    ("Keras 3, torch", "keras:torch", {}, True),
]


class NumpyDraw:
    """The tests' ``Draw`` from a numpy generator, every decay in one band of ``BANDS``."""

    def __init__(self, rng: np.random.Generator, band: int) -> None:
        self.rng, self.band = rng, band

    def decay(self) -> float:
        lo, hi = (-np.log10(1.0 - d) for d in BANDS[self.band])
        return round(1.0 - 10.0 ** -float(self.rng.uniform(lo, hi)), 8)

    def real(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def integer(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def flag(self) -> bool:
        return bool(self.rng.random() < 0.5)

    def pick(self, options: Sequence[T]) -> T:
        return options[int(self.rng.integers(len(options)))]


@dataclasses.dataclass
class Row:
    """The worst distances of one table row, over its settings."""

    label: str
    decays: str
    settings: int = 0
    worst: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"ours-peer": 0.0, "ours-oracle": 0.0, "peer-oracle": 0.0}
    )
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, judge: Judge) -> None:
        self.settings += 1
        for pair, value in judge.worst.items():
            self.worst[pair] = max(self.worst[pair], value)
        if judge.misses:
            self.notes.append(f"integer mismatch: {judge.misses[0].splitlines()[1].strip()}")

    def line(self) -> str:
        cells = [_ulps(self.worst[p]) for p in ("ours-peer", "ours-oracle", "peer-oracle")]
        notes = "; ".join(sorted(set(self.notes))[:2]) + (
            " ..." if len(set(self.notes)) > 2 else ""
        )
        return f"| {self.label} | {self.decays} | {self.settings} | {' | '.join(cells)} | {notes} |"


def _ulps(value: float) -> str:
    if value == 0.0:
        return "0 (bit-exact)"
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def measure(peer: str, s: Setting, workers: dict[str, KerasWorker]) -> list[Judge]:
    """One setting, measured (never failing on a float distance)."""
    if peer == "optax":
        return run_optax(s, (MEASURE, MEASURE))
    if peer.startswith("keras:"):
        return [run_keras(workers[peer.split(":")[1]], s, MEASURE)]
    return [run_torch(peer, s, MEASURE)]


def run_row(
    label: str,
    peer: str,
    force: dict[str, Any],
    band: int | None,
    count: int,
    rng: np.random.Generator,
    workers: dict[str, KerasWorker],
) -> list[Row]:
    decays = "power function" if band is None else "-".join(map(str, BANDS[band]))
    rows = [Row(label, decays), Row(f"{label}: from ema-core's state", decays)]
    space: Callable[[Any], Setting] = SPACES[peer.split(":", maxsplit=1)[0]]
    for i in range(count):
        s = space(NumpyDraw(rng, 0 if band is None else band))
        s = dataclasses.replace(s, args={**s.args, **force})
        print(f"  {label}, {decays}: {i + 1}/{count} {s.args}", file=sys.stderr, flush=True)
        try:
            judges = measure(peer, s, workers)
        except (ValueError, TypeError) as err:  # a preset refusing what its peer accepts
            rows[0].notes.append(f"refused: {str(err)[:90]}")
            continue
        for row, judge in zip(rows, judges, strict=False):
            row.add(judge)
    return rows if peer == "optax" else rows[:1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", type=int, default=6, help="settings per peer and band")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peers", default="", help="comma-separated peers (default: all)")
    opts = parser.parse_args(argv)
    if opts.settings < 1:
        parser.error(f"--settings must be at least 1, got {opts.settings}")
    if opts.seed < 0:
        parser.error(f"--seed must be at least 0 (numpy's seeds are non-negative), got {opts.seed}")
    known = sorted({r[1].split(":")[0] for r in ROWS})
    asked = [p.strip() for p in opts.peers.split(",") if p.strip()]
    unknown = [p for p in asked if p not in known]
    if unknown:
        parser.error(f"--peers: unknown {unknown}; known peers are {known}")
    chosen = [r for r in ROWS if not asked or r[1].split(":")[0] in asked]
    rng, start = np.random.default_rng(opts.seed), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        workers = {
            b: KerasWorker(b, Path(tmp))
            for b in ("jax", "torch")
            if any(r[1] == f"keras:{b}" for r in chosen)
        }
        rows: list[Row] = []
        for label, peer, force, banded in chosen:
            for band in range(len(BANDS)) if banded else [None]:
                rows += run_row(label, peer, force, band, opts.settings, rng, workers)
        for worker in workers.values():
            worker.close()
    print(f"done in {time.time() - start:.0f} s", file=sys.stderr)
    print(
        "| peer | decays | settings | ema-core vs peer | ema-core vs float64 | "
        "peer vs float64 | notes |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())


if __name__ == "__main__":
    main()
