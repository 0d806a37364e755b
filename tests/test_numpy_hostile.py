"""The numpy backend against hostile inputs: non-finite params and shadows under numpy's
floating-point error settings. An update never stops half way with some leaves (or some
blocks of one leaf) written: its values are IEEE's, the same as the generic core's, whatever
``np.seterr`` or the warning filters say. Every test runs with and without numba."""

from __future__ import annotations

import warnings
from typing import Any

import array_api_compat.numpy as xp
import numpy as np
import pytest

import ema_core
from ema_core.backends import generic

pytestmark = pytest.mark.usefixtures("host_kernels")

DTYPES = ["float16", "float32", "float64", "complex64", "longdouble"]


def _hostile(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """A shadow and params holding NaN, both infinities and values whose difference overflows."""
    big = float(np.finfo(dtype).max)
    s = np.array([1.0, np.nan, np.inf, -np.inf, 0.0, np.inf, big, -big] * 3, dtype)
    p = np.array([np.nan, 1.0, 1.0, np.inf, np.inf, np.inf, -big, big] * 3, dtype)
    return s, p


def _reference(shadows: list[np.ndarray], params: list[np.ndarray], decay: float) -> list[Any]:
    with np.errstate(all="ignore"):
        return generic.update_leaves(
            xp, [s.copy() for s in shadows], params, ["float"] * len(params), decay,
            1.0 - decay, non_float="copy", writes=[True] * len(params),
        )  # fmt: skip


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and values, NaN where NaN and zeros and NaN of the same sign
    (bytes are not compared: a long double's padding bytes are arbitrary)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    parts = [(a, b)] if a.dtype.kind == "f" else [(a.real, b.real), (a.imag, b.imag)]
    return all(
        np.array_equal(x, y, equal_nan=True) and np.array_equal(np.signbit(x), np.signbit(y))
        for x, y in parts
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", [0.3, 0.7])
@pytest.mark.parametrize("mode", ["raise", "warn-as-error"])
def test_non_finite_values_never_stop_an_update_half_way(
    dtype: str, decay: float, mode: str
) -> None:
    """A finite leaf first, then a non-finite one: under np.seterr(all='raise') (or warnings
    turned into errors) the second leaf raised after the first was written."""
    first_s, first_p = np.zeros(10), np.ones(10)
    s, p = _hostile(dtype)
    shadows, params = [first_s, s], [first_p, p]
    expected = _reference(shadows, params, decay)
    with np.errstate(all="raise" if mode == "raise" else "warn"), warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ema_core.ema_update(shadows, params, 0, decay=decay)
    assert out[0] is first_s and out[1] is s  # in place
    assert _same(first_s, expected[0]) and _same(s, expected[1])


def test_copy_true_under_raise_returns_ieee_values() -> None:
    s, p = _hostile("float32")
    before = s.copy()
    with np.errstate(all="raise"):
        out = ema_core.ema_update(s, p, 0, decay=0.5, copy=True)
    assert _same(s, before)
    assert _same(out, _reference([s], [p], 0.5)[0])


def test_the_callers_error_settings_are_kept() -> None:
    s, p = _hostile("float64")
    with np.errstate(all="raise"):
        ema_core.ema_update(s, p, 0, decay=0.5)
        assert np.geterr()["invalid"] == "raise"
        with pytest.raises(FloatingPointError):
            np.subtract(np.inf, np.inf)


def test_worker_threads_keep_ieee_values_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leaf large enough to be shared over the engine's threads (2M elements and more): a
    worker thread does not see the caller's np.errstate, so its warning (an error here) cut
    the update short with part of the shadow written."""
    monkeypatch.setenv("EMA_CORE_NUMPY_THREADS", "2")
    n = 3 * 2**20
    s, p = np.zeros(n, np.float32), np.ones(n, np.float32)
    s[-2:], p[-2:] = np.inf, [np.inf, np.nan]
    expected = _reference([s], [p], 0.5)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ema_core.ema_update(s, p, 0, decay=0.5)
    assert _same(s, expected)
