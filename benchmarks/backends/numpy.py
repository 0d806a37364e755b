"""numpy: ema-core's ``ema_update`` in place; ceiling: numpy's own in-place ``a += b``.

Reference rows: ``naive`` is the textbook ``d * s + (1 - d) * p`` per array (two model-sized
temporaries), ``ema_core_1thread`` the same update with ``EMA_CORE_NUMPY_THREADS=1``. numpy
has no bfloat16, so the ``bf16`` rows use float16 params under float32 shadows: the same 10
bytes per element.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

import ema_core
from benchmarks.backends._common import flat_elements, host_arrays
from benchmarks.backends._common import missing as _missing
from benchmarks.workloads import Workload
from ema_core import _settings

NAME = "numpy"
DECAY = 0.999


def missing() -> str | None:
    return _missing("numpy")


def no_case(workload: Workload, dtype: str, device: str) -> str | None:
    """Why this backend times nothing here (None: it does): numpy runs on the CPU only."""
    return None if device == "cpu" else "numpy runs on the CPU only"


def cases(workload: Workload, dtype: str, device: str) -> dict[str, Callable[[int], Any]]:
    if no_case(workload, dtype, device) is not None:
        return {}
    shadows, params = host_arrays(workload)
    if dtype == "bf16":
        params = [p.astype(np.float16) for p in params]
    n = flat_elements(workload, dtype)
    a, b = np.ones(n, np.float32), np.ones(n, np.float32)

    def ceiling(t: int) -> Any:
        np.add(a, b, out=a)

    def ema(t: int) -> Any:
        return ema_core.ema_update(shadows, params, t, decay=DECAY)

    def ema_one_thread(t: int) -> Any:
        old = os.environ.get("EMA_CORE_NUMPY_THREADS")
        os.environ["EMA_CORE_NUMPY_THREADS"] = "1"
        _settings.settings(refresh=True)  # ema-core reads its settings once: read them again
        try:
            return ema_core.ema_update(shadows, params, t, decay=DECAY)
        finally:
            if old is None:
                del os.environ["EMA_CORE_NUMPY_THREADS"]
            else:
                os.environ["EMA_CORE_NUMPY_THREADS"] = old
            _settings.settings(refresh=True)

    def naive(t: int) -> Any:
        return [DECAY * s + (1 - DECAY) * p for s, p in zip(shadows, params, strict=True)]

    found = {"ceiling": ceiling, "ema_core": ema, "ema_core_1thread": ema_one_thread}
    return found if dtype == "bf16" else {**found, "naive": naive}


def sync(result: Any) -> None:
    return None
