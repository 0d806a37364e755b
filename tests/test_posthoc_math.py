"""EDM2's post-hoc math (``ema_core.posthoc._math``, ``_coefficients``) against an independent
float64 transcription of the paper's formulas and numerical integration of the profiles; the
warning and its measured limits are in test_posthoc_warning.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ema_core.posthoc import (
    coefficient_matrix,
    coefficients,
    gamma_to_sigma_rel,
    inner_products,
    sigma_rel_to_gamma,
    solve,
)

# ---- the reference: EDM2's equations 123, 126, 151 and Algorithm 3, one scalar at a time ----

# the fit warning of a layout that does not span its target (pinned in test_posthoc_warning.py)
MISFIT = (
    "ignore:the post-hoc EMA of sigma_rel .* is inaccurate. the closest mix"
    ":ema_core.posthoc.PostHocWarning"
)


def ref_gamma(s):
    c = s**-2
    return max(r.real for r in np.roots([1.0, 7.0, 16.0 - c, 12.0 - c]) if abs(r.imag) < 1e-7)


def ref_inner(t_a, a, t_b, b):
    if t_a < t_b:
        return (a + 1) * (b + 1) * math.pow(t_a / t_b, b) / ((a + b + 1) * t_b)
    return (a + 1) * (b + 1) * math.pow(t_a / t_b, -a) / ((a + b + 1) * t_a)


def ref_coefficients(times, sigmas, t_out, s_out):
    kept = [i for i, t in enumerate(times) if 0 < t <= t_out]
    gammas = {i: ref_gamma(sigmas[i]) for i in kept}
    gram = np.empty((len(kept), len(kept)))
    rhs = np.empty(len(kept))
    for r, i in enumerate(kept):
        rhs[r] = ref_inner(times[i], gammas[i], t_out, ref_gamma(s_out))
        for c, j in enumerate(kept):
            gram[r, c] = ref_inner(times[i], gammas[i], times[j], gammas[j])
    x = np.linalg.solve(gram, rhs)
    out = np.zeros(len(times))
    out[kept] = x / x.sum()
    return out


def layout(every, last, sigmas):
    times = [t for t in range(every, last + 1, every) for _ in sigmas]
    return times, [s for _ in range(every, last + 1, every) for s in sigmas]


# ---- coefficients == the reference ----


@pytest.mark.filterwarnings(MISFIT)  # numbers, not the fit
@pytest.mark.parametrize("seed", range(12))
def test_coefficients_match_the_edm2_reference(seed):
    rng = np.random.default_rng(seed)
    tracked = [[0.05, 0.10], [0.04, 0.08, 0.16], [0.1], [0.05, 0.2]][seed % 4]
    count = int(rng.integers(1, 25))
    times, sigmas = [], []
    for s in tracked:  # distinct times per sigma_rel, 25 steps apart at least, in random order
        steps = rng.choice(np.arange(25, 4001, 25), size=count, replace=False)
        times += [int(t) for t in steps]
        sigmas += [s] * count
    order = rng.permutation(len(times))
    times, sigmas = [times[i] for i in order], [sigmas[i] for i in order]
    t_out = times[int(rng.integers(len(times)))]
    for s_out in (float(rng.uniform(0.03, 0.25)), tracked[0]):
        got = coefficients(times, sigmas, t_out, s_out)
        want = ref_coefficients(times, sigmas, t_out, s_out)
        assert got.dtype == np.float64 and got.shape == (len(times),)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(want).max())
        assert np.all(got[np.asarray(times) > t_out] == 0.0)
        assert math.isclose(got.sum(), 1.0, rel_tol=1e-12)


def test_coefficient_matrix_rows_are_single_targets():
    times, sigmas = layout(100, 1000, [0.05, 0.10])
    targets = [0.03, 0.07, 0.2]
    matrix = coefficient_matrix(times, sigmas, 700, targets)
    assert matrix.shape == (3, len(times))
    for row, s in zip(matrix, targets, strict=True):
        np.testing.assert_allclose(row, ref_coefficients(times, sigmas, 700, s), atol=1e-10)
    solution = solve(times, sigmas, 700, targets)
    np.testing.assert_array_equal(solution.amplification, np.abs(matrix).sum(axis=1))
    kept = [i for i, t in enumerate(times) if t <= 700]
    gram = np.array(
        [
            [
                ref_inner(times[i], ref_gamma(sigmas[i]), times[j], ref_gamma(sigmas[j]))
                for j in kept
            ]
            for i in kept
        ]
    )
    assert math.isclose(solution.condition, np.linalg.cond(gram), rel_tol=1e-6)


# ---- sigma_rel <-> gamma ----


def test_published_pairs():
    assert round(sigma_rel_to_gamma(0.05), 2) == 16.97
    assert round(sigma_rel_to_gamma(0.10), 2) == 6.94


@pytest.mark.parametrize(("low", "high"), [(-99.0, -2.0), (-4.0, math.log10(0.2885))])
def test_gamma_round_trips_within_an_ulp(low, high):
    # sigma_rel_to_gamma's promise: gamma_to_sigma_rel(sigma_rel_to_gamma(s)) is s to an ulp
    # (Newton alone, on the log residual, was off by up to 250 ulps for tiny s, 18 near 0.1)
    samples = 10 ** np.random.default_rng(0).uniform(low, high, 1500)
    worst = max(
        abs(gamma_to_sigma_rel(sigma_rel_to_gamma(s)) - s) / math.ulp(s) for s in samples.tolist()
    )
    assert worst <= 1.0


@pytest.mark.parametrize("s", [*np.geomspace(1e-6, 0.2886, 40).tolist(), 1e-3, 0.28867, 1e-200])
def test_gamma_round_trip_and_root(s):
    g = sigma_rel_to_gamma(s)
    assert g > 0
    assert abs(gamma_to_sigma_rel(g) - s) <= 1e-14 * s
    published = math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))) if g < 1e100 else 1 / g
    assert math.isclose(gamma_to_sigma_rel(g), published, rel_tol=1e-14)
    if s > 1e-100:  # the largest real root of the cubic, to its conditioning
        c = s**-2
        terms = [g**3, 7 * g**2, (16 - c) * g, 12 - c]
        assert abs(sum(terms)) <= 1e-12 * max(abs(v) for v in terms)
        assert math.isclose(g, ref_gamma(s), rel_tol=1e-8, abs_tol=1e-12)


@pytest.mark.parametrize("bad", [0, 0.0, -0.05, 12**-0.5, 0.2887, 0.3, math.nan, math.inf])
def test_sigma_rel_domain(bad):
    with pytest.raises(
        ValueError, match=r"sigma_rel must be in \(0, 12\*\*-0.5 = 0\.288675\), got"
    ):
        sigma_rel_to_gamma(bad)


@pytest.mark.parametrize("bad", [True, "0.05", None, np.bool_(True), [0.05]])
def test_sigma_rel_type(bad):
    with pytest.raises(TypeError, match="sigma_rel must be a real number"):
        sigma_rel_to_gamma(bad)


@pytest.mark.parametrize("bad", [0, -1.0, -0.5, math.nan, math.inf])
def test_gamma_domain(bad):
    with pytest.raises(ValueError, match="gamma must be a finite number > 0"):
        gamma_to_sigma_rel(bad)
    with pytest.raises(TypeError, match="gamma must be a real number"):
        gamma_to_sigma_rel(True)


# ---- inner products ----


def simpson(f, low, high, n=20000):
    x = np.linspace(low, high, 2 * n + 1)
    y = f(x)
    return (high - low) / (6 * n) * (y[0] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum() + y[-1])


@pytest.mark.parametrize(
    ("t_a", "a", "t_b", "b"),
    [(100, 16.97, 100, 16.97), (50, 6.94, 200, 16.97), (3000, 0.5, 1200, 6.94), (7, 2.0, 9, 0.3)],
)
def test_inner_product_is_the_integral_of_the_profiles(t_a, a, t_b, b):
    def profile(tau, t, g):
        return (g + 1) * tau**g / t ** (g + 1)

    want = simpson(lambda tau: profile(tau, t_a, a) * profile(tau, t_b, b), 0.0, min(t_a, t_b))
    assert math.isclose(float(inner_products(t_a, a, t_b, b)), want, rel_tol=1e-9)
    assert float(inner_products(t_b, b, t_a, a)) == float(inner_products(t_a, a, t_b, b))
    t, g = max((a, t_a), (b, t_b))[::-1]  # the smoother profile: each integrates to 1
    assert math.isclose(simpson(lambda tau: profile(tau, t, g), 0.0, t), 1.0, rel_tol=1e-9)


def test_inner_products_broadcast_and_validate():
    got = inner_products(np.array([[10.0], [20.0]]), 3.0, np.array([10.0, 30.0, 40.0]), 5.0)
    assert got.shape == (2, 3) and got.dtype == np.float64
    assert got[1, 2] == ref_inner(20.0, 3.0, 40.0, 5.0)
    with pytest.raises(ValueError, match="gamma_b must be finite and > 0"):
        inner_products(1.0, 1.0, 2.0, [1.0, -0.5])


# ---- sanity properties ----


def test_a_target_that_is_a_snapshot_gets_it_alone():
    times, sigmas = layout(100, 3000, [0.05, 0.10])
    for i in (0, 7, 30, len(times) - 1):
        got = coefficients(times, sigmas, times[i], sigmas[i])
        assert abs(got[i] - 1.0) <= 1e-9
        assert np.abs(np.delete(got, i)).max() <= 1e-9


def test_a_middle_target_ignores_later_snapshots():
    times, sigmas = layout(100, 3000, [0.05, 0.10])
    got = coefficients(times, sigmas, 1500, 0.07)
    early = [i for i, t in enumerate(times) if t <= 1500]
    alone = coefficients([times[i] for i in early], [sigmas[i] for i in early], 1500, 0.07)
    np.testing.assert_array_equal(got[early], alone)
    assert np.all(got[len(early) :] == 0.0) and len(early) == 30


def test_unordered_input_keeps_input_order():
    times, sigmas = layout(100, 1000, [0.05, 0.10])
    order = np.random.default_rng(1).permutation(len(times))
    got = coefficients([times[i] for i in order], [sigmas[i] for i in order], 800, 0.15)
    np.testing.assert_allclose(got, coefficients(times, sigmas, 800, 0.15)[order], atol=1e-12)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (1550, r"got 1550; the nearest snapshot times are 1500 \(below\) and 1600 \(above\)"),
        (50, r"got 50; the nearest snapshot times are none \(below\) and 100 \(above\)"),
        (3001, r"got 3001; .* 3000 \(below\) and none \(above\); the weights after the last"),
        (1500.5, r"got 1500.5; the nearest snapshot times are 1500 \(below\) and 1600"),
    ],
)
def test_target_time_must_be_a_snapshot_time(target, message):
    times, sigmas = layout(100, 3000, [0.05, 0.10])
    with pytest.raises(ValueError, match="target_time must be a snapshot time, " + message):
        coefficients(times, sigmas, target, 0.07)


@pytest.mark.parametrize(
    ("times", "sigmas", "error", "message"),
    [
        ([], [], ValueError, r"times must be a non-empty 1-d sequence, got shape \(0,\)"),
        ([100, 200], [0.05], ValueError, "same length, got 2 and 1"),
        ([100, math.nan], [0.05, 0.1], ValueError, r"times\[1\] must be finite, got"),
        ([100, 200], [0.05, math.inf], ValueError, r"sigma_rels\[1\] must be finite"),
        ([100, 0], [0.05, 0.1], ValueError, r"times\[1\] must be > 0 \(a step\), got 0"),
        (
            [100, 200],
            [0.05, 0.3],
            ValueError,
            r"sigma_rels\[1\] must be in \(0, 12\*\*-0.5 = 0.288675\)",
        ),
        ([100, 100, 100], [0.05, 0.1, 0.05], ValueError, "snapshots 0 and 2 are both \\(time 100"),
        ([100, True], [0.05, 0.1], TypeError, "times must hold numbers, not bools"),
        ("100", [0.05], TypeError, "times must be a sequence of numbers, got str"),
        ([100, 200], ["0.05", "0.1"], TypeError, "sigma_rels must hold real numbers"),
    ],
)
def test_bad_snapshots(times, sigmas, error, message):
    with pytest.raises(error, match=message):
        coefficients(times, sigmas, 100, 0.07)


def test_bad_targets():
    with pytest.raises(
        ValueError, match=r"target_sigma_rel must be in \(0, 12\*\*-0.5 = 0.288675\), got 0.3"
    ):
        coefficients([100], [0.05], 100, 0.3)
    with pytest.raises(TypeError, match="target_time must be a real number, got str"):
        coefficients([100], [0.05], "100", 0.05)
    with pytest.raises(ValueError, match=r"target_sigma_rels\[1\] must be in"):
        coefficient_matrix([100], [0.05], 100, [0.05, 0.0])


@pytest.mark.parametrize("d", [1e-13, 1e-10, 3e-8])
def test_a_singular_gram_matrix_is_refused(d):
    """Profiles equal to float64 precision: LU either fails or returns rounding noise."""
    with pytest.raises(
        ValueError,
        match=r"singular to float64 precision \(cond .*\): \(time 100, "
        r"sigma_rel 0.05\) and \(time 100, sigma_rel 0.05000.*\) have the same",
    ):
        coefficients([100, 200, 100], [0.05, 0.1, 0.05 * (1 + d)], 200, 0.07)


@pytest.mark.filterwarnings(MISFIT)  # 0.02 and 0.25 lie outside what the layout spans
def test_fit_error_matches_a_numerical_integration_of_the_profiles():
    """``Solution.fit_error``, computed from the inner products, against the relative L2
    distance of the profiles themselves (``(g + 1) tau**g / t**(g + 1)`` on (0, t]),
    integrated on a fine grid."""
    times, sigmas = [100, 100, 200, 200, 300, 300], [0.05, 0.10] * 3
    targets = [0.10, 0.07, 0.02, 0.25]
    solution = solve(times, sigmas, 300, targets)
    tau = np.linspace(0.0, 300.0, 600_001)[1:]

    def profile(t, s):
        g = ref_gamma(s)
        return np.where(tau <= t, (g + 1) * (tau / t) ** g / t, 0.0)

    for j, s in enumerate(targets):
        pieces = zip(solution.coefficients[j], times, sigmas, strict=True)
        mix = sum(x * profile(t, si) for x, t, si in pieces)
        target = profile(300, s)
        want = math.sqrt(np.trapezoid((mix - target) ** 2, tau) / np.trapezoid(target**2, tau))
        assert solution.fit_error[j] == pytest.approx(want, rel=2e-3, abs=1e-6), s
    assert solution.fit_error[0] < 1e-6  # a tracked target: its own snapshot
    assert solution.fit_error[2] > 0.25 and solution.fit_error[3] > 0.25
