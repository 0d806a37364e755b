"""Timing and reporting. Each backend module in ``benchmarks/backends/`` offers

* ``NAME`` and ``missing() -> str | None`` (why it cannot run here, or None),
* ``cases(workload, dtype, device) -> dict[str, Callable[[int], object]]``: named step functions
  (called with the step number t), one of them ``"ceiling"``: a flat in-place two-read-one-write
  stream of the same bytes, measured in the same run, and one ``"ema_core"``,
* ``sync(result)``: wait until the work behind a step's result is done.

Peer modules in ``benchmarks/peers/`` add their own named cases to a backend's rows.

Figures: the median time per update after warm-up and its spread, the achieved GB/s (the bytes
ema-core moves: read shadow, read params, write shadow), the ratio to the ceiling and to ema-core,
and the time per leaf above the ceiling's (``us/leaf``: what each tensor costs beyond moving its
bytes). The ceiling is timed first and again after every contender, and the faster of its two
medians counts: on a shared machine that moves by 10-20% between minutes, the ratios are then
never flattered by a slow ceiling.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from benchmarks import probes
from benchmarks.workloads import Workload

#: Bytes moved per element: a float32 shadow read and written, and the params read.
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
    vs_ema_core: float
    extra_mb: float | None = None
    host_syncs: int | None = None
    overhead_us_per_leaf: float = 0.0


def time_case(
    step: Callable[[int], Any],
    sync: Callable[[Any], None],
    *,
    warmup: int = 3,
    repeats: int = 10,
    budget_s: float = 3.0,
) -> list[float]:
    """Per-update times in seconds after ``warmup`` calls (at least 3, at most ``repeats``,
    stopping early once ``budget_s`` is spent)."""
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


def measure(
    module: Any, workload: Workload, dtype: str, device: str, repeats: int, peers: Any = None
) -> list[Row]:
    """Time a backend's cases, and its peers' when given, on one workload and dtype."""
    cases = module.cases(workload, dtype, device)
    if not cases:
        return []
    if peers is not None:
        cases.update(peers.cases(workload, dtype, device))
    nbytes = BYTES_PER_ELEMENT[dtype] * workload.elements
    ceiling_step = cases["ceiling"]
    rows = []
    for name in list(cases):
        step = cases.pop(name)  # a contender is freed as soon as it is timed
        times = time_case(step, module.sync, repeats=repeats)
        extra = probes.extra_bytes(module.NAME, device, step, 10**6)
        syncs = probes.host_syncs(module.NAME, device, step, 10**6 + 1)
        del step
        rows.append(_row(workload, dtype, module.NAME, name, times, nbytes, extra, syncs))
    again = time_case(ceiling_step, module.sync, repeats=repeats)
    del ceiling_step
    at = next(i for i, r in enumerate(rows) if r.contender == "ceiling")
    if statistics.median(again) * 1e3 < rows[at].median_ms:  # the faster ceiling counts
        faster = _row(workload, dtype, module.NAME, "ceiling", again, nbytes, None, None)
        rows[at] = replace(faster, extra_mb=rows[at].extra_mb, host_syncs=rows[at].host_syncs)
    ceiling = next(r.median_ms for r in rows if r.contender == "ceiling")
    ours = next((r.median_ms for r in rows if r.contender == "ema_core"), float("nan"))
    for row in rows:
        row.of_ceiling = ceiling / row.median_ms
        row.vs_ema_core = ours / row.median_ms
        row.overhead_us_per_leaf = max(0.0, row.median_ms - ceiling) * 1e3 / len(workload.shapes)
    return rows


def _row(
    workload: Workload,
    dtype: str,
    backend: str,
    name: str,
    times: list[float],
    nbytes: int,
    extra: int | None,
    syncs: int | None,
) -> Row:
    med = statistics.median(times)
    extra_mb = None if extra is None else extra / 2**20
    spread_ms = (max(times) - min(times)) / 2 * 1e3
    return Row(workload.name, dtype, backend, name, med * 1e3, spread_ms, nbytes / med / 1e9,
               0.0, 0.0, extra_mb, syncs)  # fmt: skip


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'workload':<16}{'dtype':<6}{'backend':<18}{'contender':<26}{'ms':>9}{'+-':>8}"
        f"{'GB/s':>8}{'x ceil':>8}{'x ema':>7}{'us/leaf':>9}{'MB/upd':>9}{'syncs':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.workload:<16}{r.dtype:<6}{r.backend:<18}{r.contender:<26}"
            f"{r.median_ms:>9.3f}{r.spread_ms:>8.3f}{r.gb_per_s:>8.2f}"
            f"{r.of_ceiling:>8.2f}{r.vs_ema_core:>7.2f}{r.overhead_us_per_leaf:>9.2f}"
            f"{_opt(r.extra_mb, '.1f'):>9}"
            f"{_opt(r.host_syncs, 'd'):>6}"
        )
    return "\n".join(lines)


def format_markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    """The same table as Markdown, headed by the machine it ran on."""
    out = [
        f"Machine: {meta['machine']}, {meta['cpus']} CPUs ({meta['device']}), {meta['date']}, "
        f"`{meta['command']}`. GB/s counts the bytes ema-core moves (12 per element for fp32, "
        "10 for bf16 params with float32 shadows); `x ceiling` = ceiling time / contender "
        "time (the faster of two ceiling timings, one before and one after the contenders); "
        "`x ema-core` = ema-core time / contender time; `us/leaf` = (contender time - ceiling "
        "time) / number of leaves: the cost per tensor beyond moving its bytes; "
        "`MB/update` = the peak memory one "
        "update allocates (- where the framework does not count it); `syncs` = host syncs per "
        "update (CUDA only).",
        "",
        "| workload | dtype | backend | contender | ms (median) | +- | GB/s | x ceiling | "
        "x ema-core | us/leaf | MB/update | syncs |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    out += [
        f"| {r.workload} | {r.dtype} | {r.backend} | {r.contender} | {r.median_ms:.3f} | "
        f"{r.spread_ms:.3f} | {r.gb_per_s:.2f} | {r.of_ceiling:.2f} | {r.vs_ema_core:.2f} | "
        f"{r.overhead_us_per_leaf:.2f} | {_opt(r.extra_mb, '.1f')} | {_opt(r.host_syncs, 'd')} |"
        for r in rows
    ]
    return "\n".join(out) + "\n"


def as_dicts(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
