"""``gated``: the peers' bookkeeping (a start, an update every n steps from some phase, copies
on the first applied steps, the inner schedule at a shifted and divided count, a decay floor).

On an array count the integer arithmetic never leaves the count's dtype range: the count is
widened to int64 where its namespace has it (JAX only with x64), constants past the dtype's
largest value are resolved on the host, and ``(t + offset) // divisor`` saturates instead of
wrapping, so a device count gives what a Python int gives.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

import array_api_compat as compat

from ema_core._checks import check_fraction, check_positive
from ema_core._ops import Ops, ScalarOps, default_int, is_host_array
from ema_core.schedules._base import (
    Schedule,
    check_at_most_max_step,
    first_moving,
    ops_at,
    shown_int,
)
from ema_core.schedules._decays import as_schedule


@dataclass(frozen=True)
class Gated(Schedule):
    """``d_t`` = 1 (skip) off the gate, 0 (copy) on gated steps ``t <= copy_through``, else
    ``max(inner(max((t + offset) // divisor, 1)), floor)``. The gate is
    ``t >= start and (t - phase) % every == 0``."""

    inner: Schedule
    every: int = 1
    phase: int = 0
    start: int = 0
    copy_through: int = 0
    offset: int = 0
    divisor: int = 1
    floor: float = 0.0

    @property
    def first_update(self) -> int:
        """The first open gate whose update moves: the first open gate over a plain inner
        schedule (it moves at every count); over one that skips (``every``, ``gated``), looked
        for among the first 1,000 open gates (else the first)."""
        first = max(self.start, 1)
        first += (self.phase - first) % self.every
        if not self.inner.skips or first <= self.copy_through:
            return first
        found = first_moving(self.stand_in(), itertools.count(first, self.every))  # no user code
        return first if found is None else found

    @property
    def skips(self) -> bool:
        return True

    @property
    def elementwise(self) -> bool:
        return self.inner.elementwise

    @property
    def runs_user_code(self) -> bool:
        return self.inner.runs_user_code

    def stand_in(self) -> Schedule:
        return replace(self, inner=self.inner.stand_in()) if self.runs_user_code else self

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        t = ops.raw
        if isinstance(ops, ScalarOps):
            if t < self.start or (t - self.phase) % self.every != 0:
                return 1.0, 0.0
            if t <= self.copy_through:
                return 0.0, 1.0
            return self._inner_pair(ops, max((t + self.offset) // self.divisor, 1))
        if is_host_array(t):  # a count the host holds: the exact Python-int path
            decay, rate = self.pair(ScalarOps(int(t)))
            return ops.const(decay), ops.const(rate)
        xp = ops.xp
        t = _widest_int(xp, t)
        top = int(xp.iinfo(t.dtype).max)
        decay, rate = self._inner_pair(ops, _count(xp, t, top, self.offset, self.divisor))
        live = _at_least(xp, t, top, self.start) & _residue(xp, t, top, self.phase, self.every)
        copy = _at_most(xp, t, top, self.copy_through)
        decay = ops.where(live, ops.where(copy, 0.0, decay), 1.0)
        return decay, ops.where(live, ops.where(copy, 1.0, rate), 0.0)

    def _inner_pair(self, ops: Ops, u: Any) -> tuple[Any, Any]:
        decay, rate = self.inner.pair(ops_at(ops, u))
        if self.floor > 0.0:
            decay, rate = ops.maximum(decay, self.floor), ops.minimum(rate, 1.0 - self.floor)
        return ops.const(decay), ops.const(rate)


def gated(
    schedule: Schedule | float,
    /,
    *,
    every: int = 1,
    phase: int = 0,
    start: int = 0,
    copy_through: int = 0,
    offset: int = 0,
    divisor: int = 1,
    floor: float = 0.0,
) -> Schedule:
    """Gate, offset and floor a schedule the way a peer's bookkeeping does.

    ``d_t = 1`` unless ``t >= start`` and ``(t - phase) % every == 0``; on those steps
    ``d_t = 0`` while ``t <= copy_through`` (a negative one copies at no step), else
    ``max(schedule(u), floor)`` with ``u = max((t + offset) // divisor, 1)``. No compensation for
    skipped steps: the peers that gate apply a one-step decay (use ``Config(interval=...)`` for
    the exact, compensated gate).

    Example:
        >>> from ema_core import schedules
        >>> s = schedules.gated(0.9, every=2, phase=1, copy_through=1)  # mmengine, interval=2
        >>> [s(t) for t in range(1, 7)]
        [0.0, 1.0, 0.9, 1.0, 0.9, 1.0]
    """
    for name, value in (("every", every), ("divisor", divisor)):
        check_positive(name, value, integer=True)
        check_at_most_max_step(name, value, "1")
    for name, value in (("phase", phase), ("start", start)):
        _check_int(name, value)
    _check_int("offset", offset, signed=True)
    _check_int("copy_through", copy_through, signed=True)
    check_fraction("floor", floor)
    return Gated(
        as_schedule(schedule), every, phase, start, copy_through, offset, divisor, float(floor)
    )


def _check_int(name: str, value: Any, *, signed: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not signed and value < 0:
        raise ValueError(f"{name} must be >= 0, got {shown_int(value)}")
    check_at_most_max_step(name, value, "-(2**63 - 1)" if signed else "0")


def _widest_int(xp: Any, t: Any) -> Any:
    """An integer count array as int64 where its namespace and device have int64 (JAX only with
    x64; not array-api-strict's ``Device("no_x64")``), else a narrower signed count (int8,
    int16) as the default int; an unsigned count as the default signed int where that holds it
    (uint8 and uint16 always), else kept unsigned (uint32 without int64), which the helpers
    below handle with constants of the count's own dtype."""
    device = None if compat.is_jax_namespace(xp) else compat.device(t)  # a tracer has none
    wide = default_int(xp, device)
    if t.dtype in (xp.int64, wide):
        return t
    top = int(xp.iinfo(wide).max)
    if _unsigned(xp, t):
        if int(xp.iinfo(t.dtype).max) <= top:
            return xp.astype(t, wide)
        if wide != xp.int64:
            return t  # uint32 without int64: counted in its own dtype
        cap = xp.asarray(top, dtype=t.dtype, device=device)  # on the count's device
        return xp.astype(xp.minimum(t, cap), wide)  # past MAX_STEP
    if wide == xp.int64:
        return xp.astype(t, xp.int64)
    return xp.astype(t, wide) if int(xp.iinfo(t.dtype).max) < top else t  # int8 / int16


def _c(xp: Any, value: int, t: Any) -> Any:
    """``value`` (within the count's range) as the count's dtype where a Python int would not
    do: beside a uint32 JAX count without x64, JAX's weak typing refuses an int past int32, so
    it becomes a 0-d array of that dtype; else the int itself (no dispatch in eager JAX)."""
    return xp.asarray(value, dtype=t.dtype) if _unsigned(xp, t) else value


def _unsigned(xp: Any, t: Any) -> bool:
    return int(xp.iinfo(t.dtype).min) == 0


def _at_least(xp: Any, t: Any, top: int, start: int) -> Any:
    """``t >= start`` for a count ``0 <= t <= top``."""
    return t >= _c(xp, start, t) if start <= top else xp.zeros_like(t, dtype=xp.bool)


def _at_most(xp: Any, t: Any, top: int, bound: int) -> Any:
    """``t <= bound`` for a count ``0 <= t <= top`` (``bound`` may be past either end of the
    count's dtype: a negative ``copy_through`` copies at no step)."""
    return t <= _c(xp, min(bound, top), t) if bound >= 0 else xp.zeros_like(t, dtype=xp.bool)


def _residue(xp: Any, t: Any, top: int, phase: int, every: int) -> Any:
    """``(t - phase) % every == 0``, i.e. ``t % every == phase % every``."""
    want = phase % every
    if every <= top:
        return t % _c(xp, every, t) == _c(xp, want, t)
    return t == _c(xp, want, t) if want <= top else xp.zeros_like(t, dtype=xp.bool)


def _count(xp: Any, t: Any, top: int, offset: int, divisor: int) -> Any:
    """``max((t + offset) // divisor, 1)`` saturated at ``top``, with no intermediate outside
    ``[-top, top]``: with ``offset = divisor * oq + orem`` it is ``t // divisor + carry + oq``,
    the carry being 1 where ``t % divisor + orem >= divisor``."""
    oq, orem = divmod(offset, divisor)
    if divisor <= top:
        q, r = t // _c(xp, divisor, t), t % _c(xp, divisor, t)
    else:  # every count is below the divisor
        q, r = xp.zeros_like(t), t
    rest = divisor - orem
    carry = r >= _c(xp, rest, t) if rest <= top else xp.zeros_like(t, dtype=xp.bool)
    s = q + xp.astype(carry, t.dtype)  # <= top: q <= top // 2 where a carry is possible
    if oq >= 0:
        if oq > top:
            return xp.full_like(t, top)
        u = xp.where(s > _c(xp, top - oq, t), _c(xp, top, t), s + _c(xp, oq, t))
    elif 1 - oq > top:
        return xp.ones_like(t)
    elif _unsigned(xp, t):  # s - (-oq) only where it is >= 1: it must not wrap below 0
        u = xp.where(s >= _c(xp, 1 - oq, t), s - _c(xp, -oq, t), xp.ones_like(s))
    else:
        u = s + oq  # >= oq >= -top
    return xp.where(u < 1, xp.ones_like(u), u)
