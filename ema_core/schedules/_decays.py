"""Closed-form decay schedules, and ``as_schedule``, which turns a float into the constant one."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ema_core._checks import check_fraction, check_positive
from ema_core._ops import Ops
from ema_core._types import Step, Value
from ema_core.schedules._base import FromCallable, Schedule, shown_int


@dataclass(frozen=True)
class Constant(Schedule):
    elementwise: ClassVar[bool] = True
    decay: float

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        return ops.const(self.decay), ops.const(1.0 - self.decay)


@dataclass(frozen=True)
class NumUpdates(Schedule):
    elementwise: ClassVar[bool] = True
    decay: float
    numerator: float
    denominator: float

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        t = ops.t
        decay = ops.minimum(self.decay, (self.numerator + t) / (self.denominator + t))
        rate = ops.maximum(
            1.0 - self.decay, (self.denominator - self.numerator) / (self.denominator + t)
        )
        if self.numerator < 0:  # at a count below -numerator (step 0 of numerator=-1): a copy
            decay, rate = ops.maximum(decay, 0.0), ops.minimum(rate, 1.0)
        return decay, rate


@dataclass(frozen=True)
class Warmup(Schedule):
    elementwise: ClassVar[bool] = True
    decay: float
    inv_gamma: float
    power: float
    min_decay: float

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        left = ops.power(1.0 + ops.t / self.inv_gamma, -self.power)  # 1 - unclamped decay
        rate = ops.minimum(ops.maximum(left, 1.0 - self.decay), 1.0 - self.min_decay)
        decay = ops.minimum(ops.maximum(1.0 - left, self.min_decay), self.decay)
        return decay, rate


@dataclass(frozen=True)
class Annealing(Schedule):
    elementwise: ClassVar[bool] = True
    momentum: float
    gamma: float

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        t = ops.t
        rate = ops.maximum(self.momentum, self.gamma / (self.gamma + t))
        decay = ops.minimum(1.0 - self.momentum, t / (self.gamma + t))
        return decay, rate


def constant(decay: float, /) -> Schedule:
    """The same decay at every step: ``d_t = decay`` (``-0.0`` is read as ``0.0``).

    Example:
        >>> from ema_core import schedules
        >>> schedules.constant(0.9)(5)
        0.9
    """
    return Constant(check_fraction("decay", decay) + 0.0)  # -0.0 + 0.0 is +0.0


def num_updates(decay: float, /, numerator: float = 1.0, denominator: float = 10.0) -> Schedule:
    """``d_t = min(decay, (numerator + t) / (denominator + t))`` (TF, AllenNLP, torch_ema).

    ``numerator`` is in [-1, denominator]: below -1 the first decay, ``(numerator + 1) /
    (denominator + 1)``, is negative (the average would overshoot the params). At step 0 a
    ``numerator`` of -1 gives decay 0 (a copy), not ``-1 / denominator``.

    Example:
        >>> from ema_core import schedules
        >>> round(schedules.num_updates(0.999)(1), 5)
        0.18182
    """
    schedule = counter_ratio(decay, numerator, denominator)
    if numerator < -1:
        shown = shown_int(numerator) if isinstance(numerator, int) else numerator
        raise ValueError(
            f"numerator must be >= -1: the decay at step 1, (numerator + 1) / (denominator + "
            f"1), is negative below, got {shown}"
        )
    return schedule


def counter_ratio(decay: float, numerator: float, denominator: float) -> NumUpdates:
    """``num_updates`` for a ``numerator`` anywhere in (-denominator, denominator]: the ratio at
    a counter the caller keeps at or above ``-numerator`` (AllenNLP's own counter, which
    ``compat.allennlp`` and the presets check)."""
    check_fraction("decay", decay)
    check_positive("denominator", denominator)
    if isinstance(numerator, bool) or not isinstance(numerator, (int, float)):
        raise TypeError(f"numerator must be a number, got {type(numerator).__name__}")
    if not -denominator < numerator <= denominator:
        shown = shown_int(numerator) if isinstance(numerator, int) else numerator
        raise ValueError(
            f"numerator must be in (-denominator, denominator] = "
            f"({-float(denominator)}, {float(denominator)}], got {shown}"
        )
    return NumUpdates(float(decay), float(numerator), float(denominator))


def warmup(
    decay: float, /, inv_gamma: float = 1.0, power: float = 2 / 3, min_decay: float = 0.0
) -> Schedule:
    """``d_t = clamp(1 - (1 + t / inv_gamma) ** -power, min_decay, decay)`` (timm, diffusers).

    Example:
        >>> from ema_core import schedules
        >>> round(schedules.warmup(0.9999)(1), 5)
        0.37004
    """
    check_fraction("decay", decay)
    check_positive("inv_gamma", inv_gamma)
    check_positive("power", power)
    check_fraction("min_decay", min_decay, high=decay)
    return Warmup(float(decay), float(inv_gamma), float(power), float(min_decay))


def half_life(steps: float, /) -> Schedule:
    """The constant decay that halves the old average's weight every ``steps`` updates.

    ``d = 0.5 ** (1 / steps)`` (EDM2's "traditional" EMA, torchtitan).

    Example:
        >>> from ema_core import schedules
        >>> round(schedules.half_life(1.0)(7), 6)
        0.5
    """
    check_positive("steps", steps)
    return Constant(math.exp(-math.log(2.0) / steps))


def annealing(momentum: float, /, gamma: float = 100.0) -> Schedule:
    """``d_t = 1 - max(momentum, gamma / (gamma + t))`` (mmengine MomentumAnnealingEMA).

    ``momentum`` is the weight of the new value, as mmengine names it (``1 - decay``).

    Example:
        >>> from ema_core import schedules
        >>> round(schedules.annealing(0.0002, 100)(1), 5)
        0.0099
    """
    check_fraction("momentum", momentum)
    check_positive("gamma", gamma)
    return Annealing(float(momentum), float(gamma))


def as_schedule(
    value: Schedule | Callable[[Step], Value] | float, name: str = "schedule"
) -> Schedule:
    """A Schedule from a Schedule, a float (constant decay) or a ``t -> decay`` callable.

    A Schedule is returned as it is; a float ``d`` becomes ``d_t = d``; a callable ``f``
    becomes ``d_t = f(t)``.

    Raises:
        TypeError: ``value`` is none of these (a bool included); the message uses ``name``.

    Example:
        >>> from ema_core import schedules
        >>> schedules.as_schedule(0.9), schedules.as_schedule(0.9)(5)
        (Constant(decay=0.9), 0.9)
        >>> schedules.as_schedule(lambda t: 1 - 1 / (t + 1))(3)
        0.75
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return constant(value)
    if callable(value):
        return FromCallable(value)
    hint = ": pass float(x)" if getattr(value, "shape", None) == () else ""
    raise TypeError(
        f"{name} must be a Schedule, a float decay or a callable t -> decay, "
        f"got {type(value).__name__}{hint}"
    )
