"""Schedules that reproduce how peers round their decays (``gated``, in ``_gated``, gates them).

``in_float32``
rounds a decay to float32 as TensorFlow, Keras, Paddle and ema-pytorch compute it.
``ramped_half_life`` is the half-life schedule of EDM2's traditional EMA and torchtitan, and
``momentum`` is a constant given by its rate (mmengine's ``momentum`` is ``1 - decay``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from ema_core._checks import check_fraction, check_positive
from ema_core._ops import Ops, ScalarOps
from ema_core.schedules._base import Schedule
from ema_core.schedules._decays import Warmup, as_schedule

_LN2 = math.log(2.0)


@dataclass(frozen=True)
class InFloat32(Schedule):
    """The inner decay rounded to float32; the rate is ``1 - decay32`` (exact in float64, and
    ``float32(1 - decay32)`` once a float32 leaf's update casts it, as TF forms it)."""

    inner: Schedule

    @property
    def first_update(self) -> int:
        return self.inner.first_update

    @property
    def skips(self) -> bool:
        return self.inner.skips

    @property
    def elementwise(self) -> bool:
        return self.inner.elementwise

    @property
    def runs_user_code(self) -> bool:
        return self.inner.runs_user_code

    def stand_in(self) -> Schedule:
        return replace(self, inner=self.inner.stand_in()) if self.runs_user_code else self

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        if isinstance(self.inner, Warmup):
            return _torch_warmup32(self.inner, ops)
        decay, _ = self.inner.pair(ops)
        if isinstance(ops, ScalarOps):
            d32 = _round32(decay)
            return d32, 1.0 - d32
        d32 = ops.const(ops.xp.astype(ops.const(decay), ops.xp.float32))
        return d32, 1.0 - d32


def _round32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def _torch_warmup32(warm: Warmup, ops: Ops) -> tuple[Any, Any]:
    """The warm-up decay as torch forms ``1 - (1 + t / inv_gamma) ** -power`` on a 0-d float32
    tensor (ema-pytorch): ``t``, ``inv_gamma``, the quotient and the base rounded to float32
    each, the power of the float32 base taken with the float64 exponent and rounded once
    (``-0.5`` is torch's ``rsqrt``: a rounded square root, then its rounded reciprocal; ``-2``
    the rounded reciprocal of the rounded square), then
    ``1 - value`` and the clamp in float32. Rounding only the float64 result differed from
    ema-pytorch by one float32 ulp at 71 of the first 20,000 warm-up steps (defaults)."""
    if isinstance(ops, ScalarOps):
        r: Any = _round32
        root: Any = math.sqrt
    else:
        r = lambda v: ops.const(ops.xp.astype(ops.const(v), ops.xp.float32))  # noqa: E731
        root = lambda v: ops.xp.sqrt(ops.const(v))  # noqa: E731
    base = r(1.0 + r(r(ops.t) / r(warm.inv_gamma)))
    if warm.power == 0.5:  # torch's special exponents: -0.5 is rsqrt, -2 is 1 / (x * x)
        left = r(1.0 / r(root(base)))
    elif warm.power == 2.0:
        left = r(1.0 / r(base * base))
    else:
        left = r(ops.power(base, -warm.power))
    decay = ops.minimum(ops.maximum(r(1.0 - left), r(warm.min_decay)), r(warm.decay))
    return decay, 1.0 - decay


@dataclass(frozen=True)
class RampedHalfLife(Schedule):
    """``d_t = 0.5 ** (1 / min(half_life, ratio * t))`` (EDM2 traditional EMA, torchtitan)."""

    elementwise: ClassVar[bool] = True

    half_life: float
    ratio: float | None

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        steps: Any = ops.const(self.half_life)
        if self.ratio is not None:
            steps = ops.minimum(steps, ops.t * self.ratio)
        log_decay = -_LN2 / ops.maximum(steps, 1e-8)
        return ops.exp(log_decay), -ops.expm1(log_decay)


@dataclass(frozen=True)
class Momentum(Schedule):
    """A constant decay given by its rate: ``d = 1 - momentum``, rate exactly ``momentum``."""

    elementwise: ClassVar[bool] = True

    momentum: float

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        return ops.const(1.0 - self.momentum), ops.const(self.momentum)


def in_float32(schedule: Schedule | float, /) -> Schedule:
    """Round each decay to float32, as TF, Keras, Paddle and ema-pytorch compute it (a
    ``warmup`` inside is formed step by step in float32 as torch forms ema-pytorch's decay).

    Example:
        >>> from ema_core import schedules
        >>> schedules.in_float32(0.9)(1)
        0.8999999761581421
    """
    return InFloat32(as_schedule(schedule))


def ramped_half_life(half_life: float = math.inf, /, ratio: float | None = None) -> Schedule:
    """``d_t = 0.5 ** (1 / min(half_life, ratio * t))``: a half-life in updates that grows with t.

    EDM2's traditional EMA (``rampup_ratio``) and torchtitan (``half_life_fraction``).

    Example:
        >>> from ema_core import schedules
        >>> round(schedules.ramped_half_life(ratio=0.5)(2), 6)  # half-life of 1 update at t=2
        0.5
    """
    if not (isinstance(half_life, float) and half_life == math.inf):
        check_positive("half_life", half_life)
    if ratio is None and half_life == math.inf:
        raise ValueError("ramped_half_life needs a finite half_life or a ratio, got neither")
    if ratio is not None:
        check_positive("ratio", ratio)
    return RampedHalfLife(float(half_life), None if ratio is None else float(ratio))


def momentum(momentum: float, /) -> Schedule:
    """The constant decay ``1 - momentum``, with the rate exactly ``momentum`` (mmengine).

    Example:
        >>> from ema_core import schedules
        >>> schedules.momentum(0.25).rate(3)
        0.25
    """
    return Momentum(check_fraction("momentum", momentum))
