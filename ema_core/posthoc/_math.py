"""EDM2's power-function profiles in numpy float64 (Karras et al. 2023, eqs. 121-127, 151).

A power-function EMA ending at time t with exponent gamma averages the iterates with the profile
``p(tau) = (gamma + 1) tau**gamma / t**(gamma + 1)`` on ``0 < tau <= t``; its width relative to t
is sigma_rel. This module converts gamma <-> sigma_rel (Algorithm 2) and gives the inner products
of two profiles (equation 151); ``_coefficients`` solves for the snapshots' coefficients.
``SIGMA_REL_MAX`` and the domain check are ``ema_core._banks``' own, shared with the EMA banks;
``check_posthoc_sigma_rel`` adds the solve's lower limit ``SIGMA_REL_MIN``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

from ema_core._banks import SIGMA_REL_MAX, check_sigma_rel
from ema_core.schedules._gamma import gamma_of as shared_gamma_of
from ema_core.schedules._gamma import sigma_rel_of

__all__ = [
    "SIGMA_REL_MAX",
    "SIGMA_REL_MIN",
    "FloatArray",
    "check_posthoc_sigma_rel",
    "check_real",
    "check_sigma_rel",
    "gamma_of",
    "gamma_to_sigma_rel",
    "inner",
    "inner_products",
    "real_array",
    "sigma_rel_to_gamma",
]

FloatArray = npt.NDArray[np.float64]

#: The smallest sigma_rel post-hoc EMA takes: gamma ~ 1/sigma_rel, and the inner products
#: multiply two (gamma + 1) factors, which overflow float64 from gamma ~ 1.3e154 on.
SIGMA_REL_MIN = 1e-150


def check_posthoc_sigma_rel(value: Any, name: str = "sigma_rel") -> float:
    """``check_sigma_rel`` (the domain (0, 12**-0.5)), and ``>= SIGMA_REL_MIN``.

    Raises:
        TypeError: ``value`` is not a real number (a bool is not one).
        ValueError: ``value`` is outside [SIGMA_REL_MIN, 12**-0.5), or NaN; the message says why.
    """
    s = check_sigma_rel(value, name)
    if s < SIGMA_REL_MIN:
        raise ValueError(
            f"{name} must be >= {SIGMA_REL_MIN:g} for post-hoc EMA, got {value!r}: gamma is about "
            "1/sigma_rel, and below that the profiles' inner products overflow float64 (an EMA "
            "that narrow is the last iterate itself)"
        )
    return s


def check_real(name: str, value: Any) -> float:
    """``value`` as a float, or ``TypeError`` naming ``name`` (bools are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int no float holds
        raise ValueError(
            f"{name} must be a finite number, got an int too large for a float"
        ) from None


def gamma_to_sigma_rel(gamma: float, /) -> float:
    """EDM2's relative standard deviation of the profile with exponent gamma (equation 123).

    ``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)**2 (gamma + 3)))``, computed as
    ``sqrt((gamma + 1) / (gamma + 3)) / (gamma + 2)`` so that no huge gamma overflows.

    Args:
        gamma: a finite number > 0.

    Returns:
        sigma_rel in (0, 12**-0.5).

    Raises:
        TypeError: gamma is not a real number (or is a bool).
        ValueError: gamma is not finite and > 0, or is so small (below about 1e-16) that its
            sigma_rel rounds to 12**-0.5.

    Example:
        >>> round(gamma_to_sigma_rel(6.94), 4)
        0.1
    """
    g = check_real("gamma", gamma)
    if not (math.isfinite(g) and g > 0.0):
        raise ValueError(
            f"gamma must be a finite number > 0, got {gamma!r}: gamma <= 0 gives sigma_rel >= "
            "12**-0.5, outside post-hoc EMA's domain"
        )
    s = sigma_rel_of(g)
    if not s < SIGMA_REL_MAX:  # gamma below about 1e-16: the profile rounds to gamma = 0
        raise ValueError(
            f"gamma must be a finite number > 0 whose sigma_rel is below 12**-0.5, got {gamma!r}: "
            "its sigma_rel rounds to 12**-0.5 (gamma = 0), outside post-hoc EMA's domain"
        )
    return s


def gamma_of(s: float) -> float:
    """The gamma > 0 of a checked post-hoc sigma_rel ``s``: the float64 whose
    ``gamma_to_sigma_rel`` lies nearest ``s`` (``ema_core.schedules._gamma``, which the
    schedule shares: a snapshot records the gamma its EMA ran with)."""
    g = shared_gamma_of(s)
    if not g > 0.0:
        raise ValueError(f"sigma_rel {s!r} is within rounding of 12**-0.5 (gamma = 0)")
    return g


def sigma_rel_to_gamma(sigma_rel: float, /) -> float:
    """The exponent gamma > 0 whose power-function profile has this sigma_rel (Algorithm 2).

    gamma is the largest real root of ``g**3 + 7 g**2 + (16 - s**-2) g + (12 - s**-2)``, in
    float64: the one whose ``gamma_to_sigma_rel`` lies nearest ``sigma_rel`` (the same value
    as ``ema_core.schedules.sigma_rel_to_gamma``).

    Args:
        sigma_rel: in (0, 12**-0.5) = (0, 0.288675).

    Returns:
        gamma > 0.

    Raises:
        TypeError: sigma_rel is not a real number (or is a bool).
        ValueError: sigma_rel is outside (0, 12**-0.5), or NaN.

    Example:
        >>> round(sigma_rel_to_gamma(0.05), 2), round(sigma_rel_to_gamma(0.10), 2)
        (16.97, 6.94)
    """
    return gamma_of(check_sigma_rel(sigma_rel))


def inner(t_a: Any, g_a: Any, t_b: Any, g_b: Any) -> FloatArray:
    exponent = np.where(t_a < t_b, g_b, -g_a)
    numerator = (g_a + 1.0) * (g_b + 1.0) * (t_a / t_b) ** exponent
    return np.asarray(numerator / ((g_a + g_b + 1.0) * np.maximum(t_a, t_b)), dtype=np.float64)


def inner_products(t_a: Any, gamma_a: Any, t_b: Any, gamma_b: Any) -> FloatArray:
    """Inner products of power-function profiles ending at t_a, t_b (equation 151).

    ``<p_a, p_b> = (a+1)(b+1) (t_a/t_b)**(b if t_a < t_b else -a) / ((a+b+1) max(t_a, t_b))``,
    the integral of ``p_a p_b`` over ``(0, min(t_a, t_b)]``; the arguments broadcast.

    Args:
        t_a, gamma_a, t_b, gamma_b: array-likes of finite times > 0 and exponents > 0.

    Returns:
        A float64 array of the broadcast shape.

    Raises:
        TypeError: an argument that is not a real number or an array-like of them (a str,
            a complex, a bool).
        ValueError: a time or an exponent is not finite and > 0; a ragged nest; shapes that
            do not broadcast.

    Example:
        >>> float(inner_products(100, 6.94, 100, 6.94)) == (7.94**2 / 14.88) / 100
        True
    """
    names = ("t_a", "gamma_a", "t_b", "gamma_b")
    values = [real_array(n, v) for n, v in zip(names, (t_a, gamma_a, t_b, gamma_b), strict=True)]
    for name, value in zip(names, values, strict=True):
        if not np.all(np.isfinite(value) & (value > 0.0)):
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    try:
        return inner(*np.broadcast_arrays(*values))
    except ValueError:
        shapes = ", ".join(f"{n} {v.shape}" for n, v in zip(names, values, strict=True))
        raise ValueError(f"the arguments' shapes do not broadcast: {shapes}") from None


def real_array(name: str, value: Any) -> FloatArray:
    """``value`` as a float64 array: a real number or anything numpy reads as an array of real
    numbers (numpy, JAX or CPU torch arrays, nested lists and tuples, ``range``, Decimals);
    strings, bools (also inside a list, or a bool array) and complex numbers are refused.

    Raises:
        TypeError: naming ``name``, the value's type and what is allowed.
        ValueError: a ragged nest of lists.

    Example:
        >>> real_array("t_a", [100, 200.0]).tolist()
        [100.0, 200.0]
    """
    allowed = "a real number or an array-like of real numbers (no bools, strings or complex)"
    refused = TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r:.80}")
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return np.asarray(float(value))
    if isinstance(value, (str, bytes)) or _holds_bool(value):
        raise refused
    try:
        array = np.asarray(value)
    except ValueError as err:
        raise ValueError(f"{name} must be a rectangular nest of numbers: {err}") from None
    except (TypeError, RuntimeError):  # e.g. a CUDA tensor
        raise refused from None
    if array.dtype.kind == "O":  # Decimals, or numbers of another framework in a list
        if any(v is None or isinstance(v, (str, bytes)) for v in array.flat):
            raise refused  # astype would read None as NaN and parse strings
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError):
            raise refused from None
    if array.dtype.kind == "V":  # ml_dtypes' bfloat16 (a JAX bfloat16 array)
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError):
            raise refused from None
    if array.dtype.kind not in "iuf":
        raise refused
    return array.astype(np.float64)


def _holds_bool(value: Any) -> bool:
    """Whether a list or tuple holds a bool at any depth (numpy would read it as 0 or 1)."""
    if isinstance(value, (bool, np.bool_)):
        return True
    return isinstance(value, (list, tuple)) and any(_holds_bool(v) for v in value)
