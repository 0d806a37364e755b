"""The checks of the post-hoc solve's inputs: snapshot times and sigma_rels as float64
vectors, positive times, no duplicate snapshot, a target time that is a snapshot time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ema_core.posthoc._math import FloatArray

__all__ = ["check_times", "text", "vector"]


def vector(name: str, values: Any) -> FloatArray:
    """``values`` as a non-empty 1-d float64 vector of finite real numbers (no bools)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    array = np.asarray(values)
    if array.dtype == np.bool_ or any(isinstance(v, (bool, np.bool_)) for v in values):
        raise TypeError(f"{name} must hold numbers, not bools, got {values!r}")
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d sequence, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array.astype(np.float64)))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] must be finite, got {array[bad[0]]!r}")
    return array.astype(np.float64)


def text(value: float) -> str:
    """A time as a message shows it: ``20`` for a whole number, else its repr."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def check_times(times: FloatArray, sigmas: FloatArray, target_time: float) -> None:
    """Positive times, no duplicate (time, sigma_rel) pair, and target_time one of the times."""
    if times.size != sigmas.size:
        raise ValueError(
            f"times and sigma_rels must have the same length, got {times.size} and {sigmas.size}"
        )
    if np.any(times <= 0.0):
        i = int(np.flatnonzero(times <= 0.0)[0])
        raise ValueError(f"times[{i}] must be > 0 (a step), got {text(times[i])}")
    pairs: dict[tuple[float, float], int] = {}
    for i, pair in enumerate(zip(times.tolist(), sigmas.tolist(), strict=True)):
        if pair in pairs:
            raise ValueError(
                f"snapshots {pairs[pair]} and {i} are both (time {text(pair[0])}, sigma_rel "
                f"{pair[1]!r}): duplicates make the Gram matrix singular; drop one"
            )
        pairs[pair] = i
    if target_time not in times:
        below, above = times[times < target_time], times[times > target_time]
        low = text(below.max()) if below.size else "none"
        high = text(above.min()) if above.size else "none"
        tail = "" if above.size else "; the weights after the last snapshot are unknown"
        raise ValueError(
            f"target_time must be a snapshot time, got {text(target_time)}; the nearest "
            f"snapshot times are {low} (below) and {high} (above){tail}"
        )
