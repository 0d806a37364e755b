"""``assert_ema_properties``: the EMA invariants as a hypothesis check of any step function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from array_api_compat import is_array_api_obj
from hypothesis import given, settings
from hypothesis import strategies as st

from ema_core._types import Array, Namespace
from ema_core.testing import _dtypes
from ema_core.testing._args import NON_FLOAT, count, dtype, function, namespace
from ema_core.testing._convert import EPS, as_array, host_values, to_numpy

StepFn = Callable[[Array, Array, float], Array]
_ULPS = 4  # rounding allowed per update in the interior checks (d * s + (1 - d) * p: 3 roundings)
_TYPICAL = (0.5, 0.9, 0.99, 0.999, 0.9999)  # decays users run, drawn beside any in (0, 1)
_TINY = {"float16": 2.0**-14, "bfloat16": 2.0**-126, "float32": 2.0**-126, "float64": 2.0**-1022}


def _arrays(xp: Namespace, dtype: str) -> st.SearchStrategy[tuple[Any, Any]]:
    def make(args: tuple[tuple[int, ...], int]) -> tuple[Any, Any]:
        shape, seed = args
        rng = np.random.default_rng(seed)
        return as_array(xp, host_values(rng, shape, dtype), dtype), as_array(
            xp, host_values(rng, shape, dtype), dtype
        )

    shapes = st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple)
    return st.tuples(shapes, st.integers(0, 2**20)).map(make)


def assert_ema_properties(
    step_fn: StepFn,
    xp: Namespace,
    /,
    *,
    dtype: str = "float32",
    max_examples: int = 40,
    returned_dtype: str = "contract",
) -> None:
    """Check the invariants every EMA step must keep, on arrays of namespace ``xp``.

    ``step_fn(shadow, params, decay)`` applies one update with ``decay`` (the weight on the old
    average) and returns the new shadow (it may update ``shadow`` in place, never ``params``).
    Checked: decay 0 copies the params; decay 1 leaves an averaged (floating) shadow unchanged,
    while an integer or bool leaf (``dtype="int32"``, ``"bool"``, ...) takes the params at
    every decay, 1 included (all exactly); one update at a decay inside (0, 1) (typical ones
    such as 0.999 and any other) gives ``s + (1 - d)(p - s)``; a constant is a fixed point; and
    over a run the shadow stays within the running min/max of everything it has seen (these
    three up to 4 units of rounding of ``dtype`` per update, times max(|s|, |p|), so that
    ``d * s + (1 - d) * p`` passes). ``xp`` may be
    a framework module (``torch``, ``numpy``); ``dtype`` must be one it makes. The returned
    shadow must keep ``dtype`` (``returned_dtype="kind"``: another width of its kind).

    Raises:
        AssertionError: with hypothesis' smallest falsifying example.
        TypeError: ``step_fn`` returns something that is not an array (None: return the shadow
            of an in-place update), or a bad argument, by name.
        ValueError: a dtype ``xp`` cannot make, ``max_examples`` < 1.

    Example:
        >>> import numpy as np, ema_core as ema
        >>> from ema_core.testing import assert_ema_properties
        >>> assert_ema_properties(lambda s, p, d: ema.ema_update(s, p, 1, decay=d), np)
    """
    function(step_fn, "step_fn", "step_fn(shadow, params, decay) -> shadow")
    xp = namespace(xp, "xp")
    dtype = _checked_dtype(dtype, xp)
    check = settings(
        max_examples=count(max_examples, "max_examples"),
        deadline=None,
        database=None,
        report_multiple_bugs=False,
    )
    copied = dtype in NON_FLOAT  # not averaged: copied
    how = _dtypes.mode(returned_dtype)
    run = _Runner(step_fn, EPS.get(dtype, 0.0) * _ULPS, (dtype, how))
    cases = _arrays(xp, dtype)

    @check
    @given(case=cases, decay=st.sampled_from([0.0, 1.0]))
    def ends_are_exact(case: tuple[Any, Any], decay: float) -> None:
        run.ends(*case, decay, keeps=decay == 1.0 and not copied, why=dtype if copied else "")

    @check
    @given(case=cases, decay=st.one_of(st.sampled_from(_TYPICAL), st.floats(0.0, 1.0)))
    def blends(case: tuple[Any, Any], decay: float) -> None:
        if 0.0 < decay < 1.0:
            run.blend(*case, decay, copies=copied)

    @check
    @given(case=cases, decay=st.floats(0.0, 1.0))
    def constant_is_fixed(case: tuple[Any, Any], decay: float) -> None:
        run.constant(xp, case[0], decay)

    @check
    @given(case=cases, decays=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6))
    def bounded(case: tuple[Any, Any], decays: list[float]) -> None:
        run.bounded(*case, decays)

    for prop in (ends_are_exact, blends, constant_is_fixed, bounded):
        prop()


def _checked_dtype(name: Any, xp: Namespace) -> str:
    return dtype(name, xp, "dtype")


class _Runner:
    """Calls ``step_fn`` and checks what it returns (and that it left the params alone)."""

    def __init__(self, step_fn: StepFn, ulps: float, dtype: tuple[str, str]) -> None:
        self.step_fn, self.ulps, self.dtype = step_fn, ulps, dtype

    def call(self, shadow: Any, params: Any, decay: float) -> tuple[Any, np.ndarray]:
        """The returned shadow, and it on the host."""
        before = to_numpy(params)
        out = self.step_fn(shadow, params, decay)
        if out is None or isinstance(out, (tuple, list, dict, str)) or not is_array_api_obj(out):
            raise TypeError(
                f"step_fn(shadow, params, decay) must return the new shadow (an array), got "
                f"{type(out).__name__}; an in-place update returns the shadow it updated"
            )
        name, how = self.dtype
        wrong = _dtypes.check([_dtypes.name_of(out)], [name], how, [f"decay={decay}"])
        if wrong:
            raise AssertionError(f"step_fn(shadow, params, decay): {wrong}")
        got, after = to_numpy(out), to_numpy(params)
        if not np.array_equal(before, after, equal_nan=True):
            raise AssertionError(
                f"step_fn wrote into params at decay={decay}: it held {before}, now {after}"
            )
        if got.shape != before.shape:
            raise AssertionError(
                f"step_fn returned shape {got.shape} for params of shape {before.shape}"
            )
        return out, got

    def ends(self, shadow: Any, params: Any, decay: float, *, keeps: bool, why: str) -> None:
        want = to_numpy(shadow if keeps else params)
        got = self.call(shadow, params, decay)[1]
        if not np.array_equal(got, want):
            rule = "leave the shadow unchanged" if keeps else "copy the params"
            note = f" ({why} leaves are copied at every decay)" if why else ""
            raise AssertionError(
                f"decay={decay} must {rule}{note}, exactly: got {got}, expected {want}"
            )

    def blend(self, shadow: Any, params: Any, decay: float, *, copies: bool) -> None:
        """One update at a decay inside (0, 1): ``s + (1 - d)(p - s)`` up to the rounding
        allowed, measured as ``|got - want|`` (complex leaves too); an integer or bool leaf:
        the params, exactly."""
        s_host, p_host = to_numpy(shadow), to_numpy(params)
        got = self.call(shadow, params, decay)[1]
        if copies:
            if not np.array_equal(got, p_host):
                raise AssertionError(
                    f"decay={decay} must copy the params ({self.dtype[0]} leaves are copied at "
                    f"every decay), exactly: got {got}, expected {p_host}"
                )
            return
        wide = np.complex128 if np.iscomplexobj(s_host) else np.float64
        s, p = s_host.astype(wide), p_host.astype(wide)
        want = s + (1.0 - decay) * (p - s)
        slack = self.ulps * (np.maximum(np.abs(s), np.abs(p)) + _TINY.get(self.dtype[0], 0.0))
        off = np.abs(got.astype(wide) - want)
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~(off <= slack))
        if bad.size:
            k = int(bad[0])
            raise AssertionError(
                f"one update at decay={decay} must give s + (1 - decay) * (p - s): element {k} "
                f"is {got.reshape(-1)[k]!r}, expected {want.reshape(-1)[k]!r} within "
                f"{slack.reshape(-1)[k]!r} (the shadow held {s.reshape(-1)[k]!r}, the params "
                f"{p.reshape(-1)[k]!r})"
            )

    def constant(self, xp: Namespace, shadow: Any, decay: float) -> None:
        want = to_numpy(shadow)
        got = self.call(shadow, xp.asarray(shadow, copy=True), decay)[1]
        slack = _both(want, self.ulps * np.abs(want))  # complex: in each part
        rule = f"a constant input must be a fixed point at decay={decay}"
        _within(got, want - slack, want + slack, rule)

    def bounded(self, shadow: Any, params: Any, decays: list[float]) -> None:
        seen = np.stack([to_numpy(shadow), to_numpy(params)])
        if np.iscomplexobj(seen):  # each part between its own running min and max
            low = seen.real.min(axis=0) + 1j * seen.imag.min(axis=0)
            high = seen.real.max(axis=0) + 1j * seen.imag.max(axis=0)
        else:
            low, high = seen.min(axis=0), seen.max(axis=0)
        slack = _both(low, self.ulps * len(decays) * np.maximum(np.abs(low), np.abs(high)))
        low, high = low - slack, high + slack
        for decay in decays:
            shadow, got = self.call(shadow, params, decay)
            rule = f"the shadow must stay within the running [min, max], at decay={decay}"
            _within(got, low, high, rule)


def _both(like: np.ndarray, slack: np.ndarray) -> np.ndarray:
    """``slack`` for both parts of a complex ``like`` (``slack * (1 + 1j)``), else itself."""
    return slack * (1 + 1j) if np.iscomplexobj(like) else slack


def _within(got: np.ndarray, low: np.ndarray, high: np.ndarray, rule: str) -> None:
    """Every element of ``got`` in [low, high]; else name the first one outside. Complex
    values: each part between the same part of ``low`` and ``high``."""
    if np.iscomplexobj(got) or np.iscomplexobj(low):
        _within(got.real, np.real(low), np.real(high), f"{rule} (real part)")
        _within(np.imag(got), np.imag(low), np.imag(high), f"{rule} (imaginary part)")
        return
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~((got >= low) & (got <= high)))
    if bad.size:
        k = int(bad[0])
        g, lo, hi = (float(a.reshape(-1)[k]) for a in (got, low, high))
        raise AssertionError(f"{rule}: element {k} is {g!r}, allowed [{lo!r}, {hi!r}]")


__all__ = ["assert_ema_properties"]
