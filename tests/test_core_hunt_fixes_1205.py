"""Core promises a hostile-user hunt of 2026-12-05 found broken, each pinned: ``average`` of a
hand-built state whose weight is a Python int (``check_weight`` accepts one)."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import numpy as np
import pytest

import ema_core as ema

ZEROS = ema.Config(0.9, init="zeros")


def _namespaces() -> list[Any]:
    """numpy, and array-api-strict and torch where installed."""
    names = ("array_api_strict", "torch")
    return [np, *(importlib.import_module(n) for n in names if importlib.util.find_spec(n))]


@pytest.mark.parametrize("xp", _namespaces(), ids=lambda xp: xp.__name__)
@pytest.mark.parametrize(("weight", "scale"), [(0, 1.0), (1, 1.0), (2, 0.5)])
def test_average_takes_a_python_int_weight(xp: Any, weight: int, scale: float) -> None:
    """``EMAState(0, zeros, 0)`` (an optax port) raised ``AttributeError`` in ``average``
    while ``update`` took it; an int weight reads as the same float weight."""
    shadow = {"w": xp.asarray([2.0, 4.0, 6.0], dtype=xp.float32)}
    got = ema.average(ema.EMAState(5, shadow, weight), ZEROS)["w"]
    want = ema.average(ema.EMAState(5, shadow, float(weight)), ZEROS)["w"]
    assert np.array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(got), np.array([2.0, 4.0, 6.0]) * scale)


def test_a_numpy_bfloat16_leaf_is_refused_with_what_to_do() -> None:
    """The refusal is deliberate (numpy has no bfloat16 arithmetic), but its message called
    bfloat16 neither real nor floating; it now says what the dtype is and what to pass."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    params = {"w": np.zeros(3, ml_dtypes.bfloat16)}
    shadow = {"w": np.ones(3, np.float32)}
    with pytest.raises(TypeError, match=r"params\['w'\] has dtype bfloat16;.*ml_dtypes.*float32"):
        ema.ema_update(shadow, params, 1)
    assert np.array_equal(shadow["w"], np.ones(3, np.float32))
