"""torch: ema-core's ``ema_update`` and the ``EMA`` class (shadows of named tensors, updated in
place); ceiling: one flat ``lerp_`` of the same bytes. Peer libraries are in benchmarks/peers."""

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

    from ema_core.torch import EMA

    shadows_np, params_np = host_arrays(workload)
    pdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    shadows = [torch.from_numpy(s).to(device) for s in shadows_np]
    params = [torch.from_numpy(p).to(device=device, dtype=pdtype) for p in params_np]
    del shadows_np, params_np
    n = flat_elements(workload, dtype)
    a = torch.ones(n, device=device)
    b = torch.ones(n, device=device)
    ema = EMA({str(i): p for i, p in enumerate(params)}, decay=0.999)

    def ceiling(t: int) -> Any:
        return a.lerp_(b, 0.001)

    def ema_update(t: int) -> Any:
        return ema_core.ema_update(shadows, params, t, decay=0.999)

    def ema_class(t: int) -> Any:
        return ema.update(t)

    shadow_dict = {str(i): s for i, s in enumerate(shadows)}
    params_dict = {str(i): p for i, p in enumerate(params)}

    def stateless_dict(t: int) -> Any:  # a state_dict-style dict, beside the class (x class)
        return ema_core.ema_update(shadow_dict, params_dict, t, decay=0.999)

    return {
        "ceiling": ceiling,
        "ema_core": ema_update,
        "EMA class": ema_class,
        "ema_update dict": stateless_dict,
    }


def sync(result: Any) -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
