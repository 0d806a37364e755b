"""Hypothesis strategies for nests, schedules, configs and trajectories on any namespace."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from ema_core import schedules as sched
from ema_core._config import Config
from ema_core._types import Namespace
from ema_core.testing._oracle import Trajectory

_SHAPES = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)


def _leaf(xp: Namespace, dtype: str, shape: tuple[int, ...], seed: int) -> Any:
    rng = np.random.default_rng(seed)
    if dtype.startswith("int"):  # the namespace's default integer (int32 in JAX without x64)
        return xp.asarray(rng.integers(0, 100, size=shape).tolist() if shape else 7)
    values = xp.asarray(rng.standard_normal(shape).astype(np.float32))
    return xp.astype(values, getattr(xp, dtype))


@st.composite
def _skeleton(draw: st.DrawFn, dtypes: tuple[str, ...], int_buffers: bool, max_leaves: int) -> Any:
    """A nest of (dtype, shape) pairs: dict, list or tuple at the top, one level below."""
    kinds = list(dtypes) + (["int64"] if int_buffers else [])
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
    """Dict, list and tuple nests of ``xp`` arrays with the given floating dtypes (and int64
    buffers when ``int_buffers``)."""
    return st.tuples(_skeleton(dtypes, int_buffers, max_leaves), st.integers(0, 2**20)).map(
        lambda pair: _fill(xp, pair[0], pair[1])
    )


def schedules() -> st.SearchStrategy[sched.Schedule]:
    """Every schedule of ``ema_core.schedules`` with drawn arguments."""
    unit = st.floats(0.5, 0.9999)
    return st.one_of(
        unit.map(sched.constant),
        unit.map(sched.num_updates),
        st.builds(sched.warmup, unit, power=st.sampled_from([2 / 3, 3 / 4, 1.0])),
        st.floats(1.0, 20.0).map(sched.power_function),
        st.floats(1.0, 100.0).map(sched.half_life),
        st.builds(sched.annealing, st.floats(1e-4, 0.1), gamma=st.floats(1.0, 200.0)),
    )


def configs() -> st.SearchStrategy[Config]:
    """Configs over every schedule, init policy and interval setting."""
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
    """Seeded sequences of 1..``length`` parameter nests of one structure."""
    return _trajectory(xp, length, dtypes, int_buffers)


__all__ = ["configs", "nests", "schedules", "trajectories"]
