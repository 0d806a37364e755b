"""Schedule pieces several presets share, over the whole range of settings the peers accept.

``after_step`` is the ``update_after_step`` gate of timm, diffusers and ema-pytorch (negative
values included); ``power_profile`` is the power function for every exponent gamma > -1 (EDM2 and
ema-pytorch's KarrasEMA accept gamma in (-1, 0], i.e. sigma_rel up to ``MAX_SIGMA_REL``, where
``schedules.power_function`` asks for gamma > 0); ``counter_cap`` is the ``min(decay, (numerator +
n) / (denominator + n))`` of TF, AllenNLP and Paddle, also for a numerator above the denominator;
``counter_from`` is the same at a counter that holds ``start`` at the first update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ema_core._ops import Ops
from ema_core._types import InitPolicy
from ema_core.presets._args import check_int
from ema_core.schedules import (
    PowerFunction,
    Schedule,
    constant,
    gated,
    sigma_rel_to_gamma,
)
from ema_core.schedules._decays import counter_ratio


def after_step(
    inner: Schedule | float,
    update_after_step: Any,
    *,
    every: int = 1,
    phase: int = 0,
    copy_first: bool = False,
    floor: float = 0.0,
) -> tuple[Schedule, InitPolicy]:
    """The schedule and init of a peer that reads its decay at ``u = t - update_after_step - 1``
    and copies while ``u <= 0`` (timm, diffusers, ema-pytorch), gated every ``every`` calls from
    ``phase``.

    A negative ``update_after_step`` (the peers accept it) copies nothing and starts the decay at
    ``u = -update_after_step``; the shadow then starts as the params (``init="params"``), as the
    peers' copy of the model at construction does. ``copy_first`` keeps a copy on the first call
    whatever ``update_after_step`` is (ema-pytorch copies on its first call).
    """
    first = check_int("update_after_step", update_after_step, low=None) + 1
    if not -(2**63) <= first - 1 <= 2**63 - 2:  # the gate's offset and copy count are int64
        shown = first - 1 if abs(first) < 2**64 else f"an int of {first.bit_length()} bits"
        raise ValueError(
            f"update_after_step must be an int in [-2**63, 2**63 - 2] (steps are int64), "
            f"got {shown}"
        )
    copies = max(first, 1) if copy_first else first  # first <= -1: no step copies, 0 included
    schedule = gated(
        inner, every=every, phase=phase, copy_through=copies, offset=-first, floor=floor
    )
    return schedule, "copy" if copies >= 1 else "params"


def power_profile(gamma: Any = None, sigma_rel: Any = None) -> Schedule:
    """``d_t = (1 - 1/t) ** (gamma + 1)`` for any gamma > -1, given as ``gamma`` or
    ``sigma_rel`` in (0, MAX_SIGMA_REL] (exactly one of them)."""
    if (gamma is None) == (sigma_rel is None):
        raise TypeError("give exactly one of gamma or sigma_rel, got both or neither")
    if sigma_rel is not None:
        return PowerFunction(sigma_rel_to_gamma(sigma_rel))
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError(f"gamma must be a number > -1, got {type(gamma).__name__} {gamma!r:.80}")
    if not (_is_number(gamma) and gamma > -1):
        raise ValueError(f"gamma must be a finite number > -1, got {gamma!r:.80}")
    return PowerFunction(float(gamma))


def counter_cap(decay: float, numerator: Any, denominator: Any) -> Schedule:
    """``min(decay, (numerator + t) / (denominator + t))``; the constant ``decay`` when the
    numerator exceeds the denominator (the ratio is then above 1 at every t >= 0 and never wins
    the ``min``, as AllenNLP computes it)."""
    if _is_number(numerator) and _is_number(denominator) and numerator > denominator:
        counter_ratio(decay, denominator, denominator)  # checks the decay and the denominator
        return constant(decay)
    return counter_ratio(decay, numerator, denominator)


def _is_number(value: Any) -> bool:
    """A finite Python number (not a bool, not an int past the largest float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def counter_from(decay: float, numerator: float, denominator: float, start: int) -> Schedule:
    """``counter_cap`` at the counter ``n = start + t - 1`` (a peer's counter that holds
    ``start`` at the first update); the arguments are checked by the caller (``counter_cap``).
    The shift is folded into ``counter_ratio`` where it can hold it (the shifted denominator
    positive and the shifted numerator above its negative), else ``CounterFrom`` computes it.

    Example:
        >>> [round(counter_from(0.9, 0.2, 0.5, 0)(t), 4) for t in (1, 2, 3)]  # n = 0, 1, 2
        [0.4, 0.8, 0.88]
    """
    if numerator > denominator:  # the plain decay at every count
        return counter_cap(decay, numerator, denominator)
    num, den = numerator + start - 1, denominator + start - 1
    if -den < num <= den:
        return counter_cap(decay, num, den)
    return CounterFrom(decay, numerator, denominator, start)


@dataclass(frozen=True)
class CounterFrom(Schedule):
    """``min(decay, (numerator + n) / (denominator + n))`` with ``n = start + t - 1`` (t = 0,
    which no update reads, as t = 1), for a shift ``counter_ratio`` cannot hold (AllenNLP's
    ``apply(0)`` with a denominator <= 1)."""

    elementwise: ClassVar[bool] = True
    decay: float
    numerator: float
    denominator: float
    start: int

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        n = ops.maximum(ops.t, 1.0) + float(self.start - 1)
        decay = ops.minimum(self.decay, (self.numerator + n) / (self.denominator + n))
        rate = ops.maximum(
            1.0 - self.decay, (self.denominator - self.numerator) / (self.denominator + n)
        )
        return decay, rate
