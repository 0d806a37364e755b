"""Timing and reporting. Each backend module in ``benchmarks/backends/`` offers

* ``NAME`` and ``missing() -> str | None`` (why it cannot run here, or None),
* ``cases(workload, dtype, device) -> dict[str, Callable[[int], object]]``: named step functions
  (called with the step number t), one of them ``"ceiling"``: a flat in-place two-read-one-write
  stream of the same bytes, measured in the same run, and one ``"ema_core"``,
* ``sync(result)``: wait until the work behind a step's result is done.

Peer modules in ``benchmarks/peers/`` add their own named cases to a backend's rows.

Figures: the median time per update after warm-up (over ``repeats`` timed calls, or fewer:
``time_case`` stops a contender once 3 s are spent and 3 calls timed; ``Row.timed`` says how
many) and its spread, the achieved GB/s (the bytes
ema-core moves: read shadow, read params, write shadow), the ratio to the ceiling and to ema-core,
and the time per leaf above the ceiling's (``us/leaf``: what each tensor costs beyond moving its
bytes). Each contender is timed in alternation with the ceiling (ceiling, contender, ceiling,
...), and its ratio is to the median of the ceiling calls beside it: on a shared machine whose
bandwidth moves by 20-50% between minutes, a ratio then compares two things measured under the
same conditions. The ceiling row reports all its calls. The tables
(text and Markdown) are ``benchmarks.tables``'.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
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
    vs_class: float = float("nan")  # the EMA class's time / this one's (where a class was timed)
    queued_ms: float | None = None  # CUDA: per update of QUEUED back-to-back updates, one sync
    queued_of_ceiling: float | None = None  # the ceiling's queued time / this one's
    timed: int = 0  # the timed calls behind the median (--repeats, or fewer past the budget)


def alternate(
    calls: Mapping[str, Callable[[], Any]], rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each contender over ``rounds`` strict alternations (a, b, c, a, ...,
    so that the machine's drift hits all alike), after ``warmup`` rounds that are not timed."""
    times: dict[str, list[float]] = {key: [] for key in calls}
    for r in range(rounds + warmup):
        for key, call in calls.items():
            tic = time.perf_counter()
            call()
            if r >= warmup:
                times[key].append(time.perf_counter() - tic)
    return times


def time_case(
    step: Callable[[int], Any],
    sync: Callable[[Any], None],
    *,
    ceiling: Callable[[int], Any] | None = None,
    warmup: int = 3,
    repeats: int = 10,
    budget_s: float = 3.0,
) -> tuple[list[float], list[float]]:
    """Per-update times in seconds after ``warmup`` calls (at least 3, at most ``repeats``,
    stopping early once ``budget_s`` is spent), and, when ``ceiling`` is given, the ceiling's
    times taken in alternation with them (one ceiling call before each timed call)."""
    t = 1
    for _ in range(warmup):
        sync(step(t))
        t += 1
    times: list[float] = []
    paired: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        if ceiling is not None:
            tic = time.perf_counter()
            sync(ceiling(t))
            paired.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        sync(step(t))
        times.append(time.perf_counter() - tic)
        t += 1
    return times, paired


#: Updates queued back to back (one sync after them all) in a queued measurement.
QUEUED = 20
#: A contender whose update takes longer than this (one update, synced) gets no queued
#: measurement: 3 rounds of ``QUEUED + 1`` updates would cost it minutes of device time (timm
#: and ``AveragedModel`` take about 160 ms per update on 20k tiny tensors on an H200), and at
#: that speed its host work per tensor is the time anyway.
QUEUED_MAX_MS = 150.0


def queued_ms(step: Callable[[int], Any], sync: Callable[[Any], None], t: int) -> float:
    """Milliseconds per update when ``QUEUED`` updates are queued back to back and synced once,
    the median of 3 rounds: as a training loop runs them (the host queues the next while the
    device works), so the host's per-tensor work overlaps the device's instead of adding to it.
    Only for a GPU: on the CPU the host does the work itself."""
    rounds = []
    for _ in range(3):
        sync(step(t))
        tic = time.perf_counter()
        result = None
        for i in range(QUEUED):
            result = step(t + 1 + i)
        sync(result)
        rounds.append((time.perf_counter() - tic) / QUEUED * 1e3)
        t += QUEUED + 1
    return statistics.median(rounds)


def measure(
    module: Any,
    workload: Workload,
    dtype: str,
    device: str,
    repeats: int,
    peers: Any = None,
    failed: list[str] | None = None,
) -> list[Row]:
    """Time a backend's cases, and its peers' when given, on one workload and dtype. Each
    contender alternates with the ceiling, and its ratio is to the ceiling timed beside it.
    A contender that raises costs its own row only: its error is appended to ``failed`` (and
    raised when no list is given); the ceiling's error ends the case."""
    cases = module.cases(workload, dtype, device)
    if not cases:
        return []
    if peers is not None:
        cases.update(peers.cases(workload, dtype, device))
    nbytes = BYTES_PER_ELEMENT[dtype] * workload.elements
    ceiling_step = cases.pop("ceiling")
    rows = []
    beside: dict[str, float] = {}
    queued_ceiling: list[float] = []
    all_ceiling, _ = time_case(ceiling_step, module.sync, repeats=repeats)
    for name in list(cases):
        step = cases.pop(name)  # a contender is freed as soon as it is timed
        try:
            times, paired = time_case(step, module.sync, ceiling=ceiling_step, repeats=repeats)
            extra = probes.extra_bytes(module.NAME, device, step, 10**6)
            syncs = probes.host_syncs(module.NAME, device, step, 10**6 + 1)
            row = _row(workload, dtype, module.NAME, name, times, nbytes, extra, syncs)
            fast = statistics.median(times) * 1e3 <= QUEUED_MAX_MS
            if device == "cuda" and fast:  # the ceiling queued just before, alike
                ceiling_queued = queued_ms(ceiling_step, module.sync, 2 * 10**6)
                row.queued_ms = queued_ms(step, module.sync, 2 * 10**6)
                row.queued_of_ceiling = ceiling_queued / row.queued_ms
                queued_ceiling.append(ceiling_queued)
        except Exception as exc:  # a new contender's bug must not cost the case's other rows
            if failed is None:
                raise
            failed.append(
                f"{module.NAME} {workload.name} {dtype} {name}: {type(exc).__name__}: {exc}"
            )
            continue
        finally:
            del step
        rows.append(row)
        beside[name] = statistics.median(paired) * 1e3
        all_ceiling += paired
    extra = probes.extra_bytes(module.NAME, device, ceiling_step, 10**6)
    del ceiling_step
    rows.insert(0, _row(workload, dtype, module.NAME, "ceiling", all_ceiling, nbytes, extra, None))
    if queued_ceiling:
        rows[0].queued_ms, rows[0].queued_of_ceiling = statistics.median(queued_ceiling), 1.0
    beside["ceiling"] = rows[0].median_ms
    ours = next((r.median_ms for r in rows if r.contender == "ema_core"), float("nan"))
    klass = next((r.median_ms for r in rows if r.contender == "EMA class"), float("nan"))
    for row in rows:
        row.vs_class = klass / row.median_ms
        ceiling = beside[row.contender]
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
               0.0, 0.0, extra_mb, syncs, timed=len(times))  # fmt: skip


def as_dicts(rows: list[Row]) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts: a ratio with nothing to compare (NaN: no EMA class or no
    ema-core row beside it) is None, so the file is strict JSON (``null``, never ``NaN``)."""
    return [{k: _finite(v) for k, v in asdict(r).items()} for r in rows]


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
