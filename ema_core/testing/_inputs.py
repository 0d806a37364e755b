"""The kit's inputs checked once: the config, and a trajectory whose nests all match ``init``
(dicts by key, whatever their order), read as float64 host leaves in ``init``'s order."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import array_api_compat as compat
import numpy as np

from ema_core._config import Config
from ema_core._core import dtype_name
from ema_core._tree import Path, flatten, path_str
from ema_core._tree_pair import flatten_pair
from ema_core._types import Tree
from ema_core.testing._convert import host64
from ema_core.testing._dtypes import kind


class Trajectory(NamedTuple):
    """Parameter nests: ``init`` before training, then ``steps[t - 1]`` after step t."""

    init: Tree
    steps: Sequence[Tree]


class Checked(NamedTuple):
    """A checked trajectory: its nests, ``init``'s leaf paths, and every nest's leaves on the
    host (``host[0]`` is ``init``, ``host[t]`` the params of step t), in ``init``'s order, and the
    name of each leaf's dtype."""

    init: Tree
    steps: tuple[Tree, ...]
    paths: Sequence[Path]
    dtypes: list[str]
    host: list[list[np.ndarray]]


def checked_config(config: Any) -> Config:
    if not isinstance(config, Config):
        raise TypeError(f"config must be an ema_core.Config, got {type(config).__name__}")
    return config


def checked_trajectory(trajectory: Any) -> Checked:
    """Refuses by name a trajectory that is not ``(init, steps)``, a leaf that is not an
    array, and a step whose structure, shapes or kinds of dtype differ from ``init``."""
    if not isinstance(trajectory, tuple) or len(trajectory) != 2:
        raise TypeError(
            f"trajectory must be an ema_core.testing.Trajectory(init, steps), got "
            f"{type(trajectory).__name__}"
        )
    init, steps = trajectory[0], _steps(trajectory[1])
    leaves, paths, _ = flatten(init, "trajectory.init")
    _arrays(leaves, paths, "trajectory.init")
    host = [host64(leaves)]
    names = _names(leaves)
    for k, nest in enumerate(steps):
        name = f"trajectory.steps[{k}]"
        other = flatten_pair(init, nest, "trajectory.init", name).other
        _arrays(other, paths, name)
        host.append(host64(other))
        _same_shapes(host[0], host[-1], paths, name)
        _same_kinds(names, _names(other), paths, name)
    return Checked(init, steps, paths, names, host)


def _names(leaves: list[Any]) -> list[str]:
    return [dtype_name(compat.array_namespace(leaf), leaf.dtype) for leaf in leaves]


def _steps(steps: Any) -> tuple[Tree, ...]:
    """The steps as a tuple: a list, a tuple or any other sequence, or an iterator (read once)."""
    if isinstance(steps, (str, bytes, Mapping)) or not isinstance(steps, (Sequence, Iterator)):
        raise TypeError(
            f"trajectory.steps must be a sequence (or an iterator) of parameter nests, got "
            f"{type(steps).__name__}"
        )
    return tuple(steps)


def _arrays(leaves: list[Any], paths: Sequence[Path], name: str) -> None:
    for leaf, path in zip(leaves, paths, strict=True):
        if not compat.is_array_api_obj(leaf):
            raise TypeError(f"{path_str(name, path)} must be an array, got {type(leaf).__name__}")


def _same_shapes(
    first: list[np.ndarray], other: list[np.ndarray], paths: Sequence[Path], name: str
) -> None:
    for a, b, path in zip(first, other, paths, strict=True):
        where = path_str(name, path)
        if a.shape != b.shape:
            raise ValueError(f"{where} has shape {b.shape}, trajectory.init has {a.shape}")
        if (a.dtype.kind in "fc") != (b.dtype.kind in "fc"):
            raise ValueError(
                f"{where} has dtype {b.dtype}, trajectory.init has {a.dtype}: a leaf is floating "
                "(averaged) at every step or at none"
            )


def _same_kinds(first: list[str], other: list[str], paths: Sequence[Path], name: str) -> None:
    for a, b, path in zip(first, other, paths, strict=True):
        if kind(a) != kind(b):
            raise ValueError(
                f"{path_str(name, path)} has dtype {b}, trajectory.init has {a}: a leaf keeps "
                f"its kind of dtype (bool, int, uint, float or complex) at every step"
            )


__all__ = ["Checked", "Trajectory", "checked_config", "checked_trajectory"]
