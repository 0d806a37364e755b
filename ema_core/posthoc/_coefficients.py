"""EDM2's post-hoc coefficients (Algorithm 3): validate, solve in float64, normalise.

A target profile is approximated by ``sum_i x_i p_i`` over the snapshots, closest in L2:
``A x = b``, A the snapshots' Gram matrix, b their inner products with the target (``_math``).
The solve is ``numpy.linalg.solve``, as in EDM2: A is symmetric positive definite once duplicates
are refused, and against a 50-digit mpmath solve it is as accurate as ``lstsq`` or better (x
within 2e-9 relative at cond(A) = 2e9).

The diagnostics, the limits and ``PostHocWarning`` are in ``_warning``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ema_core.posthoc._inputs import check_times, text, vector
from ema_core.posthoc._math import (
    FloatArray,
    check_posthoc_sigma_rel,
    check_real,
    gamma_of,
    inner,
)
from ema_core.posthoc._warning import amplification_limit, warn_if_inaccurate

__all__ = ["Solution", "coefficient_matrix", "coefficients", "solve", "solve_quietly"]

_EPS = float(np.finfo(np.float64).eps)


class Solution(NamedTuple):
    """Coefficients of several targets at one time, with the diagnostics of the solve.

    ``coefficients``: shape (targets, snapshots), float64, input order, 0 for snapshots after
    the target time; each row sums to 1. ``condition``: the 2-norm condition number of the
    Gram matrix of the kept snapshots. ``amplification``: ``sum |x|`` per target.
    ``fit_error``: per target, how far the reconstructed profile ``sum_i x_i p_i`` lies from
    the target's, relative (L2 over (0, target_time], divided by the target profile's norm):
    0 for a tracked target, near 1 where the snapshots cannot express it.
    """

    coefficients: FloatArray
    condition: float
    amplification: FloatArray
    fit_error: FloatArray


def solve(
    times: Sequence[float],
    sigma_rels: Sequence[float],
    target_time: float,
    target_sigma_rels: Sequence[float],
    *,
    storage: str = "float32",
) -> Solution:
    """The coefficients of several targets at ``target_time``, with cond(A) and ``sum |x|``.

    Keeps the snapshots with ``t_i <= target_time``, solves ``A x = b`` in float64 (A their Gram
    matrix, b their inner products with each target), normalises each x to sum 1 and gives the
    other snapshots 0. Warns (``PostHocWarning``) when ``sum |x| > amplification_limit(storage)``,
    ``cond(A) > CONDITION_LIMIT`` or the fit error exceeds ``FIT_LIMIT`` (``_warning``).

    Args:
        times: snapshot times (steps) > 0. sigma_rels: their sigma_rels, same length.
        target_time: one of ``times``. target_sigma_rels: the targets, each in (0, 12**-0.5).
        storage: the snapshots' storage dtype (float64, float32, float16 or bfloat16), whose
            rounding the coefficients amplify: it sets the warning's limit.

    Returns:
        ``Solution(coefficients (targets, snapshots), condition, amplification (targets,),
        fit_error (targets,))``.

    Raises:
        TypeError: a non-number (or bool) argument.
        ValueError: empty or mismatched lengths, non-finite or out-of-domain values, duplicate
            (time, sigma_rel) pairs, a target_time that is not a snapshot time, a Gram matrix
            singular to float64 precision (two snapshots with the same profile), an unknown
            storage.

    Example:
        >>> solution = solve([100, 100, 200, 200], [0.05, 0.1, 0.05, 0.1], 100, [0.1, 0.07])
        >>> (solution.coefficients.round(3) + 0.0).tolist()
        [[0.0, 1.0, 0.0, 0.0], [0.438, 0.562, 0.0, 0.0]]
    """
    limit = amplification_limit(storage)
    solution = solve_quietly(times, sigma_rels, target_time, target_sigma_rels)
    warn_if_inaccurate(solution, target_sigma_rels, limit, storage)
    return solution


def solve_quietly(
    times: Sequence[float],
    sigma_rels: Sequence[float],
    target_time: float,
    target_sigma_rels: Sequence[float],
) -> Solution:
    """``solve`` without the warning: for callers that warn themselves (``warn_if_inaccurate``)."""
    t, s = vector("times", times), vector("sigma_rels", sigma_rels)
    for i, sigma in enumerate(s.tolist()):
        check_posthoc_sigma_rel(sigma, f"sigma_rels[{i}]")
    t_out = check_real("target_time", target_time)
    targets = vector("target_sigma_rels", target_sigma_rels)
    gammas_out = [
        gamma_of(check_posthoc_sigma_rel(v, f"target_sigma_rels[{j}]"))
        for j, v in enumerate(targets.tolist())
    ]
    check_times(t, s, t_out)
    kept = np.flatnonzero(t <= t_out)
    t_k = t[kept][:, None]
    g_k = np.array([gamma_of(v) for v in s[kept].tolist()])[:, None]
    gram = inner(t_k, g_k, t_k.T, g_k.T)
    rhs = inner(t_k, g_k, t_out, np.array(gammas_out)[None, :])
    x, cond = _solve_normalised(gram, rhs, t[kept], s[kept])
    out = np.zeros((targets.size, t.size))
    out[:, kept] = x.T
    for j, target in enumerate(targets.tolist()):  # a tracked target: exactly its snapshot
        same = np.flatnonzero((t == t_out) & (s == target))
        if same.size:
            out[j] = 0.0
            out[j, same[0]] = 1.0
    fit = _fit_error(out[:, kept], gram, rhs, t_out, np.array(gammas_out))
    return Solution(out, cond, np.abs(out).sum(axis=1), fit)


def _fit_error(
    x: FloatArray, gram: FloatArray, rhs: FloatArray, t_out: float, gammas: FloatArray
) -> FloatArray:
    """``||sum_i x_i p_i - p_target|| / ||p_target||`` per target (rows of ``x``), from the
    inner products alone: ``|e|^2 = <T, T> - 2 x.b + x.A x``."""
    norms = inner(t_out, gammas, t_out, gammas)  # <T, T> per target
    squared = norms - 2.0 * np.einsum("jk,kj->j", x, rhs) + np.einsum("jk,kl,jl->j", x, gram, x)
    return np.asarray(np.sqrt(np.maximum(squared, 0.0) / norms), dtype=np.float64)


def _solve_normalised(
    gram: FloatArray, rhs: FloatArray, times: FloatArray, sigmas: FloatArray
) -> tuple[Any, float]:
    """``A x = b`` by LU (EDM2's choice: A is symmetric positive definite), each column of x
    scaled to sum 1, and cond(A). A singular to float64 precision (cond >= 1/eps) is refused."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = float(np.linalg.cond(gram))
    try:
        x = np.linalg.solve(gram, rhs) if cond < 1.0 / _EPS else None
    except np.linalg.LinAlgError:
        x = None
    if x is None:
        norm = np.sqrt(np.diag(gram))
        overlap = gram / np.outer(norm, norm) - np.eye(len(norm))  # cosines, 0 on the diagonal
        i, j = np.unravel_index(int(np.argmax(overlap)), overlap.shape)
        if overlap[i, j] < 1.0 - 1e-6:  # no two profiles alike: the scales are too far apart
            raise ValueError(_scale_message(cond, norm, times, sigmas))
        first, second = (f"(time {text(times[k])}, sigma_rel {float(sigmas[k])!r})" for k in (i, j))
        raise ValueError(
            f"the snapshots' Gram matrix is singular to float64 precision (cond {cond:.3g}): "
            f"{first} and {second} have the same profile; drop one"
        )
    return x / np.sum(x, axis=0), cond


def _scale_message(cond: float, norm: FloatArray, times: FloatArray, sigmas: FloatArray) -> str:
    k = int(np.argmax(norm))
    spread = 2.0 * float(np.log10(norm.max() / norm.min()))
    return (
        f"the snapshots' Gram matrix is singular to float64 precision (cond {cond:.3g}) though "
        f"no two profiles are alike: its diagonal spans {spread:.0f} orders of magnitude, and "
        f"(time {text(times[k])}, sigma_rel {float(sigmas[k])!r}) is far narrower than the "
        "others; track sigma_rels closer together"
    )


def coefficient_matrix(
    times: Sequence[float],
    sigma_rels: Sequence[float],
    target_time: float,
    target_sigma_rels: Sequence[float],
    *,
    storage: str = "float32",
) -> FloatArray:
    """``solve(...).coefficients``: shape (len(target_sigma_rels), len(times)), rows sum to 1.

    Example:
        >>> matrix = coefficient_matrix([10, 10, 20, 20], [0.05, 0.1] * 2, 20, [0.05, 0.07, 0.12])
        >>> matrix.shape, matrix.sum(axis=1).round(12).tolist()
        ((3, 4), [1.0, 1.0, 1.0])
    """
    limit = amplification_limit(storage)
    solution = solve_quietly(times, sigma_rels, target_time, target_sigma_rels)
    warn_if_inaccurate(solution, target_sigma_rels, limit, storage)
    return solution.coefficients


def coefficients(
    times: Sequence[float],
    sigma_rels: Sequence[float],
    target_time: float,
    target_sigma_rel: float,
    *,
    storage: str = "float32",
) -> FloatArray:
    """EDM2's coefficients of one target ``(target_time, target_sigma_rel)`` (see ``solve``).

    Returns one float64 per snapshot, in input order, summing to 1, 0 after ``target_time``.

    Example:
        >>> x = coefficients([100, 100, 200, 200], [0.05, 0.1, 0.05, 0.1], 200, 0.1)
        >>> (x.round(6) + 0.0).tolist()
        [0.0, 0.0, 0.0, 1.0]
    """
    targets = [check_posthoc_sigma_rel(target_sigma_rel, "target_sigma_rel")]
    limit = amplification_limit(storage)
    solution = solve_quietly(times, sigma_rels, target_time, targets)
    warn_if_inaccurate(solution, targets, limit, storage)
    row: FloatArray = solution.coefficients[0]
    return row
