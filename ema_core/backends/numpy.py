"""The numpy backend: a thin adapter over the host engine (``ema_core.backends.host``).

One route per leaf (``route``), then one engine plan for every leaf it takes:

================================================ ==================================================
leaf                                             route
================================================ ==================================================
float pair of plain ndarrays or memmaps          ``"engine"``: numba's one-pass loop, or numpy
(float16/32/64, complex; the shadow's kind at    blocks without numba; in place, or into a copy
least the params')
integer or bool (``kind="exact"``)               ``"copy"`` under ``non_float="copy"`` (every
                                                 call, decay 1 included), else ``"keep"``
float, decay 1                                   ``"keep"``: the shadow itself, untouched
float, decay 0                                   ``"engine"``: the params copied exactly
anything else (other ndarray subclasses, a       ``"generic"``: ``ema_core._core.blend``
read-only shadow to write)
================================================ ==================================================

Every route gives the generic backend's bits, under ``np.errstate(all="ignore")``: NaN and
infinities give IEEE's values and never a ``FloatingPointError`` (or a warning made an error)
half way through an update (``Config(guard_finite=True)`` refuses them before any write).
``EMA_CORE_NUMPY_THREADS`` (default: the usable CPUs, at most 4) sets the engine's threads;
like ``EMA_CORE_NUMBA`` it is read once (``ema_core._settings``). ``leaf_signature`` says
what could invalidate a plan made for the same arrays and ``same_signature`` compares it (for
the stateless call's plan cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ema_core import _core
from ema_core._settings import settings
from ema_core._types import Array, LeafKind, Namespace, NonFloatPolicy, Value
from ema_core.backends import host
from ema_core.backends._numpy_memory import leaf_signature, raw_view, same_signature
from ema_core.backends.host import _threads

__all__ = [
    "PLAN_MEMO",
    "guard",
    "leaf_signature",
    "route",
    "same_signature",
    "update_leaves",
    "workers",
]

#: ``update_leaves`` takes a ``memo`` from the plan cache (``ema_core._stateless``).
PLAN_MEMO = True

Route = Literal["engine", "copy", "keep", "generic"]

#: Array types the engine blends: ``np.memmap`` (a model too big for memory) is an ndarray
#: whose arithmetic is numpy's own, so it takes the engine (the generic route would allocate
#: model-sized temporaries); other subclasses keep their own arithmetic (``np.ma`` arrays are
#: refused by the leaf checks).
_PLAIN = (np.ndarray, np.memmap)


def guard() -> np.errstate:
    """The context ``init``, ``update`` and ``average`` run in: numpy's floating-point errors
    ignored, so a cast that overflows (``Config(dtype="float32")`` over float64 params) or an
    inf in a bias-corrected read gives IEEE's value, never a ``RuntimeWarning``."""
    return np.errstate(all="ignore")


def route(s: Array, p: Array, kind: LeafKind, decay: float, non_float: NonFloatPolicy) -> Route:
    """Which code updates this leaf (the table in the module docstring)."""
    if kind == "exact":
        return "copy" if non_float == "copy" else "keep"
    if decay == 1.0:
        return "keep"
    plain = type(s) in _PLAIN and type(p) in _PLAIN
    if plain and s.dtype.kind in "fc" and p.dtype.kind in ("fc" if s.dtype.kind == "c" else "f"):
        return "engine"
    return "generic"


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
    memo: dict[Any, Any] | None = None,
) -> list[Array]:
    """Blend float leaves through the host engine and copy exact ones; in place where
    ``writes`` says, else into new arrays (the inputs untouched).

    ``memo`` (from the stateless call's plan cache, only for arrays it has just found
    unchanged) keeps the routes and the engine's plan between calls (``_Kept``).

    ``s <- s + (1 - d) (p - s)`` per float leaf, bit for bit as the generic backend computes
    it. A decay of 1 returns each float shadow itself; a decay of 0 copies the params exactly;
    integer and bool leaves take the params (``non_float="copy"``) on every call.

    Raises:
        ValueError: on the first use, ``EMA_CORE_NUMPY_THREADS`` is set but not an integer
            >= 1, or ``EMA_CORE_NUMBA`` not 0 or 1 (before any write).

    Example:
        >>> import numpy as np
        >>> from ema_core.backends import numpy as backend
        >>> s, p = np.zeros(3, np.float32), np.ones(3, np.float16)
        >>> out = backend.update_leaves(
        ...     np, [s], [p], ["float"], 0.75, 0.25, non_float="copy", writes=[True]
        ... )
        >>> out[0] is s, s
        (True, array([0.25, 0.25, 0.25], dtype=float32))
    """
    d, r = float(decay), float(rate)
    threads = workers()
    with np.errstate(all="ignore"):  # IEEE results, never a stop half way (module docstring)
        return _update(xp, shadows, params, kinds, d, r, non_float, writes, memo, threads)


def _update(
    xp: Namespace,
    shadows: Sequence[Array],
    params: Sequence[Array],
    kinds: Sequence[LeafKind],
    d: float,
    r: float,
    non_float: NonFloatPolicy,
    writes: Sequence[bool],
    memo: dict[Any, Any] | None,
    threads: int,
) -> list[Array]:
    if memo is not None and all(writes):
        kept = memo.get("kept")
        if kept is None or kept.threads != threads:
            kept = memo["kept"] = _Kept.make(shadows, params, kinds, non_float, threads)
        if kept is not None:
            return kept.run(xp, shadows, params, d, r)
        memo["kept"] = None  # not every engine leaf can be kept: plan per call
    out: list[Array] = []
    engine_s: list[np.ndarray] = []
    engine_p: list[np.ndarray] = []
    for s, p, kind, write in zip(shadows, params, kinds, writes, strict=True):
        match route(s, p, kind, d, non_float):
            case "keep":
                out.append(s)
            case "copy":
                out.append(_copy(s, p, write))
            case "engine" if not write or s.flags.writeable:
                target = s if write else np.array(s, copy=True)
                engine_s.append(target if type(target) is np.ndarray else target.view(np.ndarray))
                engine_p.append(p if type(p) is np.ndarray else p.view(np.ndarray))
                out.append(target)
            case _:
                out.append(_generic(xp, s, p, d, r, write))
    if engine_s:
        host.run(host.plan(engine_s, engine_p, workers=threads), d, r)
    return out


class _Kept:
    """The routes and the engine plan of one cached set of arrays, all written in place.

    The plan is made over raw views of the arrays' memory (``raw_view``), which hold no reference
    to the arrays: the cache drops this when any array dies (``ema_core._stateless``), so the
    views are never used after, and the cache keeps no caller's array alive. Only C-contiguous
    engine leaves can be seen so; with any other, ``make`` returns None (planned per call)."""

    def __init__(
        self, threads: int, copy: list[int], generic: list[int], plan: host.Plan | None
    ) -> None:
        self.threads, self.copy, self.generic, self.plan = threads, copy, generic, plan

    @classmethod
    def make(
        cls,
        shadows: Sequence[Array],
        params: Sequence[Array],
        kinds: Sequence[LeafKind],
        non_float: NonFloatPolicy,
        threads: int,
    ) -> _Kept | None:
        copy, generic, engine = [], [], []
        for i, (s, p, kind) in enumerate(zip(shadows, params, kinds, strict=True)):
            match route(s, p, kind, 0.5, non_float):
                case "copy":
                    copy.append(i)
                case "engine" if s.flags.writeable:
                    if not (s.flags.c_contiguous and p.flags.c_contiguous):
                        return None
                    engine.append(i)
                case "generic" | "engine":
                    generic.append(i)
        views = [(raw_view(shadows[i]), raw_view(params[i])) for i in engine if shadows[i].size]
        plan = None
        if views:
            plan = host.plan([s for s, _ in views], [p for _, p in views], workers=threads)
        return cls(threads, copy, generic, plan)

    def run(
        self, xp: Namespace, shadows: Sequence[Array], params: Sequence[Array], d: float, r: float
    ) -> list[Array]:
        """The update, as ``update_leaves`` routes it, all in place."""
        out = list(shadows)
        for i in self.copy:
            _copy(shadows[i], params[i], True)
        if d == 1.0:
            return out
        for i in self.generic:
            out[i] = _generic(xp, shadows[i], params[i], d, r, True)
        if self.plan is not None:
            host.run(self.plan, d, r)
        return out


def workers() -> int:
    """The engine's threads: ``EMA_CORE_NUMPY_THREADS``, or the usable CPUs (at most 4).

    Raises:
        ValueError: on the first use, a setting has a value it does not allow.
    """
    return settings().numpy_threads or _threads.usable_cpus(4)


def _copy(s: np.ndarray, p: np.ndarray, write: bool) -> np.ndarray:
    """An integer or bool leaf: the params, bit for bit, in place or as a new array."""
    if not write:
        return np.array(p, copy=True)
    np.copyto(s, p)
    return s


def _generic(xp: Namespace, s: Array, p: Array, d: float, r: float, write: bool) -> Array:
    """A leaf the engine does not take: the core's blend, written back where asked."""
    new = _core.blend(xp, s, p, d, r)
    if write and new is not s:
        s[...] = new
        return s
    return new
