"""Steps given in another form than the leaves' own: a CPU torch tensor step, whose decay the
host computes as for the same int (``ops_for``), handed back as a tensor (``as_given``); a step
array of another framework than the leaves (``step_in``)."""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat as compat

from ema_core._ops import Ops, concrete_step, is_readable
from ema_core._types import Array

__all__ = ["as_given", "step_in"]


def as_given(ops: Ops, value: Any) -> Any:
    """``value`` computed by ``ops`` as the caller's step calls for: a 0-d float64 tensor where
    a CPU torch tensor step was read as an int (a 0-d array step gives a 0-d float array), the
    value itself otherwise."""
    given = getattr(ops, "given", None)
    if given is None or given is ops.raw or not isinstance(value, (int, float)):
        return value
    torch = sys.modules["torch"]  # the step was a (CPU) torch tensor: beside it, whatever
    return torch.tensor(value, dtype=torch.float64, device=given.device)  # default device


def step_in(step: Any, xp: Any, name: str = "step") -> int | Array:
    """``concrete_step(step)`` for leaves of namespace ``xp``: a step array of another
    framework (a torch tensor beside array-api-strict leaves) is read as an int where the host
    can read it, since a schedule would compute the decay in its framework.

    Raises:
        TypeError: a step array of another framework that the host cannot read (on a device,
            traced), before anything is written.
    """
    t = concrete_step(step, name)
    if isinstance(t, int) or compat.array_namespace(t) is xp:
        return t
    if not is_readable(t):
        raise TypeError(
            f"{name} is a 0-d array of {compat.array_namespace(t).__name__} but the leaves are "
            f"{xp.__name__} arrays, and it cannot be read here (on a device or traced): pass a "
            "Python int or a step of the leaves' framework"
        )
    return int(t)
