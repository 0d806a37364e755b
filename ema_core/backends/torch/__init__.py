"""torch leaf kernels (below the API): fused in-place updates with no host sync.

``guard`` and ``update_leaves`` are the backend protocol the core calls (``ema_core.backends``);
``ema_update`` on tensors lands in ``update_leaves``, the ``EMA`` class (``ema_core.torch``) in
``_routes`` through its store. ``_routes`` groups the leaves once into a plan and picks one
route per group (the table is in its docstring); ``_foreach`` holds the fused ops, ``_host`` the
CPU views handed to the host engine, ``_mixed`` / ``_triton`` the one-pass mixed-precision blend.

The user-facing classes sit above the API in ``ema_core.torch``; their old names here
(``ema_core.backends.torch.EMA`` ...) still work and are looked up there on first use
(``__getattr__`` below), never by the kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ema_core._types import LeafKind, Namespace, NonFloatPolicy, Value
from ema_core.backends.torch import _routes

__all__ = ["guard", "update_leaves"]

#: Names that used to live here and moved above the API to ``ema_core.torch``.
_MOVED = frozenset({"EMA", "ddp_ema", "full_state_dict"})


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """``torch.no_grad``: shadows never join the autograd graph of the params."""
    with torch.no_grad():
        yield


def update_leaves(
    xp: Namespace,
    shadows: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    kinds: Sequence[LeafKind],
    decay: Value,
    rate: Value,
    *,
    non_float: NonFloatPolicy,
    writes: Sequence[bool],
) -> list[torch.Tensor]:
    """Blend float leaves and copy exact ones, grouped into fused calls (``_routes``).

    ``writes[i]`` updates ``shadows[i]`` in place and returns it; otherwise a new tensor is
    returned and ``shadows[i]`` is left alone. Integer leaves follow ``non_float``: "copy" takes
    the params on every call, also one whose decay is 1 (a host decay of 1 returns each float
    shadow itself); the others leave them as they are.
    """
    skip = isinstance(decay, float) and decay == 1.0
    move = [non_float == "copy" if kind == "exact" else not skip for kind in kinds]
    out = [s if w or not m else s.clone() for s, w, m in zip(shadows, writes, move, strict=True)]
    if not any(move):
        return out
    plan = _routes.make_plan(
        [s for s, m in zip(out, move, strict=True) if m],
        [p for p, m in zip(params, move, strict=True) if m],
        [kind for kind, m in zip(kinds, move, strict=True) if m],
    )
    _routes.apply(xp, plan, decay, rate)
    return out


def __getattr__(name: str) -> Any:
    """The old import path of the user-facing torch names (``ema_core.torch``), kept working."""
    if name in _MOVED:
        import ema_core.torch

        return getattr(ema_core.torch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
