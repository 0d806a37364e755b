"""The host (CPU) engine: one plan over flat host views, used by numpy and by torch on the CPU.

``plan`` takes shadows and params as numpy arrays (a torch CPU tensor seen as one without a
copy; bfloat16 params as their uint16 bit patterns, flagged ``"bfloat16"``) and makes, once,
the work of an update; ``run`` does it, in place, for one decay. The plan:

* leaves of at most ``SMALL`` elements, flat, with the same dtypes: batched, up to ``BLOCK``
  elements a batch (with numba, one compiled call per batch over a table of the leaves'
  addresses; without it, gathered into a per-thread scratch, blended by the numpy blocks,
  scattered back);
* large contiguous leaves, seen flat: cut into pieces, one share per thread;
* strided leaves: cut into slabs of whole rows along their first axis;
* the pieces dealt over ``workers`` threads (``_threads``), at least ``LEAST`` elements each.

Each piece runs numba's compiled one-pass loop when it fits (``_numba``: float32/float64
shadows, params no wider, float16/bfloat16 widened inside the loop; the loops themselves in
``_numba_loops``, a batch of small leaves in one call over a table of their addresses in
``_numba_tables``, both importing numba on first use) and numba is usable (installed,
``EMA_CORE_NUMBA`` not 0), else the numpy blocks (``_blocks``: three ufuncs per cache-sized
block; any float or complex pair). Both are the core's lerp step by step, so every path is
bit-equal to ``ema_core._core.blend``. The ends are exact: decay 1 leaves the shadows
untouched, decay 0 copies the params (half params widened exactly, inf and NaN kept).

EMA banks: ``_bank`` blends K shadows of the same params in one pass over the params (its own
``plan`` and ``run``; numba's loops for it in ``_bank_loops``, else the numpy blocks), each
shadow bit-equal to what ``run`` here gives it with its own decay.

Threads: numba's own ``parallel=True`` / ``prange`` was measured against the hand-written
dealing kept here (``python scripts/threads_vs_prange.py``: in-place fp32 blend, median of 15,
2-core EPYC). Three quiet runs: one 25M-element leaf 8.0-9.0 ms on one thread, 6.4-7.4 ms dealt
over 2 threads, 5.2-6.9 ms with ``prange``; ResNet-50's 161 leaves 10.1-13.2 ms one leaf at a
time, 8.4-8.7 ms dealt, 7.9-8.9 ms with ``prange`` per leaf. So ``prange`` wins on one huge
leaf and ties on a real model. The dealing stays: numba's default threading layer
(workqueue) aborts when two Python threads enter it at once (two EMAs updated from two
threads), the numpy blocks without numba need the dealing anyway, and one mechanism serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ema_core.backends.host import _blocks, _numba, _threads
from ema_core.backends.host._numba import ParamsFormat
from ema_core.backends.host._threads import Batch, Item, Leaf

__all__ = [
    "BLOCK",
    "LEAST",
    "SMALL",
    "Batch",
    "Leaf",
    "ParamsFormat",
    "Plan",
    "compiled",
    "plan",
    "run",
]

BLOCK = _blocks.BLOCK
#: Leaves of at most this many elements are blended together through one gathered block.
SMALL = 4096
#: Elements per thread at least: updates below twice this run on the calling thread.
LEAST = 1 << 20
_SHADOW_KINDS = "fc"


class Plan(NamedTuple):
    """The work of one update, built once (``plan``) and run per decay (``run``).

    Attributes:
        shares: the work items per thread (the first one runs on the calling thread).
        leaves: every leaf, whole and in place (the decay-0 copy goes through these).
    """

    shares: list[list[Item]]
    leaves: list[Leaf]


def plan(
    shadows: Sequence[np.ndarray],
    params: Sequence[np.ndarray],
    formats: Sequence[ParamsFormat] | None = None,
    *,
    workers: int = 1,
) -> Plan:
    """The work of blending ``params`` into ``shadows`` in place, dealt over ``workers``.

    Args:
        shadows: writeable float or complex arrays, blended in place.
        params: arrays of the shadows' shapes: numpy floats, or uint16 bit patterns where
            ``formats`` says ``"bfloat16"`` (default: all ``"float"``).
        workers: the threads to deal the work over (the caller is one).

    Raises:
        ValueError: a pair's shapes differ, a shadow is read-only or not float, or params
            are not what their format says (nothing is written: a plan writes nothing).
    """
    fmts: list[ParamsFormat] = list(formats) if formats is not None else ["float"] * len(shadows)
    leaves = [
        _leaf(i, s, p, f) for i, (s, p, f) in enumerate(zip(shadows, params, fmts, strict=True))
    ]
    leaves = [leaf for leaf in leaves if leaf.shadow.size]
    return Plan(_threads.share(_batched(leaves), workers, least=LEAST, grain=BLOCK), leaves)


def compiled() -> bool:
    """Whether ``run`` blends through numba's compiled loops (else the numpy blocks)."""
    return _numba.usable()


def run(work: Plan, decay: float, rate: float) -> None:
    """Blend in place with ``decay`` (weight on the old average, ``rate = 1 - decay``, host
    floats): 1 writes nothing, 0 copies the params exactly, anything else blends."""
    d, r = float(decay), float(rate)
    if d == 1.0:
        return
    if d == 0.0:
        for s, p, fmt in work.leaves:
            _blocks.copy_(s, p, fmt)
        return
    compiled = _numba.usable()

    def do(item: Item) -> None:
        _blend_item(item, d, r, compiled)

    _threads.run_shares(work.shares, do)


def _leaf(i: int, s: np.ndarray, p: np.ndarray, fmt: ParamsFormat) -> Leaf:
    """A checked pair, seen flat when both arrays are C-contiguous."""
    half = fmt == "bfloat16"
    if s.shape != p.shape:
        raise ValueError(f"params #{i}: shape {p.shape}, but its shadow has shape {s.shape}")
    if s.dtype.kind not in _SHADOW_KINDS or not s.flags.writeable:
        raise ValueError(f"shadow #{i}: a writeable float array is needed, got {s.dtype}")
    if (p.dtype != np.uint16) if half else (p.dtype.kind not in _SHADOW_KINDS):
        raise ValueError(f"params #{i}: dtype {p.dtype} does not hold {fmt} elements")
    if s.ndim != 1 and s.flags.c_contiguous and p.flags.c_contiguous:
        return Leaf(s.reshape(-1), p.reshape(-1), fmt)
    return Leaf(s, p, fmt)


def _batched(leaves: list[Leaf]) -> list[Item]:
    """Work items: small flat leaves in batches of equal dtypes and format (at most ``BLOCK``
    elements each), the others one by one."""
    items: list[Leaf | list[Leaf]] = []
    open_batches: dict[tuple[Any, ...], tuple[list[Leaf], list[int]]] = {}
    for leaf in leaves:
        s, p, fmt = leaf
        n = s.size
        if n > SMALL or s.ndim != 1 or not (s.flags.c_contiguous and p.flags.c_contiguous):
            items.append(leaf)
            continue
        key = (s.dtype, p.dtype, fmt)
        batch, filled = open_batches.get(key, ([], [BLOCK]))
        if filled[0] + n > BLOCK:
            batch, filled = open_batches[key] = ([], [0])
            items.append(batch)
        batch.append(leaf)
        filled[0] += n
    return [item if isinstance(item, Leaf) else _batch(item) for item in items]


def _batch(leaves: list[Leaf]) -> Batch:
    table = _numba.table(leaves) if _numba.usable() and len(leaves) > 1 else None
    return Batch(leaves, table, sum(leaf.shadow.size for leaf in leaves))


def _blend_item(item: Item, d: float, r: float, compiled: bool) -> None:
    """Blend one work item: a leaf or a piece, or a batch by its table or gathered into scratch
    blocks."""
    if isinstance(item, Leaf):
        _blend_leaf(item, d, r, compiled)
        return
    leaves = item.leaves
    if len(leaves) == 1:
        _blend_leaf(leaves[0], d, r, compiled)
        return
    if compiled and item.table is not None:  # one compiled call: no gather, no scatter
        _numba.apply_table(item.table, d, r)
        return
    first = leaves[0]
    sizes = [leaf.shadow.size for leaf in leaves]
    gs = _blocks.scratch(first.shadow.dtype, item.size, "gather_shadow")
    gp = _blocks.scratch(first.params.dtype, item.size, "gather_params")
    np.concatenate([leaf.shadow for leaf in leaves], out=gs)
    np.concatenate([leaf.params for leaf in leaves], out=gp)
    _blend_leaf(Leaf(gs, gp, first.params_format), d, r, compiled)
    start = 0
    for leaf, n in zip(leaves, sizes, strict=True):
        leaf.shadow[...] = gs[start : start + n]
        start += n


def _blend_leaf(leaf: Leaf, d: float, r: float, compiled: bool) -> None:
    """One leaf or piece: the compiled loop when one fits, else the numpy blocks."""
    s, p, fmt = leaf
    prepared = _numba.prepare(s, p, fmt) if compiled else None
    if prepared is not None:
        _numba.apply(prepared, d, r)
    else:
        _blocks.blend_(s, p, fmt, d, r)
