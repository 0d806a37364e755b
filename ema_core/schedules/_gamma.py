"""EDM2's sigma_rel <-> gamma relation of the power function, in float64: the one implementation
the schedule (``schedules.power_function``, ``sigma_rel_to_gamma``) and post-hoc EMA
(``ema_core.posthoc``) share, so that a snapshot's sigma_rel gives back the gamma its EMA ran
with: exactly for a schedule built from a sigma_rel, and for one built from a gamma to the
rounding of ``sigma_rel_of``'s float64 result: a few ulps for typical gammas
(``power_function(gamma=6.94)`` is recorded as sigma_rel 0.09997..., gamma 6.940000000000003:
4e-16 relative), more near ``gamma = 0``, where sigma_rel barely moves with gamma (gamma 0.01
comes back 1.3e-13 relative off, gamma 0.001 1.9e-12).

``sigma_rel_of(g) = sqrt((g + 1) / ((g + 2)**2 (g + 3)))`` is computed as
``sqrt((g + 1) / (g + 3)) / (g + 2)`` (no huge ``g`` overflows); it rises from 0 at ``g = -1``
to its peak ``MAX_SIGMA_REL`` at ``GAMMA_PEAK`` and falls towards 0 as ``g`` grows. ``gamma_of``
inverts the falling branch to the float64 ``g`` whose ``sigma_rel_of`` lies nearest.
"""

from __future__ import annotations

import math
import sys

__all__ = ["GAMMA_PEAK", "MAX_SIGMA_REL", "gamma_of", "sigma_rel_of"]

#: gamma at which sigma_rel peaks: the root of gamma**2 + 3*gamma + 1 = 0 above -1.
GAMMA_PEAK = (math.sqrt(5.0) - 3.0) / 2.0
_FLOAT_MAX = sys.float_info.max
#: sigma_rel at gamma = 0 (the uniform average): below it gamma > 0.
_SIGMA_REL_AT_0 = 12.0**-0.5


def sigma_rel_of(g: float) -> float:
    """The relative standard deviation of the power-function profile of exponent ``g > -1``."""
    return math.sqrt((g + 1.0) / (g + 3.0)) / (g + 2.0)


#: The largest sigma_rel a power function can have.
MAX_SIGMA_REL = sigma_rel_of(GAMMA_PEAK)


def gamma_of(s: float) -> float:
    """The gamma >= ``GAMMA_PEAK`` whose profile has sigma_rel ``s`` (in (0, MAX_SIGMA_REL],
    checked by the caller), as the float64 whose ``sigma_rel_of`` is nearest ``s``.

    For ``s <= 12**-0.5`` (gamma >= 0): the largest real root of ``g**3 + 7 g**2 + (16 - s**-2)
    g + (12 - s**-2)``, Newton on ``log sigma_rel(g) = log s`` to get close, then bisection on
    the float64 values of ``sigma_rel_of`` itself settles the last ulps (Newton alone stops at
    the rounding of its residual, a hundred ulps of g for tiny ``s``); above it (gamma in
    (GAMMA_PEAK, 0), where Newton's slope vanishes at the peak) bisection alone.

    Raises:
        ValueError: ``s <= 1/float64 max``: its gamma (about 1/s) overflows.
    """
    if not s * _FLOAT_MAX > 1.0:
        raise ValueError(
            f"sigma_rel must be > 1/{_FLOAT_MAX:.4g}, got {s!r}: its gamma (about 1/sigma_rel) "
            "overflows float64"
        )
    if s >= MAX_SIGMA_REL:
        return GAMMA_PEAK
    if s > _SIGMA_REL_AT_0:
        return _settle(GAMMA_PEAK, 0.0, s)
    if s > 1e-100:
        import numpy as np  # here: importing the schedules imports no array library

        c = s**-2.0
        roots = np.roots([1.0, 7.0, 16.0 - c, 12.0 - c])
        g = float(max(r.real for r in roots if abs(r.imag) <= 1e-9 * max(1.0, abs(r))))
    else:
        g = 1.0 / s - 3.0  # sigma_rel ~ 1/g - 3/g**2 for large g
    for _ in range(20):
        g = max(g, 1e-300)
        value = 0.5 * math.log((g + 1.0) / (g + 3.0)) - math.log(g + 2.0) - math.log(s)
        slope = 1.0 / ((g + 1.0) * (g + 3.0)) - 1.0 / (g + 2.0)
        step = value / slope
        g -= step
        if abs(step) <= 1e-16 * g:
            break
    lo, hi = g * (1.0 - 1e-13), min(g * (1.0 + 1e-13), _FLOAT_MAX)
    if not (lo > 0.0 and sigma_rel_of(lo) >= s >= sigma_rel_of(hi)):
        return g  # no sign change within some 450 ulps (Newton's worst was 250): keep g
    return _settle(lo, hi, s, g)


def _settle(lo: float, hi: float, s: float, g: float | None = None) -> float:
    """Halve the bracket ``lo < hi`` (``sigma_rel_of(lo) >= s >= sigma_rel_of(hi)``) down to
    two adjacent floats (at most about 64 halvings in one binade, some 1,100 across them); the
    one (or ``g``, preferred on a tie) whose ``sigma_rel_of`` is nearest ``s``."""
    while True:
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if sigma_rel_of(mid) >= s:
            lo = mid
        else:
            hi = mid
    ends = (lo, hi) if g is None else (g, lo, hi)
    return min(ends, key=lambda x: abs(sigma_rel_of(x) - s))
