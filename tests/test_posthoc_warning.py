"""``PostHocWarning``: its limits per storage dtype, the measurements behind them, and where it
points (the caller of the public function)."""

from __future__ import annotations

import functools
import math
import re
import warnings

import numpy as np
import pytest

from ema_core.posthoc import (
    PostHocWarning,
    amplification_limit,
    coefficient_matrix,
    coefficients,
    solve,
)
from ema_core.posthoc._warning import AMPLIFICATION_LIMIT


def layout(every, last, sigmas):
    times = [t for t in range(every, last + 1, every) for _ in sigmas]
    return times, [s for _ in range(every, last + 1, every) for s in sigmas]


def test_a_typical_layout_does_not_warn():
    times, sigmas = layout(100, 3000, [0.05, 0.10])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t_out in (3000, 1500):
            solve(times, sigmas, t_out, [0.02, 0.03, 0.07, 0.15, 0.25])
        solve(times, sigmas, 100, [0.03, 0.07])  # at the first snapshots: the nearer targets


@pytest.mark.parametrize(("target", "fit"), [(0.25, 1.04), (0.02, 0.50)])
def test_a_target_the_first_snapshots_cannot_express_warns_of_its_fit(target, fit):
    """At step 100 only (100, 0.05) and (100, 0.10) exist: 0.25 and 0.02 lie outside what
    they span, whatever their coefficients (fit errors 104% and 50%, amplification <= 6.2)."""
    times, sigmas = layout(100, 3000, [0.05, 0.10])
    with pytest.warns(PostHocWarning, match=f"sigma_rel {target} is inaccurate: the closest mix"):
        solution = solve(times, sigmas, 100, [target])
    assert solution.amplification[0] < AMPLIFICATION_LIMIT
    assert solution.fit_error[0] == pytest.approx(fit, abs=0.01)


@pytest.mark.parametrize("target", [0.02, 0.07, 0.25])
def test_a_near_duplicate_layout_warns(target):
    times, sigmas = layout(100, 3000, [0.0500, 0.0501])
    with pytest.warns(
        PostHocWarning,
        match=f"sigma_rel {target} is inaccurate: its coefficients sum to .* in absolute value",
    ):
        got = coefficients(times, sigmas, 3000, target)
    assert np.abs(got).sum() > AMPLIFICATION_LIMIT


def test_an_ill_conditioned_gram_matrix_warns():
    """A near-duplicate pair: cond(A) about 1.4e15 (its last digits move with the BLAS's
    summation order and threads, so the message is read, not matched digit for digit)."""
    with pytest.warns(PostHocWarning, match=r"cond\(A\) = ") as caught:
        coefficients([100, 100], [0.05, 0.05 * (1 + 1e-7)], 100, 0.07)
    text = str(caught[0].message)
    found = re.search(
        r"cond\(A\) = (\S+) \(limit 1e\+14\) leaves the float64 solve about (\d+) of", text
    )
    assert found, text
    cond, digits = float(found[1]), int(found[2])
    assert 1e15 <= cond <= 2e15 and digits == round(16 - math.log10(cond)), text


def amplification(times, sigmas, t_out, targets):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PostHocWarning)
        solution = solve(times, sigmas, t_out, targets)
    return solution.condition, solution.amplification.max()


@pytest.mark.parametrize(
    ("every", "last", "max_cond", "max_typical", "max_at_002"),
    [
        (100, 3000, 1e5, 11, 27),
        (500, 3000, 300, 5, 7),
        (10, 3000, 1e9, 15, 48),
        (1, 250, 5e8, 15, 47),
    ],
)
def test_measured_amplification(every, last, max_cond, max_typical, max_at_002):
    """The module docstring's measurements: EDM2's 0.05 + 0.10 layouts stay far below the limit
    whatever cond(A) is; a near-duplicate pair goes far above it."""
    times, sigmas = layout(every, last, [0.05, 0.10])
    for t_out in (last, times[len(times) // 2]):
        cond, typical = amplification(times, sigmas, t_out, [0.03, 0.07, 0.15, 0.2, 0.25])
        assert typical <= max_typical < AMPLIFICATION_LIMIT and cond <= max_cond
        assert amplification(times, sigmas, t_out, [0.02])[1] <= max_at_002 < AMPLIFICATION_LIMIT
    near = layout(every, last, [0.0500, 0.0501])
    assert amplification(*near, last, [0.07])[1] > 2 * AMPLIFICATION_LIMIT


def test_typical_layouts_stay_under_every_storage_limit():
    """The module docstring's claim: the worst typical ``sum |x|`` (15, targets 0.03-0.25) is
    below bfloat16's limit, and 0.02 (<= 48) below float32's."""
    assert [amplification_limit(s) for s in ("float64", "float32")] == [AMPLIFICATION_LIMIT] * 2
    assert amplification_limit("float16") == pytest.approx(2**5.5, rel=1e-15)
    assert amplification_limit("bfloat16") == 16.0
    assert 15 < amplification_limit("bfloat16") < 48 < amplification_limit("float32")
    with pytest.raises(ValueError, match=r"storage must be one of \[.*\], got 'int8'"):
        amplification_limit("int8")
    with pytest.raises(ValueError, match="storage must be one of"):
        solve([100], [0.05], 100, [0.05], storage="float8")


# sigma_rels 0.10 and 0.11 at steps 100 and 200: sum |x| is 1 for 0.105 (no warning), 28.5 for
# 0.04 (above bfloat16's 16 only), 58.5 for 0.02 (above float16's 45.3 too, below 100)
CLOSE = ([100, 100, 200, 200], [0.10, 0.11, 0.10, 0.11])


@pytest.mark.parametrize(
    ("target", "amplification", "warned"),
    [
        (0.105, (1, 1.1), ()),
        (0.04, (28, 29), ("bfloat16",)),
        (0.02, (58, 59), ("float16", "bfloat16")),
    ],
)
def test_the_limit_follows_the_storage(target, amplification, warned):
    """The amplification warning per storage; 0.04 and 0.02 also lie far outside what 0.10
    and 0.11 span, which the fit warning says whatever the storage (0.105 warns of nothing)."""
    for storage in ("float64", "float32", "float16", "bfloat16"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            solution = solve(*CLOSE, 200, [target], storage=storage)
        assert amplification[0] <= solution.amplification[0] < amplification[1]
        limits = [w for w in caught if "coefficients sum" in str(w.message)]
        fits = [w for w in caught if "the closest mix" in str(w.message)]
        assert len(caught) == len(limits) + len(fits)
        assert [w.category for w in limits] == ([PostHocWarning] if storage in warned else [])
        assert [w.category for w in fits] == ([PostHocWarning] if target < 0.1 else [])
        if limits:
            limit = f"{amplification_limit(storage):.3g}"
            assert f"(limit {limit} for {storage} snapshots)" in str(limits[0].message)


@pytest.mark.parametrize(
    "call",
    [
        functools.partial(solve, *CLOSE, 200, [0.04], storage="bfloat16"),
        functools.partial(coefficient_matrix, *CLOSE, 200, [0.07, 0.04], storage="bfloat16"),
        functools.partial(coefficients, *CLOSE, 200, 0.04, storage="bfloat16"),
        functools.partial(coefficients, *layout(100, 3000, [0.05, 0.0501]), 3000, 0.07),
    ],
    ids=["solve", "coefficient_matrix", "coefficients", "coefficients_float32"],
)
def test_the_warning_points_at_the_caller(call):
    """``partial`` adds no Python frame: the caller is this test function itself."""
    with pytest.warns(PostHocWarning) as caught:
        call()
    assert caught and [w.filename for w in caught] == [__file__] * len(caught)


@pytest.mark.filterwarnings("ignore::ema_core.posthoc.PostHocWarning")  # the figures alone
@pytest.mark.parametrize(
    ("count", "fits"),
    [(1, (0.495, 0.056, 1.039)), (10, (0.205, 0.009, 0.140)), (40, (0.026, 0.001, 0.026))],
)
def test_the_readme_fit_figures(count, fits):
    """README "Fit warning": targets 0.02 / 0.07 / 0.25 from 0.05 and 0.10 at 1, 10 and 40
    evenly spaced times, and one snapshot of 0.05 read as 0.20."""
    times, sigmas = layout(100, 100 * count, [0.05, 0.10])
    got = solve(times, sigmas, times[-1], [0.02, 0.07, 0.25]).fit_error
    np.testing.assert_allclose(got, fits, atol=5e-4)
    assert round(float(solve([100], [0.05], 100, [0.2]).fit_error[0]), 2) == 1.84
