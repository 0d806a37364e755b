"""Hypothesis strategies for nests, schedules, configs and trajectories on any namespace."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from ema_core import schedules as sched
from ema_core._config import Config
from ema_core._types import Namespace
from ema_core.testing._args import count, dtype_names, namespace
from ema_core.testing._convert import as_array, host_values
from ema_core.testing._inputs import Trajectory

_SHAPES = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)


def _leaf(xp: Namespace, dtype: str, shape: tuple[int, ...], seed: int) -> Any:
    """A leaf of dtype name ``dtype`` (``"int"``: an int buffer of the default integer, int32
    in JAX without x64)."""
    return as_array(xp, host_values(np.random.default_rng(seed), shape, dtype), dtype)


@st.composite
def _skeleton(draw: st.DrawFn, dtypes: tuple[str, ...], int_buffers: bool, max_leaves: int) -> Any:
    """A nest of (dtype, shape) pairs: dict, list or tuple at the top, one level below."""
    kinds = list(dtypes) + (["int"] if int_buffers else [])
    leaf = st.tuples(st.sampled_from(kinds), _SHAPES)
    group = st.one_of(leaf, st.lists(leaf, min_size=1, max_size=2))
    container = draw(st.sampled_from(["dict", "list", "tuple"]))
    items = draw(st.lists(group, min_size=1, max_size=max_leaves))
    if container == "dict":
        return {f"layer{i}": item for i, item in enumerate(items)}
    return items if container == "list" else tuple(items)


def _fill(xp: Namespace, skeleton: Any, seed: int) -> Any:
    counter = iter(range(10**6))

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, tuple) and len(node) == 2 and isinstance(node[0], str):
            return _leaf(xp, node[0], node[1], seed * 1000 + next(counter))
        return type(node)(walk(v) for v in node)

    return walk(skeleton)


def nests(
    xp: Namespace,
    *,
    dtypes: tuple[str, ...] = ("float32",),
    int_buffers: bool = False,
    max_leaves: int = 4,
) -> st.SearchStrategy[Any]:
    """Dict, list and tuple nests of ``xp`` arrays with the given dtypes (and buffers of the
    default integer when ``int_buffers``), 1 to ``max_leaves`` groups of leaves.

    Raises:
        TypeError, ValueError: ``xp`` is no namespace, a dtype it cannot make, ``max_leaves``
            < 1, by name.

    Example:
        >>> import numpy as np, ema_core as ema
        >>> from hypothesis import given, settings
        >>> from ema_core.testing import nests
        >>> @settings(max_examples=10, database=None, deadline=None)
        ... @given(nests(np, dtypes=("float32", "float64")))
        ... def test_average_starts_at_the_params(params):
        ...     np.testing.assert_equal(ema.average(ema.init(params)), params)
        >>> test_average_starts_at_the_params()
    """
    xp, dtypes = _checked(xp, dtypes, int_buffers)
    skeleton = _skeleton(dtypes, int_buffers, count(max_leaves, "max_leaves"))
    return st.tuples(skeleton, st.integers(0, 2**20)).map(lambda pair: _fill(xp, *pair))


def _checked(xp: Any, dtypes: Any, int_buffers: Any) -> tuple[Namespace, tuple[str, ...]]:
    xp = namespace(xp, "xp")
    if not isinstance(int_buffers, bool):
        raise TypeError(f"int_buffers must be a bool (True or False), got {int_buffers!r:.80}")
    return xp, dtype_names(dtypes, xp, "dtypes")


def schedules() -> st.SearchStrategy[sched.Schedule]:
    """Every schedule of ``ema_core.schedules`` with drawn arguments: the closed forms, EDM2's
    power function, mmengine's ``momentum``, ``ramped_half_life``, ``in_float32`` and ``gated``
    (over a constant; ``every`` is drawn by ``configs()`` as ``Config(interval=...)``).

    Example:
        >>> from hypothesis import given, settings
        >>> from ema_core.testing import schedules
        >>> @settings(max_examples=10, database=None, deadline=None)
        ... @given(schedules())
        ... def test_decays_are_fractions(schedule):
        ...     assert all(0.0 <= schedule(t) <= 1.0 for t in range(1, 50))
        >>> test_decays_are_fractions()
    """
    unit = st.floats(0.5, 0.9999)
    return st.one_of(
        unit.map(sched.constant),
        unit.map(sched.num_updates),
        st.builds(sched.warmup, unit, power=st.sampled_from([2 / 3, 3 / 4, 1.0])),
        st.floats(1.0, 20.0).map(sched.power_function),
        st.floats(1.0, 100.0).map(sched.half_life),
        st.builds(sched.annealing, st.floats(1e-4, 0.1), gamma=st.floats(1.0, 200.0)),
        st.floats(1e-4, 0.5).map(sched.momentum),
        st.builds(sched.ramped_half_life, st.floats(1.0, 100.0), ratio=st.floats(0.05, 0.5)),
        unit.map(sched.in_float32),
        st.builds(
            sched.gated,
            unit,
            every=st.integers(1, 3),
            phase=st.integers(0, 2),
            start=st.integers(0, 3),
            copy_through=st.integers(-1, 2),
            offset=st.integers(-1, 2),
            divisor=st.integers(1, 2),
            floor=st.sampled_from([0.0, 0.5]),
        ),
    )


def configs() -> st.SearchStrategy[Config]:
    """Configs over every schedule, init policy and interval setting.

    Example:
        >>> import numpy as np, ema_core as ema
        >>> from hypothesis import given, settings
        >>> from ema_core.testing import configs
        >>> @settings(max_examples=10, database=None, deadline=None)
        ... @given(configs())
        ... def test_a_constant_is_a_fixed_point(config):
        ...     state = ema.init({"w": np.full(2, 3.0)}, config)
        ...     for _ in range(6):
        ...         state = ema.update(state, {"w": np.full(2, 3.0)}, config)
        ...     np.testing.assert_allclose(ema.average(state, config)["w"], 3.0)
        >>> test_a_constant_is_a_fixed_point()
    """
    return st.builds(
        Config,
        schedule=schedules(),
        init=st.sampled_from(["params", "copy", "zeros"]),
        interval=st.integers(1, 3),
        compensate=st.booleans(),
    )


@st.composite
def _trajectory(
    draw: st.DrawFn, xp: Namespace, length: int, dtypes: tuple[str, ...], int_buffers: bool
) -> Trajectory:
    skeleton = draw(_skeleton(dtypes, int_buffers, 3))
    seed = draw(st.integers(0, 2**20))
    steps = draw(st.integers(1, length))
    nests_ = [_fill(xp, skeleton, seed + k) for k in range(steps + 1)]
    return Trajectory(nests_[0], nests_[1:])


def trajectories(
    xp: Namespace,
    *,
    length: int = 8,
    dtypes: tuple[str, ...] = ("float32",),
    int_buffers: bool = False,
) -> st.SearchStrategy[Trajectory]:
    """Seeded sequences of 1..``length`` parameter nests of one structure (arguments checked
    as ``nests``).

    Example:
        >>> import numpy as np, ema_core as ema
        >>> from hypothesis import given, settings
        >>> from ema_core.testing import Trajectory, reference, trajectories
        >>> copy = ema.Config(schedule=0.0)  # decay 0: each average is that step's params
        >>> @settings(max_examples=10, database=None, deadline=None)
        ... @given(trajectories(np, length=4))
        ... def test_decay_zero_copies(traj):
        ...     last = Trajectory(traj.steps[-1], traj.steps[-1:])
        ...     got, want = reference(copy, traj)[-1], reference(copy, last)[0]
        ...     np.testing.assert_equal(got.average, want.average)
        >>> test_decay_zero_copies()
    """
    xp, dtypes = _checked(xp, dtypes, int_buffers)
    return _trajectory(xp, count(length, "length"), dtypes, int_buffers)


__all__ = ["configs", "nests", "schedules", "trajectories"]
