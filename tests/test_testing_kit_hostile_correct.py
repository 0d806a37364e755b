"""Correct EMAs the test kit must pass (no false failure): ema-core's own under every read
correction, nests whose key order changes, NaN and infinite params, complex and 0-d leaves,
None and integer buffers on every backend, half shadows over long runs, and the textbook
``d * s + (1 - d) * p`` step in the property checks."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import ema_core as ema
from ema_core import schedules, testing
from tests.conftest import Backend
from tests.test_testing_kit import functional


def _walk(steps: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.standard_normal((steps + 1, width)), axis=0).astype(np.float32)


@pytest.mark.parametrize("correction", ["exact", "power", "none"])
def test_every_read_correction_passes(correction: str) -> None:
    """The oracle read ``shadow / (1 - prod d)`` whatever ``correction`` said."""
    cfg = ema.Config(schedule=schedules.warmup(0.99), init="zeros", correction=correction)
    nests = [{"w": row} for row in _walk(8, 3)]
    testing.assert_matches(functional(cfg), cfg, testing.Trajectory(nests[0], nests[1:]))


def test_steps_with_another_key_order_pass() -> None:
    """The oracle paired a step's leaves with ``init``'s by position, not by key."""
    cfg = ema.Config(schedule=0.9)
    rows = _walk(5, 4)
    nests = [
        {"a": r[:2], "b": r[2:]} if k % 2 else {"b": r[2:], "a": r[:2]} for k, r in enumerate(rows)
    ]
    testing.assert_matches(functional(cfg), cfg, testing.Trajectory(nests[0], nests[1:]))


def test_nan_and_infinite_params_pass() -> None:
    """NaN where ema-core has NaN and equal infinities match (they failed, and NaN params made
    every tolerance 0); a skipped step (decay 1) keeps the shadow past an infinite param."""
    cfg = ema.Config(schedule=0.9, interval=2)
    steps = [[np.inf, 1.0], [np.nan, 2.0], [3.0, np.inf], [4.0, 5.0]]
    traj = testing.Trajectory({"w": np.zeros(2)}, [{"w": np.array(s)} for s in steps])
    testing.assert_matches(functional(cfg), cfg, traj)


def test_complex_leaves_pass() -> None:
    cfg = ema.Config(schedule=0.8)
    rows = _walk(6, 2)
    nests = [{"z": (r[0] + 1j * r[1]) * np.ones(2, np.complex64)} for r in rows]
    testing.assert_matches(functional(cfg), cfg, testing.Trajectory(nests[0], nests[1:]))


@pytest.mark.parametrize(
    "cfg",
    [
        ema.Config(schedule=schedules.warmup(0.999), init="copy", interval=3),
        ema.Config(schedule=0.99, init="zeros", correction="power"),
        ema.Config(schedule=0.9, non_float="freeze"),
    ],
    ids=["copy-interval", "zeros-power", "freeze"],
)
def test_none_0d_and_int_buffers_pass_on_every_backend(backend: Backend, cfg: ema.Config) -> None:
    rows = _walk(6, 3)
    nests = [
        {
            "w": backend.asarray(r[:2]),
            "s": backend.asarray(r[2]),
            "n": None,
            "i": backend.asarray(np.array([k, 2 * k], np.int32)),
        }
        for k, r in enumerate(rows)
    ]
    testing.assert_matches(functional(cfg), cfg, testing.Trajectory(nests[0], nests[1:]))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_shadow_passes_over_a_long_run(dtype: str) -> None:
    """Under ``dtype="same"`` ema-core's own half shadow stalls as any half EMA does: the oracle
    rounds to it after every update (its float64 loop drifted past the tolerance)."""
    torch = pytest.importorskip("torch")
    cfg = ema.Config(schedule=0.99, dtype="same")
    rng = np.random.default_rng(0)
    rows = 1 + np.linspace(0, 1, 301)[:, None] + 0.01 * rng.standard_normal((301, 4))
    nests = [{"w": torch.from_numpy(r.astype(np.float32)).to(getattr(torch, dtype))} for r in rows]
    testing.assert_matches(functional(cfg), cfg, testing.Trajectory(nests[0], nests[1:]))
    with pytest.raises(AssertionError, match="differs from ema-core first"):  # a float32 shadow
        testing.assert_matches(
            functional(cfg),
            dataclasses.replace(cfg, dtype=None),
            testing.Trajectory(nests[0], nests[1:]),
        )


def _textbook(s: Any, p: Any, d: float) -> Any:
    return d * s + (1 - d) * p


def test_properties_pass_the_textbook_step() -> None:
    """``d * s + (1 - d) * p`` rounds a constant by an ulp: the interior checks were exact."""
    testing.assert_ema_properties(_textbook, np, max_examples=25)


def test_properties_take_a_framework_module_and_catch_in_place_defects() -> None:
    """``torch`` itself is a namespace; an in-place step is read after it ran (the snapshot was
    a view of the shadow, so a step that overwrote it at decay 1 passed)."""
    torch = pytest.importorskip("torch")
    testing.assert_ema_properties(lambda s, p, d: s.lerp_(p, 1 - d), torch, max_examples=15)
    testing.assert_ema_properties(_textbook, torch, dtype="bfloat16", max_examples=15)

    def overwrites(s: Any, p: Any, d: float) -> Any:
        return s.copy_(p) if d == 1.0 else s.lerp_(p, 1 - d)

    with pytest.raises(AssertionError, match=r"decay=1\.0 must leave the shadow unchanged"):
        testing.assert_ema_properties(overwrites, torch, max_examples=15)

    def writes_params(s: Any, p: Any, d: float) -> Any:
        out = torch.lerp(s, p, 1 - d)
        p.copy_(out)
        return out

    with pytest.raises(AssertionError, match="step_fn wrote into params"):
        testing.assert_ema_properties(writes_params, torch, max_examples=15)


def test_properties_pass_optax() -> None:
    optax = pytest.importorskip("optax")
    jnp = pytest.importorskip("jax.numpy")

    def step(s: Any, p: Any, d: float) -> Any:
        tx = optax.ema(d, debias=False)
        _, state = tx.update(p, tx.init(p)._replace(ema=s))
        return state.ema

    testing.assert_ema_properties(step, jnp, max_examples=15)


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int8", "float16"])
def test_strategies_make_the_dtypes_asked(dtype: str) -> None:
    """Integer dtypes came out as the default int (int8) or from casting negative floats
    (uint8, a RuntimeWarning)."""

    @settings(max_examples=5, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(nest=testing.nests(np, dtypes=(dtype,)))
    def check(nest: Any) -> None:
        assert {x.dtype for x in ema._tree.flatten(nest)[0]} == {np.dtype(dtype)}

    check()
