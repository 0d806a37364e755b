"""numpy: ema-core's ``ema_update`` in place; ceiling: numpy's own in-place ``a += b``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import ema_core
from benchmarks.backends._common import flat_elements, host_arrays
from benchmarks.backends._common import missing as _missing
from benchmarks.workloads import Workload

NAME = "numpy"


def missing() -> str | None:
    return _missing("numpy")


def cases(workload: Workload, dtype: str, device: str) -> dict[str, Callable[[int], Any]]:
    if dtype != "fp32" or device != "cpu":
        return {}
    shadows, params = host_arrays(workload)
    n = flat_elements(workload, dtype)
    a, b = np.ones(n, np.float32), np.ones(n, np.float32)

    def ceiling(t: int) -> Any:
        np.add(a, b, out=a)

    def ema(t: int) -> Any:
        return ema_core.ema_update(shadows, params, t, decay=0.999)

    return {"ceiling": ceiling, "ema_core": ema}


def sync(result: Any) -> None:
    return None
