"""The EDM2 power-function EMA (Karras et al. 2023) and its sigma_rel <-> gamma relation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ema_core._checks import check_positive
from ema_core._ops import Ops
from ema_core.schedules._base import Schedule
from ema_core.schedules._gamma import MAX_SIGMA_REL, gamma_of, sigma_rel_of


def gamma_to_sigma_rel(gamma: float, /) -> float:
    """EDM2's relative standard deviation of the power-function profile with exponent gamma.

    ``sigma_rel = sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))``.

    Example:
        >>> from ema_core.schedules import gamma_to_sigma_rel
        >>> round(gamma_to_sigma_rel(6.94), 3)
        0.1
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError(f"gamma must be a real number > -1, got {type(gamma).__name__} {gamma!r}")
    if isinstance(gamma, int) and abs(gamma) > 2**1023:  # no float holds it
        raise ValueError(
            f"gamma must be a finite number > -1, got an int of {gamma.bit_length()} bits"
        )
    if not (math.isfinite(gamma) and gamma > -1):
        raise ValueError(f"gamma must be a finite number > -1, got {gamma!r}")
    return sigma_rel_of(float(gamma))


def sigma_rel_to_gamma(sigma_rel: float, /) -> float:
    """The gamma >= the peak whose profile has this sigma_rel (inverse of ``gamma_to_sigma_rel``).

    It is the largest real root of ``g**3 + 7 g**2 + (16 - s**-2) g + (12 - s**-2)``: the float64
    whose ``gamma_to_sigma_rel`` lies nearest ``sigma_rel`` (``schedules._gamma``, which
    ``ema_core.posthoc`` shares, so that a snapshot records the gamma its EMA ran with).

    Example:
        >>> from ema_core.schedules import sigma_rel_to_gamma
        >>> round(sigma_rel_to_gamma(0.05), 2)
        16.97
    """
    check_positive("sigma_rel", sigma_rel)
    if sigma_rel > MAX_SIGMA_REL:
        raise ValueError(f"sigma_rel must be in (0, {MAX_SIGMA_REL:.6f}], got {sigma_rel}")
    return gamma_of(float(sigma_rel))


@dataclass(frozen=True)
class PowerFunction(Schedule):
    elementwise: ClassVar[bool] = True
    gamma: float

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        t = ops.maximum(ops.t, 2.0)  # the formula is only read where t > 1
        log_decay = (self.gamma + 1.0) * ops.log1p(-1.0 / t)
        early = ops.t <= 1.0
        return ops.where(early, 0.0, ops.exp(log_decay)), ops.where(
            early, 1.0, -ops.expm1(log_decay)
        )


def power_function(gamma: float | None = None, *, sigma_rel: float | None = None) -> Schedule:
    """EDM2's power-function EMA: ``d_t = (1 - 1/t) ** (gamma + 1)``, and 0 for t <= 1.

    Give ``gamma`` (> 0 for a finite-variance profile; EDM2 uses 6.94 and 16.97) or ``sigma_rel``
    (EDM2's 0.10 and 0.05), not both.

    Example:
        >>> from ema_core import schedules
        >>> round(schedules.power_function(sigma_rel=0.05)(3), 5)
        0.00068
    """
    if (gamma is None) == (sigma_rel is None):
        raise TypeError("power_function takes exactly one of gamma or sigma_rel")
    if sigma_rel is not None:
        check_positive("sigma_rel", sigma_rel)
        if not sigma_rel < _GAMMA_ZERO:  # past it gamma <= 0: named by what the caller gave
            raise ValueError(
                f"sigma_rel must be in (0, 12**-0.5) = (0, {_GAMMA_ZERO:.6f}) (gamma > 0), "
                f"got {sigma_rel}"
            )
        gamma = sigma_rel_to_gamma(sigma_rel)
    return PowerFunction(float(check_positive("gamma", gamma)))


#: The sigma_rel of gamma = 0: power functions of gamma > 0 lie below it.
_GAMMA_ZERO = 12**-0.5
