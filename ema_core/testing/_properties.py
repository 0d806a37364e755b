"""``assert_ema_properties``: the EMA invariants as a hypothesis check of any step function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ema_core._types import Array, Namespace
from ema_core.testing._convert import to_numpy

StepFn = Callable[[Array, Array, float], Array]


def _arrays(xp: Namespace, dtype: str) -> st.SearchStrategy[tuple[Any, Any, np.ndarray]]:
    def make(args: tuple[tuple[int, ...], int]) -> tuple[Any, Any, np.ndarray]:
        shape, seed = args
        rng = np.random.default_rng(seed)
        host = (rng.standard_normal((2, *shape)) * 10).astype(np.float32)
        a, b = (xp.astype(xp.asarray(h), getattr(xp, dtype)) for h in host)
        return a, b, host

    shapes = st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple)
    return st.tuples(shapes, st.integers(0, 2**20)).map(make)


def assert_ema_properties(
    step_fn: StepFn, xp: Namespace, /, *, dtype: str = "float32", max_examples: int = 40
) -> None:
    """Check the invariants every EMA step must keep, on arrays of namespace ``xp``.

    ``step_fn(shadow, params, decay)`` applies one update with ``decay`` (the weight on the old
    average) and returns the new shadow. Checked: decay 0 copies the params; decay 1 leaves an
    averaged (floating) shadow unchanged, while an integer or bool leaf (``dtype="int32"``,
    ``"bool"``, ...) takes the params at every decay, 1 included (all exactly); a constant is a
    fixed point; and over a run the shadow stays within the running min/max of everything it
    has seen.

    Raises:
        AssertionError: with hypothesis' smallest falsifying example.

    Example:
        >>> import numpy as np, ema_core as ema
        >>> from ema_core.testing import assert_ema_properties
        >>> assert_ema_properties(lambda s, p, d: ema.ema_update(s, p, 1, decay=d), np)
    """
    cases = _arrays(xp, dtype)
    check = settings(max_examples=max_examples, deadline=None, database=None)
    copied = dtype == "bool" or dtype.startswith(("int", "uint"))  # not averaged: copied

    @check
    @given(case=cases, decay=st.sampled_from([0.0, 1.0]))
    def ends_are_exact(case: tuple[Any, Any, np.ndarray], decay: float) -> None:
        shadow, params, _ = case
        keeps = decay == 1.0 and not copied
        want = to_numpy(shadow if keeps else params)
        got = to_numpy(step_fn(shadow, params, decay))
        if not np.array_equal(got, want):
            rule = "leave the shadow unchanged" if keeps else "copy the params"
            why = f" ({dtype} leaves are copied at every decay)" if copied else ""
            raise AssertionError(f"decay={decay} must {rule}{why}: got {got}, expected {want}")

    @check
    @given(case=cases, decay=st.floats(0.0, 1.0))
    def constant_is_fixed(case: tuple[Any, Any, np.ndarray], decay: float) -> None:
        shadow, _, _ = case
        const = xp.asarray(shadow, copy=True)
        got = to_numpy(step_fn(shadow, const, decay))
        if not np.array_equal(got, to_numpy(const)):
            raise AssertionError(f"a constant input must be a fixed point at decay={decay}")

    @check
    @given(case=cases, decays=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6))
    def bounded(case: tuple[Any, Any, np.ndarray], decays: list[float]) -> None:
        shadow, params, _ = case
        seen = np.stack([to_numpy(shadow), to_numpy(params)])
        low, high = seen.min(axis=0), seen.max(axis=0)
        for decay in decays:
            shadow = step_fn(shadow, params, decay)
            got = to_numpy(shadow)
            if np.any(got < low) or np.any(got > high):
                raise AssertionError(f"the shadow left the running [min, max] at decay={decay}")

    for prop in (ends_are_exact, constant_is_fixed, bounded):
        prop()


__all__ = ["assert_ema_properties"]
