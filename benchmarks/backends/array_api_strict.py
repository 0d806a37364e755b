"""array-api-strict: the generic Array API path, as a portability check (not a speed contender).
Ceiling: a flat in-place ``a += b`` of the same bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ema_core
from benchmarks.backends._common import flat_elements, host_arrays
from benchmarks.backends._common import missing as _missing
from benchmarks.workloads import Workload

NAME = "array_api_strict"


def missing() -> str | None:
    return _missing("array_api_strict")


def no_case(workload: Workload, dtype: str, device: str) -> str | None:
    """Why this backend times nothing here (None: it does): a portability check, fp32 on the
    CPU, and not the 20k tiny arrays (the generic path takes minutes there)."""
    if device != "cpu":
        return "array_api_strict runs on the CPU only"
    if dtype != "fp32":
        return "array_api_strict is a portability check, run in fp32 only"
    if workload.name == "many_small_20k":
        return "array_api_strict is not timed on 20k tiny arrays (minutes per update)"
    return None


def cases(workload: Workload, dtype: str, device: str) -> dict[str, Callable[[int], Any]]:
    import array_api_strict as xp

    if no_case(workload, dtype, device) is not None:
        return {}
    shadows_np, params_np = host_arrays(workload)
    shadows = [xp.asarray(s) for s in shadows_np]
    params = [xp.asarray(p) for p in params_np]
    n = flat_elements(workload, dtype)
    a, b = xp.ones(n, dtype=xp.float32), xp.ones(n, dtype=xp.float32)

    def ceiling(t: int) -> Any:
        a[...] = a + b

    def ema(t: int) -> Any:
        return ema_core.ema_update(shadows, params, t, decay=0.999)

    return {"ceiling": ceiling, "ema_core": ema}


def sync(result: Any) -> None:
    return None
