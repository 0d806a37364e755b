"""The generic Array API backend: the core's leaf math, with in-place writes through
``shadow[...] = new`` where the array allows it. Right on every namespace; not the fastest.

Each leaf takes one route (``route``; ``update_leaves`` matches on it), whatever the decay's
kind (a host float or a 0-d device array, which the core never reads on the host):

=======  ============================================  =========================  ============
route    leaves                                        runs                       test
=======  ============================================  =========================  ============
blend    float (a host decay of 1 returns the shadow)  ``_core.blend``            generic_routes
copy     integer/bool under ``non_float="copy"``       ``_core.copy_exact``       generic_routes
keep     integer/bool, any other ``non_float``         nothing (the shadow)       generic_routes
=======  ============================================  =========================  ============

The tests are ``tests/test_torch_routes.py::test_<name>`` (numpy arrays; every backend's suite
also falls back here).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Literal, TypeAlias

from ema_core import _core
from ema_core._types import Array, LeafKind, Namespace, NonFloatPolicy, Value

__all__ = ["Route", "guard", "route", "update_leaves"]

Route: TypeAlias = Literal["blend", "copy", "keep"]


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """numpy's floating-point errors ignored where numpy is loaded (array-api-strict computes
    with it), so inf and NaN give IEEE's values, never a ``RuntimeWarning`` (an error under
    ``-W error``) after some leaves are written; nothing else is needed (backends without
    autograd state reuse this one)."""
    np = sys.modules.get("numpy")
    if np is None:
        yield
        return
    with np.errstate(all="ignore"):
        yield


def route(kind: LeafKind, *, non_float: NonFloatPolicy) -> Route:
    """The route (module docstring) of a leaf of this kind."""
    if kind == "float":
        return "blend"
    return "copy" if non_float == "copy" else "keep"


def update_leaves(
    xp: Namespace,
    shadows: Sequence[Array],
    params: Sequence[Array],
    kinds: Sequence[LeafKind],
    decay: Value,
    rate: Value,
    *,
    non_float: NonFloatPolicy,
    writes: Sequence[bool],
) -> list[Array]:
    """Blend float leaves, copy exact ones; write into the shadows where ``writes`` says.

    A decay of 1 keeps every float shadow as it is (bit for bit), and integer and bool leaves
    still take the params under ``non_float="copy"``: they are copied on every call."""
    out: list[Array] = []
    for s, p, kind, write in zip(shadows, params, kinds, writes, strict=True):
        match route(kind, non_float=non_float):
            case "blend":
                new = _core.blend(xp, s, p, decay, rate)
            case "copy":
                new = _core.copy_exact(xp, p)
            case "keep":
                new = s
        if write and new is not s:
            s[...] = new
            new = s
        out.append(new)
    return out
