"""Bad input to the test kit itself: a TypeError or ValueError naming the argument (never an
AttributeError or IndexError from deep inside), or an AssertionError naming what the EMA under
test returned wrong."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import testing
from tests.test_testing_kit import functional

CFG = ema.Config(schedule=0.9)
TRAJ = testing.Trajectory({"w": np.zeros(2)}, [{"w": np.ones(2)}, {"w": np.full(2, 2.0)}])


ok = functional(CFG)  # ema-core itself: a correct EMA


def _steps(*nests: Any) -> testing.Trajectory:
    return testing.Trajectory({"w": np.zeros(2)}, list(nests))


BAD_CALLS: dict[str, tuple[Callable[[], Any], type[Exception], str]] = {
    "make_ema not callable": (lambda: testing.assert_matches(3, CFG, TRAJ), TypeError, "make_ema"),
    "make_ema returns None": (
        lambda: testing.assert_matches(lambda init: None, CFG, TRAJ),
        TypeError,
        r"make_ema\(trajectory.init\) must return a callable",
    ),
    "config a float": (lambda: testing.assert_matches(ok, 0.9, TRAJ), TypeError, "config"),
    "trajectory a dict": (
        lambda: testing.reference(CFG, {"init": 1}),
        TypeError,
        "trajectory must be",
    ),
    "steps a dict": (
        lambda: testing.reference(CFG, testing.Trajectory({"w": np.zeros(2)}, {"w": 1})),
        TypeError,
        "trajectory.steps must be",
    ),
    "steps empty": (lambda: testing.assert_matches(ok, CFG, _steps()), ValueError, "no steps"),
    "init without arrays": (
        lambda: testing.assert_matches(ok, CFG, testing.Trajectory({}, [{}])),
        ValueError,
        "no array",
    ),
    "a Python float leaf": (
        lambda: testing.reference(CFG, testing.Trajectory({"w": 0.0}, [{"w": 1.0}])),
        TypeError,
        r"trajectory.init\['w'\] must be an array, got float",
    ),
    "a step with an extra key": (
        lambda: testing.reference(CFG, _steps({"w": np.ones(2), "x": np.ones(2)})),
        ValueError,
        r"trajectory.steps\[0\]\['x'\]: unexpected key",
    ),
    "a step of another shape": (
        lambda: testing.reference(CFG, _steps({"w": np.ones(2)}, {"w": np.ones(3)})),
        ValueError,
        r"trajectory.steps\[1\]\['w'\] has shape \(3,\)",
    ),
    "a step of another kind": (
        lambda: testing.reference(CFG, _steps({"w": np.ones(2, np.int64)})),
        ValueError,
        r"trajectory.steps\[0\]\['w'\] has dtype int64",
    ),
    "non_float error": (
        lambda: testing.reference(
            ema.Config(non_float="error"),
            testing.Trajectory({"i": np.arange(2)}, [{"i": np.arange(2)}]),
        ),
        TypeError,
        r"trajectory.init\['i'\] has non-floating dtype int64 and config.non_float='error'",
    ),
    "rtol a str": (lambda: testing.assert_matches(ok, CFG, TRAJ, rtol="1e-3"), TypeError, "rtol"),
    "rtol negative": (lambda: testing.assert_matches(ok, CFG, TRAJ, rtol=-1.0), ValueError, "rtol"),
    "atol nan": (lambda: testing.assert_matches(ok, CFG, TRAJ, atol=math.nan), ValueError, "atol"),
    "atol huge": (lambda: testing.assert_matches(ok, CFG, TRAJ, atol=10**400), ValueError, "atol"),
    "step_fn not callable": (lambda: testing.assert_ema_properties(3, np), TypeError, "step_fn"),
    "xp not a namespace": (
        lambda: testing.assert_ema_properties(lambda s, p, d: p, "numpy"),
        TypeError,
        "xp must be an Array API namespace",
    ),
    "dtype numpy lacks": (
        lambda: testing.assert_ema_properties(lambda s, p, d: p, np, dtype="bfloat16"),
        ValueError,
        "dtype has 'bfloat16', which",
    ),
    "dtype not a str": (
        lambda: testing.assert_ema_properties(lambda s, p, d: p, np, dtype=np.float32),
        TypeError,
        "dtype must hold dtype names",
    ),
    "max_examples 0": (
        lambda: testing.assert_ema_properties(lambda s, p, d: p, np, max_examples=0),
        ValueError,
        "max_examples",
    ),
    "max_examples True": (
        lambda: testing.assert_ema_properties(lambda s, p, d: p, np, max_examples=True),
        TypeError,
        "max_examples",
    ),
    "dtypes a str": (lambda: testing.nests(np, dtypes="float32"), TypeError, "dtypes must be"),
    "dtypes unknown": (lambda: testing.nests(np, dtypes=("float8",)), ValueError, "'float8'"),
    "max_leaves 0": (lambda: testing.nests(np, max_leaves=0), ValueError, "max_leaves"),
    "int_buffers 1": (lambda: testing.nests(np, int_buffers=1), TypeError, "int_buffers"),
    "length 0": (lambda: testing.trajectories(np, length=0), ValueError, "length"),
    "nests of a str": (lambda: testing.nests("torch"), TypeError, "xp must be"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_arguments_are_named(name: str) -> None:
    call, error, match = BAD_CALLS[name]
    with pytest.raises(error, match=match):
        call()


RETURNS: dict[str, tuple[Any, str]] = {
    "None": (None, r"step t=1: the EMA's step\(params, 1\) returned None"),
    "a str leaf": ({"w": "x"}, r"step t=1: the EMA's average has str at params\['w'\]"),
    "a list for a dict": ([np.ones(2)], "expected a dict, got list"),
    "a missing key": ({"v": np.ones(2)}, r"\['w'\]: key is missing"),
    "a wrong shape": ({"w": np.ones(3)}, r"step t=1, leaf params\['w'\]: shape \(3,\)"),
    "strings in an array": ({"w": np.array(["a", "b"])}, r"dtype <U1 at params\['w'\]"),
}


@pytest.mark.parametrize("name", list(RETURNS))
def test_a_wrong_return_is_an_assertion_naming_it(name: str) -> None:
    value, match = RETURNS[name]
    with pytest.raises(AssertionError, match=match):
        testing.assert_matches(lambda init: lambda params, t: value, CFG, TRAJ)


def test_a_generator_of_steps_is_read_once() -> None:
    """An iterator of steps is materialised once (it was read empty by the second pass)."""
    steps = ({"w": np.full(2, float(k))} for k in range(4))
    testing.assert_matches(ok, CFG, testing.Trajectory({"w": np.zeros(2)}, steps))
    with pytest.raises(AssertionError, match=r"step t=1, leaf params\['w'\]"):
        steps = ({"w": np.full(2, float(k))} for k in range(4))
        testing.assert_matches(
            lambda init: lambda p, t: {"w": p["w"] + 1},
            CFG,
            testing.Trajectory({"w": np.zeros(2)}, steps),
        )


def test_a_raising_ema_propagates_its_own_error() -> None:
    def make(init: Any) -> Callable[[Any, int], Any]:
        def step(params: Any, t: int) -> Any:
            raise RuntimeError("the EMA under test broke")

        return step

    with pytest.raises(RuntimeError, match="the EMA under test broke"):
        testing.assert_matches(make, CFG, TRAJ)


def test_a_step_fn_returning_none_is_named() -> None:
    """An in-place step that forgets to return its shadow: a TypeError saying so, not a
    hypothesis ExceptionGroup of raw errors."""

    def in_place(s: Any, p: Any, d: float) -> None:
        s *= d
        s += (1 - d) * p

    with pytest.raises(TypeError, match="returns the shadow it updated"):
        testing.assert_ema_properties(in_place, np, max_examples=3)
