"""The generic Array API backend: the core's leaf math, with in-place writes through
``shadow[...] = new`` where the array allows it. Right on every namespace; not the fastest."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from ema_core import _core
from ema_core._types import Array, LeafKind, Namespace, NonFloatPolicy, Value


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """No context needed (backends without autograd state reuse this one)."""
    yield


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
        if kind == "float":
            new = _core.blend(xp, s, p, decay, rate)
        elif non_float == "copy":
            new = _core.copy_exact(xp, p)
        else:
            new = s
        if write and new is not s:
            s[...] = new
            new = s
        out.append(new)
    return out
