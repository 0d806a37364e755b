"""Schedules that gate other schedules: updates every n steps, and the first-update copy."""

from __future__ import annotations

import itertools
import math
import sys
from dataclasses import dataclass, replace
from typing import Any

import array_api_compat as compat

from ema_core._checks import check_positive
from ema_core._ops import ArrayOps, Ops, ScalarOps, is_readable
from ema_core.schedules._base import Schedule, check_at_most_max_step, first_moving, ops_at
from ema_core.schedules._decays import as_schedule
from ema_core.schedules._window_logs import block, window_from_logs
from ema_core.schedules._window_logs import clip0 as _clip0

#: The inner decays ``Every.first_update`` may compute looking for its first moving step.
_SEARCH_DECAYS = 10_000


@dataclass(frozen=True)
class Every(Schedule):
    inner: Schedule
    n: int
    compensate: bool

    @property
    def first_update(self) -> int:
        """The first multiple of n whose update moves: the first one at or after the inner
        schedule's first update, for a plain inner schedule (it moves at every step from
        there). Over an inner one that skips (``every``, ``gated``), that window (or with
        ``compensate=False`` that step) may hold only skips: looked for among the next
        multiples, within about 10,000 inner decays, else ``lcm(n, inner first update)``."""
        low = self.n * max(1, -(-self.inner.first_update // self.n))
        if not self.inner.skips:
            return low
        budget = max(1, _SEARCH_DECAYS // self.n) if self.compensate else 1000
        found = first_moving(self.stand_in(), itertools.count(low, self.n), budget)
        return math.lcm(self.n, self.inner.first_update) if found is None else found

    @property
    def skips(self) -> bool:
        return True

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        if not isinstance(ops, ScalarOps) and self._host_count(ops.raw):
            decay, rate = self.pair(ScalarOps(int(ops.raw)))  # a count the host holds
            return ops.const(decay), ops.const(rate)
        if not isinstance(ops, ScalarOps) and self.n > _top(ops.raw):
            return ops.const(1.0), ops.const(0.0)  # 0 < t <= the dtype's top < n: never due
        gate = (ops.raw % self.n == 0) & (ops.raw > 0)
        if isinstance(ops, ScalarOps):
            if not gate:
                return 1.0, 0.0
            return self._gated_pair(ops)
        if ops.raw.ndim == 0 and is_readable(ops.raw) and not bool(gate):
            return ops.const(1.0), ops.const(0.0)  # a CPU tensor: the n decays not computed
        decay, rate = self._gated_pair(ops)
        return ops.where(gate, decay, 1.0), ops.where(gate, rate, 0.0)

    @property
    def elementwise(self) -> bool:
        return self.inner.elementwise

    @property
    def runs_user_code(self) -> bool:
        return self.inner.runs_user_code

    def stand_in(self) -> Schedule:
        return replace(self, inner=self.inner.stand_in()) if self.runs_user_code else self

    @staticmethod
    def _host_count(raw: Any) -> bool:
        """A 0-d count the host reads, multiplied in the host loop as an int step is. Not a JAX
        array: an eager JAX update must give the compiled one's bits (the vectorised product)."""
        return raw.ndim == 0 and is_readable(raw) and not compat.is_jax_array(raw)

    def _gated_pair(self, ops: Ops) -> tuple[Any, Any]:
        """The inner pair at t, or with ``compensate`` the product of the n decays t-n+1..t and
        its rate via log1p, so that it stays accurate near 1. A count the host holds (a Python
        int, a 0-d numpy or array-api-strict array) multiplies in a Python loop, the same bits
        for both; a JAX count in a ``fori_loop`` (one traced body, the same sequential
        product; an eager one too, but over a callable, which stays in Python there), else
        vectorised over blocks of ``BLOCK`` steps (memory bounded
        whatever n; one block for n <= ``BLOCK``). Where the count's widest float is float32
        (JAX without x64) the window comes from the compensated sum of the rates' logs instead
        (``_window_logs``). Only an inner schedule that is not
        ``elementwise`` (a callable) on a count that is not traced is evaluated step by step.
        ``pair`` skips all of it on a gated-off step whose count the host reads."""
        if not self.compensate:
            return self.inner.pair(ops)
        if isinstance(ops, ScalarOps):
            decay, log_keep = self._product_looped(ops)
        elif _in_float32(ops) and (self.inner.elementwise or _is_traced(ops.raw)):
            return window_from_logs(self, ops, BLOCK)  # see _window_logs
        elif _is_traced(ops.raw) or (self.inner.elementwise and compat.is_jax_array(ops.raw)):
            decay, log_keep = self._product_fori(ops)  # eager and compiled alike
        elif self.inner.elementwise:
            decay, log_keep = self._product_vectorised(ops)
        else:
            decay, log_keep = self._product_looped(ops)
        return decay, ops.where(decay < 0.5, 1.0 - decay, -ops.expm1(log_keep))

    def _factor(self, ops: Ops, t_k: Any) -> tuple[Any, Any]:
        """The decay of step ``t_k`` and its term of ``log(product of keeps)``."""
        d_k, r_k = self.inner.pair(ops_at(ops, t_k))
        return ops.const(d_k), ops.log1p(-ops.minimum(r_k, 0.5))

    def _product_looped(self, ops: Ops) -> tuple[Any, Any]:
        decay: Any = ops.const(1.0)
        log_keep: Any = ops.const(0.0)
        for k in range(self.n):
            t_k = ops.raw - k
            d_k, log_k = self._factor(ops, t_k if isinstance(t_k, int) else _clip0(t_k))
            decay, log_keep = decay * d_k, log_keep + log_k
        return decay, log_keep

    def _product_fori(self, ops: ArrayOps) -> tuple[Any, Any]:
        jax, t = sys.modules["jax"], ops.raw  # a traced count: JAX is imported

        def body(k: Any, carry: tuple[Any, Any]) -> tuple[Any, Any]:
            d_k, log_k = self._factor(ops, _clip0(t - k.astype(t.dtype)))
            return carry[0] * d_k, carry[1] + log_k

        decay, log_keep = jax.lax.fori_loop(0, self.n, body, (ops.const(1.0), ops.const(0.0)))
        return decay, log_keep

    def _product_vectorised(self, ops: ArrayOps) -> tuple[Any, Any]:
        """The product over blocks of at most ``BLOCK`` steps, each evaluated at once: memory
        bounded whatever n (one block, as many operations as before, when n <= ``BLOCK``)."""

        def terms(t_k: Any) -> tuple[Any, Any]:
            return self._factor(ops, t_k)

        decay, log_keep = block(ops, 0, min(self.n, BLOCK), terms)
        for start in range(BLOCK, self.n, BLOCK):
            d, log = block(ops, start, min(self.n, start + BLOCK), terms)
            decay, log_keep = decay * d, log_keep + log
        return decay, log_keep


#: Steps of ``every``'s product evaluated at once for an array count (its memory bound).
BLOCK = 4096


def _top(t: Any) -> int:
    """The largest value of an integer count's dtype (a wider constant would overflow it)."""
    return int(compat.array_namespace(t).iinfo(t.dtype).max)


def _is_traced(t: Any) -> bool:
    return compat.is_jax_array(t) and isinstance(t, sys.modules["jax"].core.Tracer)


def _in_float32(ops: ArrayOps) -> bool:
    """Whether an array count computes in float32 (JAX without x64, a device without float64)."""
    return bool(ops.const(0.0).dtype == ops.xp.float32)


@dataclass(frozen=True)
class CopyAt(Schedule):
    """Decay 0 (a copy) at t == first, else the inner schedule: the ``init='copy'`` policy."""

    inner: Schedule
    first: int

    @property
    def first_update(self) -> int:
        return self.first

    @property
    def elementwise(self) -> bool:
        return self.inner.elementwise

    @property
    def runs_user_code(self) -> bool:
        return self.inner.runs_user_code

    def stand_in(self) -> Schedule:
        return replace(self, inner=self.inner.stand_in()) if self.runs_user_code else self

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        if not isinstance(ops, ScalarOps) and self.first > _top(ops.raw):
            return self.inner.pair(ops)  # a count of this dtype never reaches the first step
        at_first = ops.raw == self.first
        if isinstance(ops, ScalarOps):
            return (0.0, 1.0) if at_first else self.inner.pair(ops)
        decay, rate = self.inner.pair(ops)
        return ops.where(at_first, 0.0, decay), ops.where(at_first, 1.0, rate)


def every(schedule: Schedule | float, /, n: int, compensate: bool = True) -> Schedule:
    """Update only when ``t % n == 0``; decay 1 on the other steps (the averaged leaves skip;
    integer leaves under ``non_float="copy"`` and copied buffers are copied on every call).

    With ``compensate=True`` the update at t applies the product of the n decays of steps
    t-n+1..t, so the result equals updating every step with the same params; with
    ``compensate=False`` it applies the one-step decay ``schedule(t)``, as most peers do.
    With an array step the product takes memory bounded whatever n: a ``fori_loop`` when
    traced by JAX, else vectorised over blocks of 4096 steps (its time grows with n/4096),
    except for a callable or a ``Schedule`` subclass that does not set ``elementwise``:
    outside a JAX trace it is evaluated once per step. A step the host reads (an int, a
    numpy or CPU torch one) costs nothing on the steps the gate skips.

    Example:
        >>> from ema_core import schedules
        >>> s = schedules.every(schedules.constant(0.9), 2)
        >>> s(1), round(s(2), 6)
        (1.0, 0.81)
    """
    check_positive("n", n, integer=True)
    check_at_most_max_step("n", n, "1")
    if not isinstance(compensate, bool):
        raise TypeError(
            f"compensate must be a bool (True or False), got {type(compensate).__name__} "
            f"{compensate!r:.80}"
        )
    return Every(as_schedule(schedule), n, compensate)
