"""The float64 oracle (a plain loop) and ``assert_matches``, which checks any EMA against it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ema_core._config import Config, shadow_dtype_name
from ema_core._core import dtype_name
from ema_core._tree import flatten, path_str
from ema_core._tree_pair import flatten_pair
from ema_core._types import Tree
from ema_core.testing._convert import leaves64

#: Relative tolerance per shadow dtype (scaled by the magnitude of the trajectory).
RTOL = {"float64": 1e-10, "float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}


class Trajectory(NamedTuple):
    """Parameter nests: ``init`` before training, then ``steps[t - 1]`` after step t."""

    init: Tree
    steps: Sequence[Tree]


class Expected(NamedTuple):
    """The oracle after update t: the decay in force, the shadow, its weight and the average."""

    t: int
    decay: float
    shadow: list[np.ndarray]
    weight: float
    average: list[np.ndarray]


def reference(config: Config, trajectory: Trajectory, /) -> list[Expected]:
    """ema-core's semantics as a float64 loop: one ``Expected`` per step of the trajectory.

    Floating leaves are averaged (decay 1 keeps them); integer and bool leaves take the params
    at every step, decay 1 included, under ``non_float="copy"`` and keep their first value
    under ``"freeze"``.

    Example:
        >>> import numpy as np, ema_core as ema
        >>> from ema_core.testing import Trajectory, reference
        >>> traj = Trajectory({"w": np.zeros(1)}, [{"w": np.full(1, 10.0)}] * 2)
        >>> [round(float(e.average[0][0]), 6) for e in reference(ema.Config(schedule=0.9), traj)]
        [1.0, 1.9]
    """
    zeros = config.init == "zeros"
    shadow = [
        np.zeros_like(a) if zeros and a.dtype.kind in "fc" else a.copy()
        for a in leaves64(trajectory.init)
    ]
    weight = 0.0 if zeros else 1.0
    out = []
    for t, params in enumerate(trajectory.steps, 1):
        d = float(config.decay(t))
        for i, p in enumerate(leaves64(params)):
            if p.dtype.kind in "fc":
                shadow[i] = d * shadow[i] + (1.0 - d) * p
            elif config.non_float == "copy":  # every call, decay 1 included
                shadow[i] = p.copy()
        weight = d * weight + (1.0 - d)
        average = [
            s / weight if zeros and weight > 0 and s.dtype.kind in "fc" else s for s in shadow
        ]
        out.append(Expected(t, d, [s.copy() for s in shadow], weight, [a.copy() for a in average]))
    return out


def assert_matches(
    make_ema: Callable[[Tree], Callable[[Tree, int], Tree]],
    config: Config,
    trajectory: Trajectory,
    /,
    *,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Check an EMA against ema-core, step by step, over a trajectory.

    ``make_ema(trajectory.init)`` builds the EMA under test and returns ``step(params, t)``, which
    applies update t and returns the average the EMA would evaluate with. Tolerances default
    from the shadow dtype that ``config`` gives each leaf, scaled by the trajectory's magnitude.

    Raises:
        AssertionError: naming the first step and leaf path that differ, both values and the
            decay ema-core applies there.

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
    expected = reference(config, trajectory)
    _, paths, _ = flatten(trajectory.init)
    tolerances = _tolerances(config, trajectory, rtol, atol)
    step = make_ema(trajectory.init)
    for want, params in zip(expected, trajectory.steps, strict=True):
        got = _matched(trajectory.init, step(params, want.t), want.t)
        for i, (g, w) in enumerate(zip(got, want.average, strict=True)):
            _compare_leaf(g, w, tolerances[i], want, path_str("params", paths[i]), config)


def _matched(init: Tree, returned: Tree, t: int) -> list[np.ndarray]:
    """The returned average's leaves in the order of the trajectory's nests (matched by key)."""
    try:
        _, leaves, _, _ = flatten_pair(init, returned, "params", "the EMA's average")
    except (TypeError, ValueError) as err:
        raise AssertionError(f"step {t}: {err}") from None
    return leaves64(leaves)


def _tolerances(
    config: Config, trajectory: Trajectory, rtol: float | None, atol: float | None
) -> list[float]:
    import array_api_compat as compat

    leaves = flatten(trajectory.init)[0]
    scale = max(
        [1e-30]
        + [
            float(np.max(np.abs(a), initial=0.0))
            for nest in (trajectory.init, *trajectory.steps)
            for a in leaves64(nest)
        ]
    )
    out = []
    for leaf in leaves:
        xp = compat.array_namespace(leaf)
        name = shadow_dtype_name(config.dtype, dtype_name(xp, leaf.dtype))
        out.append(atol if atol is not None else (rtol or RTOL.get(name, 0.0)) * scale)
    return out


def _compare_leaf(
    got: np.ndarray, want: np.ndarray, tol: float, at: Expected, path: str, config: Config
) -> None:
    if got.shape != want.shape:
        raise AssertionError(f"step {at.t}, {path}: shape {got.shape} != {want.shape}")
    bad = (
        np.flatnonzero(~(np.abs(got - want) <= tol))
        if want.dtype.kind in "fc"
        else np.flatnonzero(got != want)
    )
    if bad.size:
        k = int(bad[0])
        g, w = got.reshape(-1)[k].item(), want.reshape(-1)[k].item()
        raise AssertionError(
            f"the EMA differs from ema-core first at step t={at.t}, leaf {path}, element {k}: "
            f"got {g!r}, ema-core has {w!r} (|diff| {abs(g - w):.3g}, "
            f"tolerance {tol:.3g}); ema-core applies decay {at.decay!r} at this step under "
            f"{config!r}; {bad.size} element(s) of this leaf differ"
        )


__all__ = ["Expected", "Trajectory", "assert_matches", "reference"]
