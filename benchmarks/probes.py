"""Per-update side measurements, taken once per contender outside the timed loop:

* ``extra_bytes``: the peak memory one update allocates beyond what it started with: numpy
  through ``tracemalloc`` (numpy reports its buffers there), torch on CPU through the profiler's
  allocation events, torch on CUDA through the allocator's peak statistics; ``None`` where the
  framework offers no such count (JAX, array-api-strict).
* ``host_syncs``: on CUDA, the synchronising calls one update makes (torch's sync debug mode);
  ``None`` on CPU, where there is no device to wait for.
"""

from __future__ import annotations

import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any


def extra_bytes(backend: str, device: str, step: Callable[[int], Any], t: int) -> int | None:
    if backend == "numpy":
        tracemalloc.start()
        try:
            step(t)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    if backend == "torch":
        return _torch_cuda_bytes(step, t) if device == "cuda" else _torch_cpu_bytes(step, t)
    return None


def _torch_cpu_bytes(step: Callable[[int], Any], t: int) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(t)
    events = sorted(
        (e for e in prof.events() if e.cpu_memory_usage), key=lambda e: e.time_range.start
    )
    live = peak = 0
    for event in events:  # allocations are positive, frees negative, in time order
        live += event.cpu_memory_usage
        peak = max(peak, live)
    return peak


def _torch_cuda_bytes(step: Callable[[int], Any], t: int) -> int:
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(t)
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - before)


def host_syncs(backend: str, device: str, step: Callable[[int], Any], t: int) -> int | None:
    if backend != "torch" or device != "cuda":
        return None
    import torch

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step(t)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)
