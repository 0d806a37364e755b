"""A compensated interval's window (``every(..., n)``) in float32: its decay and rate from the
rates' logs.

An array count computes in its namespace's widest float. Where that is float32 (JAX without
x64), the product of the n rounded decays carries each decay's rounding n times (0.999 in
float32 is off by 1.3e-8 relative, its 1000th power by 1.3e-5: 80 float32 ulps of the rate).
The rates ``1 - d_k``, formed in the wide float by each schedule, are accurate to their own
rounding, so the window's ``S = sum log1p(-r_k)`` (added with Kahan's compensation) gives the
rate ``-expm1(S)`` within a few ulps of the exact one and the decay ``exp(S)`` within about
``|S| / 2`` ulps. A window holding a rate outside [0, 1) (a copy, decay 0; a trusted decay out
of range) takes the plain product instead. A JAX count, traced or not, runs the sum in a
``fori_loop`` (eager and compiled calls then agree bit for bit); another namespace's count
(float32 without float64, such as MPS) sums blocks of steps at once. The rates are each
schedule's own: a callable's is ``1 - d`` of its float32 decay, with that rounding (and on an
eager count a callable stays in Python: ``Every`` multiplies its decays there).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol

import array_api_compat as compat

from ema_core._ops import ArrayOps, Ops
from ema_core.schedules._base import Schedule, ops_at

__all__ = ["block", "clip0", "window_from_logs"]


class _Window(Protocol):
    @property
    def inner(self) -> Schedule: ...

    @property
    def n(self) -> int: ...


def clip0(t: Any) -> Any:
    return compat.array_namespace(t).clip(t, min=0)


def window_from_logs(window: _Window, ops: ArrayOps, size: int) -> tuple[Any, Any]:
    """``(decay, rate)`` of the n steps t-n+1..t of ``window`` at the count ``ops.raw``."""
    if compat.is_jax_array(ops.raw):
        product, total, bad = _logs_fori(window, ops)
    else:
        product, total, bad = _logs_blocks(window, ops, size)
    decay = ops.where(bad, product, ops.exp(total))
    return decay, ops.where(bad, 1.0 - product, -ops.expm1(total))


def _terms(window: _Window, ops: Ops, t_k: Any) -> tuple[Any, Any, Any]:
    """The decay of step ``t_k``, its ``log1p(-rate)`` (0 where not usable) and whether it is
    not usable (rate >= 1 or NaN)."""
    d_k, r_k = window.inner.pair(ops_at(ops, t_k))
    d_k, r_k = ops.const(d_k), ops.const(r_k)
    bad = ~(r_k < 1.0)
    return d_k, ops.log1p(-ops.where(bad, 0.0, r_k)), bad


def _logs_fori(window: _Window, ops: ArrayOps) -> tuple[Any, Any, Any]:
    jax, t = sys.modules["jax"], ops.raw  # a JAX count: JAX is imported

    def body(k: Any, carry: tuple[Any, Any, Any, Any]) -> tuple[Any, Any, Any, Any]:
        product, total, lost, bad = carry
        d_k, log_k, bad_k = _terms(window, ops, clip0(t - k.astype(t.dtype)))
        y = log_k - lost
        new = total + y
        return product * d_k, new, (new - total) - y, bad | bad_k

    zero = ops.const(0.0)
    start = (ops.const(1.0), zero, zero, ops.xp.zeros_like(t, dtype=bool))
    product, total, lost, bad = jax.lax.fori_loop(0, window.n, body, start)
    return product, total - lost, bad


def _logs_blocks(window: _Window, ops: ArrayOps, size: int) -> tuple[Any, Any, Any]:
    """Over blocks of at most ``size`` steps, each evaluated at once (memory bounded whatever
    n), the blocks' sums added with compensation."""

    def terms(t_k: Any) -> tuple[Any, Any, Any]:
        return _terms(window, ops, t_k)

    product, total, bad = block(ops, 0, min(window.n, size), terms)
    lost = ops.const(0.0)
    for start in range(size, window.n, size):
        p, s, b = block(ops, start, min(window.n, start + size), terms)
        y = s - lost
        new = total + y
        product, total, lost, bad = product * p, new, (new - total) - y, bad | b
    return product, total - lost, bad


def block(ops: ArrayOps, start: int, stop: int, terms: Callable[[Any], tuple[Any, ...]]) -> Any:
    """``terms`` of the counts t-stop+1..t-start, evaluated at once (one more axis), reduced
    along it by position: the product of the first (decays), the sum of the second (logs), and
    whether any of the third (unusable) holds. ``Every``'s float64 blocks share it."""
    xp, t = ops.xp, ops.raw
    ks = xp.arange(start, stop, dtype=t.dtype, device=ops.device)
    t_k = clip0(xp.expand_dims(t, axis=-1) - ks)  # one more axis: the block's counts
    shape = tuple(t_k.shape)
    reductions = (xp.prod, xp.sum, xp.any)
    return tuple(
        reduce(xp.broadcast_to(v, shape), axis=-1)
        for reduce, v in zip(reductions, terms(t_k), strict=False)
    )
