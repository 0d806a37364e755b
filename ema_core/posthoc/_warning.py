"""EDM2's post-hoc coefficients: when they are inaccurate, and ``PostHocWarning``.

A reconstruction ``sum_i x_i w_i`` carries the snapshots' rounding (unit roundoff u: 2**-24 in
float32, 2**-11 in float16, 2**-8 in bfloat16) amplified up to ``sum_i |x_i|``. Snapshots of
sigma_rel 0.05 and 0.10 every 1 to 500 steps (up to 3,000) give ``sum |x|`` <= 15 for targets
0.03-0.25 and <= 48 for 0.02, while cond(A) grows with the snapshot count alone (1e2 to 9e8); a
near-duplicate pair (0.0500, 0.0501) gives 286-3700 for any target but 0.05
(tests/test_posthoc_math.py, measured_amplification). So cond(A) tracks the spacing, not the
harm: ``PostHocWarning`` fires when ``sum |x|`` exceeds the storage's limit
``min(AMPLIFICATION_LIMIT, u**-0.5)`` (``amplification_limit``): 100 for float32 and float64
snapshots (twice the worst typical value, a third of the degenerate one; float32 then loses at
most 6e-6 relative), 45.3 for float16, 16 for bfloat16. ``u**-0.5`` keeps the amplified rounding
``sum |x| * u`` below ``sqrt(u)``: at least half of the storage's digits survive (a float32-like
6e-6 is out of reach: half-precision rounding alone exceeds it). Typical layouts stay under every
limit. It also fires when cond(A) exceeds ``CONDITION_LIMIT`` = 1e14, where ``cond * eps`` ~ 1e-2
bounds the float64 solve's own error: sigma_rels 0.05 and 0.05 * (1 + 1e-13) at one time give
``sum |x|`` = 51, all of it rounding, at cond 7e15. From cond(A) >= 1/eps (4.5e15) on, A is
singular to float64 precision: a ValueError names the pair.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from ema_core.posthoc._math import FloatArray

__all__ = [
    "AMPLIFICATION_LIMIT",
    "CONDITION_LIMIT",
    "UNIT_ROUNDOFF",
    "PostHocWarning",
    "amplification_limit",
    "warn_if_inaccurate",
]

#: Warn when the coefficients amplify float32 snapshots' rounding more than this (sum |x|).
AMPLIFICATION_LIMIT = 100.0
#: Warn when the Gram matrix is this ill-conditioned (the float64 solve keeps ~2 digits).
CONDITION_LIMIT = 1e14
#: Unit roundoff (half an ulp of 1, relative) of each storage dtype of snapshots.
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


class PostHocWarning(RuntimeWarning):
    """The snapshots cannot give this target accurately (large coefficients or a near-singular
    Gram matrix)."""


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


def warn_if_inaccurate(
    amplification: FloatArray,
    condition: float,
    targets: Sequence[float],
    limit: float,
    storage: str,
) -> None:
    """Warn (``PostHocWarning``) when a target's ``sum |x|`` (``amplification``) exceeds
    ``limit`` or ``condition`` (cond(A)) exceeds ``CONDITION_LIMIT``.

    Call it from the public function itself: the warning names that function's caller
    (``stacklevel=3``: this function, the public one, its caller).
    """
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
