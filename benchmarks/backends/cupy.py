"""cupy: ema-core's ``ema_update`` in place on the current stream (``--device cuda``).

Ceiling: a device-to-device copy moving the same bytes (it reads and writes half each).
``ema_core_device_decay`` passes the decay as a 0-d device array. Reference row
``python_loop``: per-array CuPy expressions ``s += (1 - d) * (p - s)``, several kernel launches
per array, the baseline for the 20k-tiny workload. If this CuPy has no bfloat16, the ``bf16``
rows use float16 params (the same 10 bytes per element).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ema_core
from benchmarks.backends._common import host_arrays
from benchmarks.backends._common import missing as _missing
from benchmarks.harness import BYTES_PER_ELEMENT
from benchmarks.workloads import Workload

NAME = "cupy"
DECAY = 0.999


def missing() -> str | None:
    reason = _missing("cupy")
    if reason is not None:
        return reason
    import cupy as cp

    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as err:  # no driver or runtime
        return f"CuPy sees no CUDA device: {err}"
    return None if count else "CuPy sees no CUDA device"


def _half() -> Any:
    import cupy as cp

    try:
        cp.zeros(1, "bfloat16")
    except Exception:  # this CuPy has no bfloat16
        return cp.float16
    return "bfloat16"


def no_case(workload: Workload, dtype: str, device: str) -> str | None:
    """Why this backend times nothing here (None: it does): CuPy runs on CUDA only."""
    return None if device == "cuda" else "cupy runs on CUDA only (--device cuda)"


def cases(workload: Workload, dtype: str, device: str) -> dict[str, Callable[[int], Any]]:
    if no_case(workload, dtype, device) is not None:
        return {}
    import cupy as cp

    shadows_np, params_np = host_arrays(workload)
    pdtype = _half() if dtype == "bf16" else cp.float32
    shadows = [cp.asarray(s) for s in shadows_np]
    params = [cp.asarray(p).astype(pdtype) for p in params_np]
    del shadows_np, params_np
    half = BYTES_PER_ELEMENT[dtype] * workload.elements // 2
    src, dst = cp.ones(half, cp.uint8), cp.zeros(half, cp.uint8)

    def ceiling(t: int) -> Any:
        dst.data.copy_from_device_async(src.data, half, cp.cuda.get_current_stream())

    def ema(t: int) -> Any:
        return ema_core.ema_update(shadows, params, t, decay=DECAY)

    device_decay = cp.asarray(DECAY, cp.float64)

    def ema_device_decay(t: int) -> Any:  # the decay read in the kernel: no host value at all
        return ema_core.ema_update(shadows, params, t, decay=device_decay)

    def python_loop(t: int) -> Any:
        for s, p in zip(shadows, params, strict=True):
            cp.add(s, (1 - DECAY) * ((p if p.dtype == s.dtype else p.astype(s.dtype)) - s), out=s)

    return {
        "ceiling": ceiling,
        "ema_core": ema,
        "ema_core_device_decay": ema_device_decay,
        "python_loop": python_loop,
    }


def sync(result: Any) -> None:
    import cupy as cp

    cp.cuda.get_current_stream().synchronize()
