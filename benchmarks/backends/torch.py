"""torch: ema-core's ``ema_update`` in place; ceiling: one flat ``lerp_`` of the same bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ema_core
from benchmarks.backends._common import flat_elements, host_arrays
from benchmarks.backends._common import missing as _missing
from benchmarks.workloads import Workload

NAME = "torch"


def missing() -> str | None:
    return _missing("torch")


def cases(workload: Workload, dtype: str, device: str) -> dict[str, Callable[[int], Any]]:
    import torch

    shadows_np, params_np = host_arrays(workload)
    pdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    shadows = [torch.from_numpy(s).to(device) for s in shadows_np]
    params = [torch.from_numpy(p).to(device=device, dtype=pdtype) for p in params_np]
    del shadows_np, params_np
    n = flat_elements(workload, dtype)
    a = torch.ones(n, device=device)
    b = torch.ones(n, device=device)

    def ceiling(t: int) -> Any:
        return a.lerp_(b, 0.001)

    def ema(t: int) -> Any:
        return ema_core.ema_update(shadows, params, t, decay=0.999)

    return {"ceiling": ceiling, "ema_core": ema}


def sync(result: Any) -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
