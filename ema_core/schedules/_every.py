"""Schedules that gate other schedules: updates every n steps, and the first-update copy."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat as compat

from ema_core._checks import check_positive
from ema_core._ops import Ops, ScalarOps, ops_for
from ema_core.schedules._base import Schedule, as_schedule


@dataclass(frozen=True)
class Every(Schedule):
    inner: Schedule
    n: int
    compensate: bool

    @property
    def first_update(self) -> int:  # type: ignore[override]
        return math.lcm(self.n, self.inner.first_update)

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        gate = (ops.raw % self.n == 0) & (ops.raw > 0)
        if isinstance(ops, ScalarOps):
            if not gate:
                return 1.0, 0.0
            return self._gated_pair(ops)
        decay, rate = self._gated_pair(ops)
        return ops.where(gate, decay, 1.0), ops.where(gate, rate, 0.0)

    def _gated_pair(self, ops: Ops) -> tuple[Any, Any]:
        if not self.compensate:
            return self.inner.pair(ops)
        # the product of the n decays t-n+1..t, and its rate via log1p so that it stays accurate
        decay: Any = ops.const(1.0)
        log_keep: Any = ops.const(0.0)
        for k in range(self.n):
            t_k = ops.raw - k
            d_k, r_k = self.inner.pair(ops_for(t_k if isinstance(t_k, int) else _clip0(t_k)))
            decay = decay * d_k
            log_keep = log_keep + ops.log1p(-ops.minimum(r_k, 0.5))
        rate = ops.where(decay < 0.5, 1.0 - decay, -ops.expm1(log_keep))
        return decay, rate


def _clip0(t: Any) -> Any:
    return compat.array_namespace(t).clip(t, min=0)


@dataclass(frozen=True)
class CopyAt(Schedule):
    """Decay 0 (a copy) at t == first, else the inner schedule: the ``init='copy'`` policy."""

    inner: Schedule
    first: int

    @property
    def first_update(self) -> int:  # type: ignore[override]
        return self.first

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        at_first = ops.raw == self.first
        if isinstance(ops, ScalarOps):
            return (0.0, 1.0) if at_first else self.inner.pair(ops)
        decay, rate = self.inner.pair(ops)
        return ops.where(at_first, 0.0, decay), ops.where(at_first, 1.0, rate)


def every(schedule: Schedule | float, /, n: int, compensate: bool = True) -> Schedule:
    """Update only when ``t % n == 0``; decay 1 (skip) on the other steps.

    With ``compensate=True`` the update at t applies the product of the n decays of steps
    t-n+1..t, so the result equals updating every step with the same params; with
    ``compensate=False`` it applies the one-step decay ``schedule(t)``, as most peers do.

    Example:
        >>> from ema_core import schedules
        >>> s = schedules.every(schedules.constant(0.9), 2)
        >>> s(1), round(s(2), 6)
        (1.0, 0.81)
    """
    check_positive("n", n, integer=True)
    if not isinstance(compensate, bool):
        raise TypeError(f"compensate must be a bool, got {type(compensate).__name__}")
    return Every(as_schedule(schedule), n, compensate)
