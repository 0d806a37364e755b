"""README claims of "Test your own EMA" that no other test asserted. Each test names its claim;
the comment quotes it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import testing

CONFIG = ema.Config(0.9)  # a constant decay, the shadow starts as the params


def _off_by(offset: float) -> Callable[[Any], Callable[[Any, int], Any]]:
    """A textbook float64 EMA whose returned average is off by ``offset`` (absolute)."""

    def make(init: Any) -> Callable[[Any, int], Any]:
        box = {"w": init["w"].copy()}

        def step(params: Any, t: int) -> Any:
            box["w"] = box["w"] + 0.1 * (params["w"] - box["w"])
            return {"w": box["w"] + offset}

        return step

    return make


def _trajectory() -> testing.Trajectory:
    rng = np.random.default_rng(0)
    nests = [{"w": 1000.0 + rng.standard_normal(4)} for _ in range(6)]
    return testing.Trajectory(nests[0], nests[1:])


def test_atol_given_alone_means_rtol_zero() -> None:
    # "Given alone, `atol` means `rtol=0`": float64's default rtol (1e-10 at a scale of ~1000,
    # 1e-7) is not added, so an error of 1.05e-6 fails atol=1e-6 and passes atol=2e-6
    testing.assert_matches(_off_by(1.05e-6), CONFIG, _trajectory(), atol=2e-6)
    with pytest.raises(AssertionError, match="first at step t=1"):
        testing.assert_matches(_off_by(1.05e-6), CONFIG, _trajectory(), atol=1e-6)
    testing.assert_matches(_off_by(1.05e-6), CONFIG, _trajectory(), atol=1e-6, rtol=1e-10)


def test_rtol_given_alone_means_atol_zero_and_scales_by_the_leaf() -> None:
    # "`atol + rtol * scale`, where `scale` is the largest finite |value| of that leaf over the
    # trajectory"; "`rtol` means `atol=0`"
    scale = max(float(np.max(np.abs(n["w"]))) for n in [_trajectory().init, *_trajectory().steps])
    testing.assert_matches(_off_by(0.9e-6 * scale), CONFIG, _trajectory(), rtol=1e-6)
    with pytest.raises(AssertionError, match="first at step t=1"):
        testing.assert_matches(_off_by(1.1e-6 * scale), CONFIG, _trajectory(), rtol=1e-6)


def test_a_trajectory_may_be_a_plain_tuple_with_an_iterator_of_steps() -> None:
    # "A trajectory may be a plain `(init, steps)` tuple, and `steps` any sequence or iterator."
    traj = _trajectory()
    testing.assert_matches(_off_by(0.0), CONFIG, (traj.init, iter(list(traj.steps))))
    with pytest.raises(AssertionError, match="first at step t=1"):
        testing.assert_matches(_off_by(1.0), CONFIG, (traj.init, tuple(traj.steps)))
