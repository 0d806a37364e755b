"""Test-kit and accelerate promises a hostile-user hunt of 2026-12-05 found broken, each pinned:
``assert_ema_properties`` passed EMAs wrong at every decay inside (0, 1) (applied twice, the
decay rounded to bfloat16, never averaging, ``d`` and ``1 - d`` swapped), the kit took steps of
another kind of dtype than ``init`` (complex after float, int after bool, uint after int),
``schedules()`` never drew four of the schedules, and accelerate's ``register`` took a name
whose file cannot be written (``save_state`` failed with a raw ``OSError``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings

import ema_core as ema
from ema_core import schedules, testing

Step = Callable[[Any, Any, float], Any]


def _right(s: Any, p: Any, d: float) -> Any:
    return ema.ema_update(s.copy(), p, 1, decay=d)


def _twice(s: Any, p: Any, d: float) -> Any:  # a hook registered twice: decay d**2
    return _right(_right(s, p, d), p, d)


def _decay_in_bf16(s: Any, p: Any, d: float) -> Any:  # the decay rounded to bfloat16 first
    bits = np.array([d], np.float32).view(np.uint32)
    d16 = float(((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).view(np.float32)[0])
    return _right(s, p, d16)


def _never_averages(s: Any, p: Any, d: float) -> Any:
    return s.copy() if d == 1.0 else p.copy()


def _swapped(s: Any, p: Any, d: float) -> Any:  # d and 1 - d swapped, but exact at both ends
    return _right(s, p, d if d in (0.0, 1.0) else 1.0 - d)


@pytest.mark.parametrize("wrong", [_twice, _decay_in_bf16, _never_averages, _swapped])
def test_properties_fail_an_ema_wrong_inside_0_1(wrong: Step) -> None:
    with pytest.raises(AssertionError, match=r"one update at decay=.* must give s \+ \(1 - decay"):
        testing.assert_ema_properties(wrong, np, max_examples=30)


def test_properties_pass_the_right_forms() -> None:
    torch = pytest.importorskip("torch")
    testing.assert_ema_properties(_right, np, max_examples=30)
    for dtype in ("float32", "float16", "bfloat16"):
        testing.assert_ema_properties(
            lambda s, p, d: s.lerp(p, 1.0 - d), torch, dtype=dtype, max_examples=30
        )
        testing.assert_ema_properties(
            lambda s, p, d: d * s + (1.0 - d) * p, torch, dtype=dtype, max_examples=30
        )


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_properties_take_complex_leaves(dtype: str) -> None:
    testing.assert_ema_properties(_right, np, dtype=dtype, max_examples=30)  # no ComplexWarning
    with pytest.raises(AssertionError, match=r"one update at decay="):
        testing.assert_ema_properties(_twice, np, dtype=dtype, max_examples=30)


def test_textbook_form_fails_at_decay_0_as_the_readme_says() -> None:
    with pytest.raises(AssertionError, match=r"decay=0.0 must copy the params, exactly"):
        testing.assert_ema_properties(lambda s, p, d: s + (1 - d) * (p - s), np, max_examples=40)


def test_an_integer_leaf_kept_inside_0_1_fails() -> None:
    def keeps(s: Any, p: Any, d: float) -> Any:
        return p.copy() if d in (0.0, 1.0) else s.copy()

    with pytest.raises(AssertionError, match=r"int32 leaves are copied at every decay"):
        testing.assert_ema_properties(keeps, np, dtype="int32", max_examples=30)


def _ran() -> Callable[[Any], Callable[[Any, int], Any]]:
    def make(init: Any) -> Callable[[Any, int], Any]:
        raise AssertionError("make_ema ran although the trajectory should be refused")

    return make


@pytest.mark.parametrize(
    ("first", "later"),
    [(np.float64, np.complex128), (np.bool_, np.int64), (np.int64, np.uint8)],
)
def test_steps_of_another_kind_are_refused(first: Any, later: Any) -> None:
    trajectory = testing.Trajectory({"w": np.ones(2, first)}, [{"w": np.ones(2, later)}])
    with pytest.raises(ValueError, match=r"steps\[0\]\['w'\] has dtype .*keeps its kind"):
        testing.assert_matches(_ran(), ema.Config(0.9), trajectory)


def test_another_width_of_the_same_kind_is_taken() -> None:
    trajectory = testing.Trajectory(
        {"n": np.array([1, 2], np.int64), "w": np.ones(2)},
        [{"n": np.array([3, 4], np.int32), "w": np.ones(2)}],
    )
    testing.assert_matches(
        lambda init: lambda params, t: {"n": params["n"].astype(np.int64), "w": params["w"]},
        ema.Config(0.9),
        trajectory,
    )


def test_schedules_draws_every_kind_of_schedule() -> None:
    seen: set[str] = set()

    @settings(max_examples=400, database=None, deadline=None, derandomize=True)
    @given(testing.schedules())
    def draw(schedule: schedules.Schedule) -> None:
        assert all(0.0 <= schedule(t) <= 1.0 for t in (1, 2, 7))
        seen.add(type(schedule).__name__)

    draw()
    wanted = {"Constant", "NumUpdates", "Warmup", "PowerFunction", "Annealing"}
    wanted |= {"Momentum", "RampedHalfLife", "InFloat32", "Gated"}
    assert wanted <= seen, sorted(wanted - seen)


@pytest.mark.usefixtures("fresh_accelerate")
def test_accelerate_name_too_long_for_its_file_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    accelerate = pytest.importorskip("accelerate")
    from ema_core.integrations.accelerate import register
    from ema_core.torch import EMA

    accelerator = accelerate.Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    averager = EMA(model, decay=0.9)
    with pytest.raises(ValueError, match=r"name must be at most 243 characters.*one of 244"):
        register(accelerator, averager, name="e" * 244)
    handle = register(accelerator, averager, name="e" * 243)  # the longest that fits
    averager.update()
    accelerator.save_state(str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / ("e" * 243 + ".safetensors")).is_file()
    handle.remove()
