"""Timing and reporting. Each backend module in ``benchmarks/backends/`` offers

* ``NAME`` and ``missing() -> str | None`` (why it cannot run here, or None),
* ``cases(workload, dtype, device) -> dict[str, Callable[[int], object]]``: named step functions
  (called with the step number t), one of them ``"ceiling"``: a flat in-place two-read-one-write
  stream of the same bytes, measured in the same run,
* ``sync(result)``: wait until the work behind a step's result is done.

Figures: the median time per update after warm-up, the achieved GB/s (bytes moved: read shadow,
read params, write shadow) and the ratio to the ceiling.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.workloads import Workload

#: Bytes moved per element: (shadow read + write, params read).
BYTES_PER_ELEMENT = {"fp32": 12, "bf16": 10}


@dataclass
class Row:
    workload: str
    dtype: str
    backend: str
    contender: str
    median_ms: float
    spread_ms: float
    gb_per_s: float
    of_ceiling: float


def time_case(
    step: Callable[[int], Any],
    sync: Callable[[Any], None],
    *,
    warmup: int = 3,
    repeats: int = 10,
    budget_s: float = 8.0,
) -> list[float]:
    """Per-update times in seconds after ``warmup`` calls (fewer repeats past ``budget_s``)."""
    t = 1
    for _ in range(warmup):
        sync(step(t))
        t += 1
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        tic = time.perf_counter()
        sync(step(t))
        times.append(time.perf_counter() - tic)
        t += 1
    return times


def measure(module: Any, workload: Workload, dtype: str, device: str, repeats: int) -> list[Row]:
    cases = module.cases(workload, dtype, device)
    nbytes = BYTES_PER_ELEMENT[dtype] * workload.elements
    medians = {}
    rows = []
    for name, step in cases.items():
        times = time_case(step, module.sync, repeats=repeats)
        med = statistics.median(times)
        medians[name] = med
        spread = (max(times) - min(times)) / 2
        rows.append(
            Row(
                workload.name,
                dtype,
                module.NAME,
                name,
                med * 1e3,
                spread * 1e3,
                nbytes / med / 1e9,
                0.0,
            )
        )
        del step
    for row in rows:
        row.of_ceiling = medians["ceiling"] / (row.median_ms / 1e3)
    return rows


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'workload':<16}{'dtype':<6}{'backend':<18}{'contender':<22}{'ms':>9}{'+-':>7}"
        f"{'GB/s':>8}{'x ceil':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.workload:<16}{r.dtype:<6}{r.backend:<18}{r.contender:<22}"
            f"{r.median_ms:>9.3f}{r.spread_ms:>7.3f}{r.gb_per_s:>8.2f}{r.of_ceiling:>8.2f}"
        )
    return "\n".join(lines)


def as_dicts(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
