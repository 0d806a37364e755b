"""The kit checks the dtype an EMA returns for each leaf against the contract: a floating
leaf's shadow dtype (``Config.dtype``), float32 for an ``init="zeros"`` read over a half
shadow, the param's own dtype for an integer or bool leaf (copied or frozen). A wrong dtype
fails naming the step, the path, the returned and the expected dtypes, after every value
matched; ``returned_dtype="kind"`` accepts another width of the same kind (a float64 reference
loop), never a float copy of an integer buffer. Each failing case passed before its fix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import schedules, testing

COPY = ema.Config(schedule=schedules.warmup(0.99), init="copy")
Cast = Callable[[str, Any], Any]


def core_ema(config: ema.Config, cast: Cast = lambda name, x: x) -> Callable[[Any], Any]:
    """ema-core's functional API as the EMA under test, its returned leaves passed through
    ``cast(name, leaf)``."""

    def make(init: Any) -> Callable[[Any, int], Any]:
        box = {"state": ema.init(init, config)}

        def step(params: Any, t: int) -> Any:
            box["state"] = ema.update(box["state"], params, config)
            return {k: cast(k, v) for k, v in ema.average(box["state"], config).items()}

        return step

    return make


def _trajectory(dtype: Any = np.float32, steps: int = 6) -> testing.Trajectory:
    rng = np.random.default_rng(11)
    nests = [
        {"w": rng.standard_normal(4).astype(dtype), "n": np.array([3 * k + 1, 7], np.int64)}
        for k in range(steps + 1)
    ]
    return testing.Trajectory(nests[0], nests[1:])


def test_ema_core_itself_passes_the_dtype_check() -> None:
    testing.assert_matches(core_ema(COPY), COPY, _trajectory())
    frozen = ema.Config(schedule=0.9, non_float="freeze")
    testing.assert_matches(core_ema(frozen), frozen, _trajectory())


def test_a_float_copy_of_an_integer_buffer_with_equal_values_fails() -> None:
    floats = core_ema(COPY, lambda name, x: x.astype(np.float64) if name == "n" else x)
    message = (
        r"the EMA returned dtype float64 at step t=1, leaf params\['n'\]; ema-core's contract "
        r"gives int64 there, and the dtype must match \(returned_dtype='contract'"
    )
    with pytest.raises(AssertionError, match=message):
        testing.assert_matches(floats, COPY, _trajectory())
    with pytest.raises(AssertionError, match=r"leaf params\['n'\].*the kind of dtype must"):
        testing.assert_matches(floats, COPY, _trajectory(), returned_dtype="kind")


def test_another_width_fails_unless_the_user_states_it() -> None:
    wide = core_ema(COPY, lambda name, x: x.astype(np.float64) if name == "w" else x)
    with pytest.raises(AssertionError, match=r"dtype float64 at step t=1, leaf params\['w'\]"):
        testing.assert_matches(wide, COPY, _trajectory())
    testing.assert_matches(wide, COPY, _trajectory(), returned_dtype="kind")
    in_float64 = ema.Config(schedule=schedules.warmup(0.99), init="copy", dtype="float64")
    testing.assert_matches(core_ema(in_float64), in_float64, _trajectory())  # stated
    with pytest.raises(AssertionError, match=r"dtype float64 at step t=1, .* gives float32"):
        testing.assert_matches(core_ema(in_float64), COPY, _trajectory())


def test_a_zeros_read_over_half_shadows_is_float32() -> None:
    config = ema.Config(schedule=0.9, init="zeros", dtype="same")
    testing.assert_matches(core_ema(config), config, _trajectory(np.float16))
    half = core_ema(config, lambda name, x: x.astype(np.float16) if name == "w" else x)
    with pytest.raises(AssertionError, match=r"float16 at step t=1, .* gives float32 there"):
        testing.assert_matches(half, config, _trajectory(np.float16))


def test_a_wrong_value_is_reported_before_a_wrong_dtype() -> None:
    def cast(name: str, x: Any) -> Any:
        return x.astype(np.float64) if name == "n" else x + 1.0

    with pytest.raises(AssertionError, match=r"differs from ema-core first at step t=1, leaf"):
        testing.assert_matches(core_ema(COPY, cast), COPY, _trajectory())


def test_torch_half_params_under_the_default_dtype_return_float32() -> None:
    torch = pytest.importorskip("torch")
    config = ema.Config(schedule=0.9)
    rng = np.random.default_rng(2)
    rows = [torch.from_numpy(rng.standard_normal(3).astype(np.float32)) for _ in range(5)]
    traj = testing.Trajectory({"w": rows[0].bfloat16()}, [{"w": r.bfloat16()} for r in rows[1:]])
    testing.assert_matches(core_ema(config), config, traj)
    back = core_ema(config, lambda name, x: x.bfloat16())
    with pytest.raises(AssertionError, match=r"returned dtype bfloat16 .* gives float32 there"):
        testing.assert_matches(back, config, traj, rtol=1e-2)


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        (None, TypeError, "returned_dtype must be a str, got NoneType None"),
        ("exact", ValueError, r"returned_dtype must be one of \['contract', 'kind'\], got 'ex"),
    ],
)
def test_a_bad_returned_dtype_is_refused_by_name(value: Any, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        testing.assert_matches(core_ema(COPY), COPY, _trajectory(), returned_dtype=value)
    with pytest.raises(error, match=words):
        testing.assert_ema_properties(lambda s, p, d: p, np, returned_dtype=value)


def test_properties_check_the_returned_dtype() -> None:
    def wide(s: Any, p: Any, d: float) -> Any:
        return (d * s + (1 - d) * p).astype(np.float64)

    with pytest.raises(AssertionError, match=r"returned dtype float64 at decay=.* gives float32"):
        testing.assert_ema_properties(wide, np, max_examples=5)
    testing.assert_ema_properties(wide, np, max_examples=5, returned_dtype="kind")

    def averages_ints(s: Any, p: Any, d: float) -> Any:
        return p.astype(np.float64)  # the right values, as floats

    with pytest.raises(AssertionError, match=r"returned dtype float64 .* gives int32 there"):
        testing.assert_ema_properties(averages_ints, np, dtype="int32", max_examples=5)
