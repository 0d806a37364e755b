"""EDM2's post-hoc coefficients: when they are inaccurate, and ``PostHocWarning``.

A reconstruction ``sum_i x_i w_i`` carries the snapshots' rounding (unit roundoff u: 2**-24 in
float32, 2**-11 in float16, 2**-8 in bfloat16) amplified up to ``sum_i |x_i|``. Snapshots of
sigma_rel 0.05 and 0.10 every 1 to 500 steps (up to step 3,000) give ``sum |x|`` <= 15 for
targets 0.03-0.25 and <= 51 for 0.02 (50.2 with one at every step; past float16's 45.3 from
about 200 snapshot times on), while cond(A) grows with the snapshot count alone (1.2e2 with 4
snapshot times to 9.4e12 with 3,000); a near-duplicate pair (0.0500, 0.0501) gives 285-6400
for targets 0.02-0.25 but 0.05 (286-3700 every 100 steps; at every step to 3,000 its Gram
matrix is singular). Measured by tests/test_posthoc_warning.py (test_measured_amplification)
and tests/test_posthoc_hunt_fixes_1206.py (every 2 steps to 1,000); every step to 3,000 (about
a minute): ``python -c "from tests.test_posthoc_hunt_fixes_1206 import measured;
print(measured(1, 3000, (0.05, 0.10), [0.02]).amplification)"``. So cond(A) tracks the
spacing, not the harm: ``PostHocWarning`` fires when ``sum |x|`` exceeds the storage's limit
``min(AMPLIFICATION_LIMIT, u**-0.5)`` (``amplification_limit``): 100 for float32 and float64
snapshots (twice the worst typical value, a third of the degenerate one; float32 then loses at
most 6e-6 relative), 45.3 for float16, 16 for bfloat16. ``u**-0.5`` keeps the amplified rounding
``sum |x| * u`` below ``sqrt(u)``: at least half of the storage's digits survive (a float32-like
6e-6 is out of reach: half-precision rounding alone exceeds it). Typical layouts stay under every
limit. It also fires when cond(A) exceeds ``CONDITION_LIMIT`` = 1e14, where ``cond * eps`` ~ 1e-2
bounds the float64 solve's own error: sigma_rels 0.05 and 0.05 * (1 + 1e-13) at one time give
``sum |x|`` = 51, all of it rounding, at cond 7e15. From cond(A) >= 1/eps (4.5e15) on, A is
singular to float64 precision: a ValueError names the pair.

Small coefficients do not make a target reachable: the fit error (``Solution.fit_error``, the
relative L2 distance of ``sum_i x_i p_i`` from the target's profile) measures what the
snapshots cannot express, and the warning fires above ``FIT_LIMIT`` = 25%. One snapshot of
0.05 read as 0.20 misses by 184%; 0.05 and 0.10 at one time give 0.02 / 0.07 / 0.25 at 50% /
5.6% / 104%, at 10 times 20% / 0.9% / 14%, at 40 times 2.6% / 0.1% / 2.6%
(tests/test_posthoc_warning.py): a quarter of the profile elsewhere is an average of another
length, not a rounding matter.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ema_core.posthoc._math import FloatArray

__all__ = [
    "AMPLIFICATION_LIMIT",
    "CONDITION_LIMIT",
    "FIT_LIMIT",
    "UNIT_ROUNDOFF",
    "PostHocWarning",
    "amplification_limit",
    "warn_if_inaccurate",
]

#: Warn when the coefficients amplify float32 snapshots' rounding more than this (sum |x|).
AMPLIFICATION_LIMIT = 100.0
#: Warn when the Gram matrix is this ill-conditioned (the float64 solve keeps ~2 digits).
CONDITION_LIMIT = 1e14
#: Warn when the reconstructed profile lies this far from the target's (relative L2 error).
FIT_LIMIT = 0.25
#: Unit roundoff (half an ulp of 1, relative) of each storage dtype of snapshots.
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


class PostHocWarning(RuntimeWarning):
    """The snapshots cannot give this target accurately (a profile they do not span, large
    coefficients or a near-singular Gram matrix)."""


def amplification_limit(storage: str, /) -> float:
    """The largest ``sum |x|`` that does not warn for snapshots stored as ``storage``.

    ``min(AMPLIFICATION_LIMIT, u**-0.5)`` with u the storage's unit roundoff: the amplified
    rounding ``sum |x| * u`` stays below ``sqrt(u)`` (half the storage's digits survive).

    Raises:
        ValueError: storage is not float64, float32, float16 or bfloat16.

    Example:
        >>> [round(amplification_limit(s), 1) for s in ("float32", "float16", "bfloat16")]
        [100.0, 45.3, 16.0]
    """
    if storage not in UNIT_ROUNDOFF:
        raise ValueError(f"storage must be one of {[*UNIT_ROUNDOFF]}, got {storage!r}")
    return min(AMPLIFICATION_LIMIT, float(UNIT_ROUNDOFF[storage] ** -0.5))


class Diagnostics(Protocol):
    """What the warning reads of a ``Solution`` (``_coefficients``)."""

    @property
    def condition(self) -> float: ...

    @property
    def amplification(self) -> FloatArray: ...

    @property
    def fit_error(self) -> FloatArray: ...


def warn_if_inaccurate(
    solution: Diagnostics, targets: Sequence[float], limit: float, storage: str
) -> None:
    """Warn (``PostHocWarning``) when a target's ``sum |x|`` (``amplification``) exceeds
    ``limit``, cond(A) exceeds ``CONDITION_LIMIT`` or a target's fit error exceeds
    ``FIT_LIMIT``.

    Call it from the public function itself: the warning names that function's caller
    (``stacklevel=3``: this function, the public one, its caller).
    """
    fits = solution.fit_error
    misfit = int(np.argmax(fits))
    if fits[misfit] > FIT_LIMIT:
        warnings.warn(
            f"the post-hoc EMA of sigma_rel {float(targets[misfit])!r} is inaccurate: the "
            f"closest mix of the snapshots' profiles misses its profile by "
            f"{float(fits[misfit]):.1%} (relative L2 error, limit {FIT_LIMIT:.0%}), so the "
            "result is another average. Track sigma_rels on both sides of the target, or keep "
            "more snapshots.",
            PostHocWarning,
            stacklevel=3,
        )
    amplification, condition = solution.amplification, solution.condition
    worst = int(np.argmax(amplification))
    most, cond = float(amplification[worst]), condition
    reasons = []
    if most > limit:
        reasons.append(
            f"its coefficients sum to {most:.3g} in absolute value (limit {limit:.3g} "
            f"for {storage} snapshots), which multiplies the snapshots' rounding as much"
        )
    if not cond <= CONDITION_LIMIT:
        reasons.append(
            f"cond(A) = {cond:.3g} (limit {CONDITION_LIMIT:g}) leaves the float64 solve "
            f"about {max(0.0, 16.0 - math.log10(cond)):.0f} of its 16 digits"
        )
    if reasons:
        warnings.warn(
            f"the post-hoc EMA of sigma_rel {float(targets[worst])!r} is inaccurate: "
            f"{'; '.join(reasons)}. Track sigma_rels further apart, or closer to the target.",
            PostHocWarning,
            stacklevel=3,
        )
