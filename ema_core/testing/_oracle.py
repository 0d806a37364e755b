"""The float64 oracle (a plain loop) and ``assert_matches``, which checks any EMA against it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ema_core._config import Config, power_weight, shadow_dtype_name
from ema_core._tree import path_str
from ema_core.testing import _dtypes
from ema_core.testing._args import function, tolerance
from ema_core.testing._compare import compare_leaf, returned, tolerances, unchanged
from ema_core.testing._convert import rounded
from ema_core.testing._inputs import Checked, Trajectory, checked_config, checked_trajectory

_Step = Callable[[Any, int], Any]


class Expected(NamedTuple):
    """The oracle after update t: the decay in force, the shadow, its weight and the average."""

    t: int
    decay: float
    shadow: list[np.ndarray]
    weight: float
    average: list[np.ndarray]


def reference(config: Config, trajectory: Trajectory, /) -> list[Expected]:
    """ema-core's semantics as a float64 loop: one ``Expected`` per step of the trajectory.

    Floating leaves are averaged in float64 (decay 1 keeps them, decay 0 copies them, exactly),
    and rounded to their shadow dtype after every update where ``config`` gives them a float16
    or bfloat16 shadow (as any half-precision EMA stores them: it stalls where they do); integer
    and bool leaves take the params at every step, decay 1 included, under
    ``non_float="copy"`` and keep their first value under ``"freeze"``. Under ``init="zeros"``
    the average is the shadow corrected as ``config.correction`` says. The steps' nests are
    matched to ``trajectory.init`` by dict key.

    Raises:
        TypeError: ``config`` is not a Config, ``trajectory`` not ``(init, steps)``, a leaf not
            an array, or an integer leaf under ``non_float="error"`` (as ``ema_core.init``).
        ValueError: a step's nest differs from ``init`` (keys, lengths, shapes), by path.

    Example:
        >>> import numpy as np, ema_core as ema
        >>> from ema_core.testing import Trajectory, reference
        >>> traj = Trajectory({"w": np.zeros(1)}, [{"w": np.full(1, 10.0)}] * 2)
        >>> [round(float(e.average[0][0]), 6) for e in reference(ema.Config(schedule=0.9), traj)]
        [1.0, 1.9]
    """
    return _expected(checked_config(config), checked_trajectory(trajectory))


def _expected(config: Config, checked: Checked) -> list[Expected]:
    floating = [a.dtype.kind in "fc" for a in checked.host[0]]
    _refuse_non_float(config, checked, floating)
    kept = [  # each floating leaf's shadow dtype (the oracle rounds to it), None for the others
        shadow_dtype_name(config.dtype, name) if f else None
        for name, f in zip(checked.dtypes, floating, strict=True)
    ]
    zeros = config.init == "zeros"
    shadow = [
        a.copy() if k is None else np.zeros_like(a) if zeros else rounded(a, k)
        for a, k in zip(checked.host[0], kept, strict=True)
    ]
    weight = 0.0 if zeros else 1.0
    out = []
    for t, params in enumerate(checked.host[1:], 1):
        d, r = (float(x) for x in config.decay_and_rate(t))
        shadow = [
            _mix(s, p, d, r, k, config.non_float)
            for s, p, k in zip(shadow, params, kept, strict=True)
        ]
        weight = weight + r * (1.0 - weight) if d >= 0.5 else 1.0 - d * (1.0 - weight)
        average = _read(config, shadow, floating, weight, t)
        out.append(Expected(t, d, [s.copy() for s in shadow], weight, average))
    return out


def _mix(s: np.ndarray, p: np.ndarray, d: float, r: float, kept: str | None, non_float: str) -> Any:
    """One update of a leaf: a floating one blended (exact at decay 0 and 1) and rounded to
    its shadow dtype ``kept``; another one copied or frozen. The blend is the update rule's
    form, ``s + r (p - s)`` (from the params' side, ``p - d (p - s)``, below decay 0.5), so
    a float64 EMA that computes it so matches with no tolerance (ema-core's numpy backend)."""
    if kept is None:
        return p.copy() if non_float == "copy" else s
    if d == 1.0:
        return s
    with np.errstate(invalid="ignore", over="ignore"):  # inf params: inf or NaN, no warning
        diff = p - s
        return rounded(p if d == 0.0 else s + r * diff if d >= 0.5 else p - d * diff, kept)


def _read(
    config: Config, shadow: list[np.ndarray], floating: list[bool], weight: float, t: int
) -> list[np.ndarray]:
    if config.init != "zeros" or config.correction == "none":
        return [s.copy() for s in shadow]
    if config.correction == "power":
        schedule: Any = config.schedule
        weight = float(power_weight(schedule, t, config.interval, config.compensate))
    divide = weight not in (0.0, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):  # a complex inf divided: no warning
        return [
            s / weight if f and divide else s.copy() for s, f in zip(shadow, floating, strict=True)
        ]


def _refuse_non_float(config: Config, checked: Checked, floating: list[bool]) -> None:
    if config.non_float != "error" or all(floating):
        return
    i = floating.index(False)
    raise TypeError(
        f"{path_str('trajectory.init', checked.paths[i])} has non-floating dtype "
        f"{checked.host[0][i].dtype} and config.non_float='error' (ema_core.init refuses it)"
    )


def assert_matches(
    make_ema: Callable[[Any], _Step],
    config: Config,
    trajectory: Trajectory,
    /,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    returned_dtype: str = "contract",
) -> None:
    """Check an EMA against ema-core, step by step, over a trajectory.

    ``make_ema(trajectory.init)`` builds the EMA under test and returns ``step(params, t)``, which
    applies update t and returns the average the EMA would evaluate with. Each leaf's tolerance
    is ``atol + rtol * scale``, scale the leaf's largest finite magnitude over the trajectory;
    without either, rtol comes from the shadow dtype ``config`` gives the leaf (float32: 2e-5).
    Integer and bool leaves compare exactly. Each returned leaf must have the dtype the
    contract gives it (``_dtypes``: the shadow dtype ``config`` gives a floating leaf, float32
    for an ``init="zeros"`` read over a half shadow, the param's for an integer or bool leaf);
    ``returned_dtype="kind"`` accepts another width of the same kind; a wrong dtype is
    reported after the values of every step matched. The EMA must leave its inputs (``init``,
    the params) as they were.

    Raises:
        AssertionError: naming the first step and leaf path that differ (the element, both
            values and the decay ema-core applies there; or the returned and expected
            dtypes), or the input the EMA changed.
        TypeError, ValueError: a bad argument, named (see ``reference``); an empty trajectory
            or one without arrays is a ValueError (it would check nothing).

    Example:
        >>> import numpy as np, ema_core as ema
        >>> from ema_core.testing import Trajectory, assert_matches
        >>> def make(init):
        ...     box = {"s": {"w": init["w"].copy()}}
        ...     def step(params, t):
        ...         box["s"]["w"] = 0.9 * box["s"]["w"] + 0.1 * params["w"]
        ...         return box["s"]
        ...     return step
        >>> traj = Trajectory({"w": np.zeros(2)}, [{"w": np.full(2, float(k))} for k in range(5)])
        >>> assert_matches(make, ema.Config(schedule=0.9), traj)
    """
    function(make_ema, "make_ema", "make_ema(init) -> step(params, t)")
    config = checked_config(config)
    rtol, atol = tolerance(rtol, "rtol"), tolerance(atol, "atol")
    how = _dtypes.mode(returned_dtype)
    checked = checked_trajectory(trajectory)
    if not checked.steps or not checked.paths:
        what = "no steps" if not checked.steps else "no array in trajectory.init"
        raise ValueError(f"trajectory has {what}: assert_matches would check nothing")
    expected = _expected(config, checked)
    floating = [a.dtype.kind in "fc" for a in checked.host[0]]
    dtypes = _dtypes.expected(config, checked.dtypes, floating)
    tols = tolerances(config, checked, rtol, atol)
    step = make_ema(checked.init)
    if not callable(step):
        raise TypeError(
            f"make_ema(trajectory.init) must return a callable step(params, t), got "
            f"{type(step).__name__}"
        )
    wrong = None  # the first wrong dtype, raised once every value matched
    for want, params in zip(expected, checked.steps, strict=True):
        got, names = returned(checked.init, step(params, want.t), want.t)
        unchanged(checked, (0, want.t), want.t)
        _compare(config, want, got, tols, checked)
        places = [f"step t={want.t}, leaf {path_str('params', p)}" for p in checked.paths]
        wrong = wrong or _dtypes.check(names, dtypes, how, places)
    # the steps' params once more (init was re-read after every step)
    unchanged(checked, range(1, len(checked.host)), len(checked.steps), final=True)
    if wrong:
        raise AssertionError(wrong)


def _compare(
    config: Config, want: Expected, got: list[np.ndarray], tols: list[float], checked: Checked
) -> None:
    for i, (g, w) in enumerate(zip(got, want.average, strict=True)):
        where = f"step t={want.t}, leaf {path_str('params', checked.paths[i])}"
        try:
            compare_leaf(g, w, tols[i], where)
        except AssertionError as err:
            raise AssertionError(
                f"{err}; ema-core applies decay {want.decay!r} at this step under {config!r}"
            ) from None


__all__ = ["Expected", "Trajectory", "assert_matches", "reference"]
