"""A bank of K shadows of the same params, blended in one pass over the params (host engine).

``plan`` takes, per leaf, the params and its K shadows (numpy arrays; bfloat16 params as their
uint16 bit patterns, flagged ``"bfloat16"``) and makes, once, the work of an update; ``run``
does it, in place, with one decay per shadow. Each shadow ends bit-equal to what the single
engine (``host.run``) gives it with its own decay, and the params are read once per update
instead of K times: ``8K + 4`` bytes per float32 element instead of ``12K``.

* With numba (``_numba.usable()``): one compiled call per thread and dtype group
  (``_bank_loops``): per element, the params are read (and widened) once and the K shadows
  blended with them.
* Without: the engine's numpy blocks (``_blocks.blend_``) per block of params and shadow, the
  params block reused from the cache by the K blends.
* Leaves are flat (C-contiguous); large ones are cut into pieces of whole blocks, dealt over
  ``workers`` threads (``_threads.run_shares``; at least ``LEAST`` elements a thread).
* Ends, per shadow: decay 1 writes nothing; decay 0 copies the params exactly (``_blocks.copy_``,
  as ``host.run`` does).

``form="lerp-fma"`` / ``"lerp-muladd"`` (same-dtype leaves, compiled path only) switch the
arithmetic to torch's CPU ``lerp_`` with a float32 weight ``w = 1 - decay`` rounded once:
``s + w (p - s)`` when ``|w| < 0.5`` else ``p - (1 - w)(p - s)``, with or without a fused
multiply-add; the torch bank uses it where a probe found torch's own ``lerp_`` computing so.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from ema_core.backends.host import _blocks, _numba, _threads
from ema_core.backends.host._numba import ParamsFormat

__all__ = ["BLOCK", "LEAST", "Form", "Piece", "Plan", "modes", "plan", "run"]

#: Large leaves are cut for the threads into pieces of whole multiples of this many elements.
BLOCK = 65536
#: Elements per thread at least: smaller banks run on the calling thread.
LEAST = 1 << 20
#: The arithmetic: the core's lerp (every engine path), or torch's CPU ``lerp_`` (see above).
Form = Literal["core", "lerp-fma", "lerp-muladd"]
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class Piece(NamedTuple):
    """One leaf, or a flat piece of one: its params and its K shadows (flat views)."""

    params: np.ndarray
    shadows: tuple[np.ndarray, ...]
    params_format: ParamsFormat


class Plan(NamedTuple):
    """The work of one bank update, built once (``plan``) and run per K decays (``run``).

    Attributes:
        shares: the pieces per thread (the first share runs on the calling thread).
        leaves: every leaf, whole (the decay-0 copies go through these).
        form: the arithmetic of the blends.
        size: K, the shadows per leaf.
        typed: each share as the compiled loops' typed lists, once built (``_compiled``).
    """

    shares: list[list[Piece]]
    leaves: list[Piece]
    form: Form
    size: int
    typed: list[list[Any]]


def plan(
    shadows: Sequence[Sequence[np.ndarray]],
    params: Sequence[np.ndarray],
    formats: Sequence[ParamsFormat] | None = None,
    *,
    form: Form = "core",
    workers: int = 1,
) -> Plan:
    """The work of blending ``params`` into ``K = len(shadows)`` sets of shadows in place.

    Args:
        shadows: K sequences, one per shadow set, each holding one writeable float32/float64
            C-contiguous array per params array (the same dtype across the K sets).
        params: C-contiguous numpy floats no wider than their shadows, or uint16 bit patterns
            where ``formats`` says ``"bfloat16"`` (default: all ``"float"``).
        form: ``"core"``, or a torch ``lerp_`` form (only for params of the shadows' dtype).
        workers: the threads to deal the work over (the caller is one).

    Raises:
        ValueError: no shadow set, a set of another length, a shape or dtype that does not fit,
            a read-only or non-contiguous array, or a torch form over other dtypes (nothing is
            written: a plan writes nothing).
    """
    k = len(shadows)
    if k == 0 or any(len(group) != len(params) for group in shadows):
        got = [len(group) for group in shadows]
        raise ValueError(
            f"shadows: K >= 1 sequences of {len(params)} arrays (one per params array) are "
            f"needed, got lengths {got}"
        )
    fmts: list[ParamsFormat] = list(formats) if formats is not None else ["float"] * len(params)
    leaves = [
        _leaf(j, p, tuple(group[j] for group in shadows), f, form)
        for j, (p, f) in enumerate(zip(params, fmts, strict=True))
    ]
    leaves = [leaf for leaf in leaves if leaf.params.size]
    return Plan(_share(leaves, workers), leaves, form, k, [])


def run(work: Plan, decays: Sequence[float], rates: Sequence[float]) -> None:
    """Blend shadow set ``k`` with ``decays[k]`` (weight on the old average, ``rates[k] =
    1 - decays[k]``, host floats), in place: 1 writes nothing, 0 copies the params exactly.

    Raises:
        ValueError: not K decays and K rates, or a torch form without numba.
    """
    d, r = [float(x) for x in decays], [float(x) for x in rates]
    if len(d) != work.size or len(r) != work.size:
        raise ValueError(f"decays and rates: {work.size} each are needed, got {len(d)}, {len(r)}")
    compiled = _numba.usable()
    if work.form != "core" and not compiled:
        raise ValueError(f"form={work.form!r} runs only in the compiled loops (numba)")
    for k, decay in enumerate(d):
        if decay == 0.0:
            for leaf in work.leaves:
                _blocks.copy_(leaf.shadows[k], leaf.params, leaf.params_format)
    if all(x in (0.0, 1.0) for x in d):
        return
    if compiled:
        do = functools.partial(_compiled_share, form=work.form, decays=d, rates=r)
        _threads.run_shares(_compiled(work), do)
        return
    each = functools.partial(_numpy_piece, decays=d, rates=r)
    _threads.run_shares(work.shares, each)  # type: ignore[arg-type]


def modes(
    form: Form, dtype: np.dtype[Any], decays: list[float], rates: list[float]
) -> tuple[tuple[Any, ...], tuple[bool, ...], tuple[bool, ...], bool]:
    """The compiled loops' per-shadow arguments (``_bank_loops``): coefficients in ``dtype``,
    ``from_shadow``, ``skip`` (decay 1, or 0: copied before), and whether the form is fused.

    The core's lerp: ``s + (p - s) * (1 - d)`` when d >= 0.5, else ``p + (p - s) * (-d)``
    (``p - (p - s) * d`` exactly). torch's: ``w = 1 - d`` rounded to ``dtype``, then
    ``s + (p - s) * w`` when ``|w| < 0.5`` else ``p + (p - s) * (w - 1)``.
    """
    coeffs, starts, skips = [], [], []
    for d, r in zip(decays, rates, strict=True):
        if form == "core":
            c, start = (dtype.type(r), True) if d >= 0.5 else (-dtype.type(d), False)
        else:
            w = dtype.type(r)  # torch's weight, rounded once to the tensor's dtype
            c, start = (w, True) if abs(w) < 0.5 else (w - dtype.type(1), False)
        coeffs.append(c)
        starts.append(start)
        skips.append(d in (0.0, 1.0))
    return tuple(coeffs), tuple(starts), tuple(skips), form == "lerp-fma"


def _leaf(j: int, p: np.ndarray, shadows: tuple[np.ndarray, ...], fmt: str, form: Form) -> Piece:
    """A checked leaf, seen flat."""
    half = fmt == "bfloat16"
    if (p.dtype != np.uint16) if half else (p.dtype.kind != "f"):
        raise ValueError(f"params #{j}: dtype {p.dtype} does not hold {fmt} elements")
    for k, s in enumerate(shadows):
        where = f"shadow set {k}, array #{j}"
        if s.shape != p.shape:
            raise ValueError(f"{where}: shape {s.shape}, but its params have shape {p.shape}")
        if s.dtype not in _FLOATS or s.dtype != shadows[0].dtype or not s.flags.writeable:
            raise ValueError(
                f"{where}: a writeable float32 or float64 array of the other sets' dtype is "
                f"needed, got {s.dtype} (writeable={s.flags.writeable})"
            )
        if not (s.flags.c_contiguous and p.flags.c_contiguous):
            raise ValueError(f"{where}: the arrays must be C-contiguous (the bank sees them flat)")
    wide = 2 if half else p.dtype.itemsize
    if wide > shadows[0].dtype.itemsize or (form != "core" and p.dtype != shadows[0].dtype):
        raise ValueError(
            f"params #{j}: {fmt} {p.dtype} into {shadows[0].dtype} shadows is not allowed with "
            f"form={form!r} (params no wider than the shadows; torch forms: the same dtype)"
        )
    return Piece(p.reshape(-1), tuple(s.reshape(-1) for s in shadows), fmt)  # type: ignore[arg-type]


def _share(leaves: list[Piece], workers: int) -> list[list[Piece]]:
    """The leaves dealt in order into at most ``workers`` runs of about equal size, at least
    ``LEAST`` elements each, leaves larger than a quarter of a run cut into whole blocks."""
    total = sum(leaf.params.size for leaf in leaves)
    workers = max(1, min(workers, total // LEAST))
    shares: list[list[Piece]] = [[] for _ in range(workers)]
    most = max(BLOCK, (total // (4 * workers)) // BLOCK * BLOCK)
    done = 0
    for leaf in leaves:
        n = leaf.params.size
        step = n if n <= most or workers == 1 else most
        for a in range(0, n, step):
            piece = Piece(leaf.params[a : a + step], tuple(s[a : a + step] for s in leaf.shadows),
                          leaf.params_format)  # fmt: skip
            shares[min(workers - 1, done * workers // max(total, 1))].append(piece)
            done += piece.params.size
    return shares


def _numpy_piece(piece: Piece, *, decays: list[float], rates: list[float]) -> None:
    """One piece through the engine's numpy blocks, block by block, K blends each."""
    p, fmt, size = piece.params, piece.params_format, _blocks.BLOCK
    for a in range(0, p.size, size):
        block = p[a : a + size]
        for s, d, r in zip(piece.shadows, decays, rates, strict=True):
            if d not in (0.0, 1.0):
                _blocks.blend_(s[a : a + size], block, fmt, d, r)


def _compiled(work: Plan) -> list[list[Any]]:
    """Each share's typed lists for the compiled loops, built on the first compiled run and
    kept in the plan (a typed list costs microseconds per array to build)."""
    if not work.typed:
        from ema_core.backends.host import _bank_loops  # numba is imported here, once

        work.typed.extend([_bank_loops.typed_groups(share)] for share in work.shares)
    return work.typed


def _compiled_share(
    groups: list[Any], *, form: Form, decays: list[float], rates: list[float]
) -> None:
    """One thread's share through the compiled loops: one call per (dtypes, format) group."""
    for kernel, shadow_dtype, part, shadows, params in groups:
        kernel(shadows, params, *modes(form, shadow_dtype, decays[part], rates[part]))
