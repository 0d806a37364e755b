"""The numpy backend: the blend in place, one pass per leaf, with no model-sized temporaries.

With numba installed, each contiguous float leaf (float32/float64 shadows; float16 params
widened inside the loop) is blended by one compiled loop (``_numba``): one read of the params,
one read and one write of the shadow, as ``a += b`` moves. Otherwise, and for strided or
unusual leaves, each leaf is cut into blocks of ``BLOCK`` elements and each block runs three
ufuncs with ``out=`` while it sits in the L2 cache: ``p - s`` into a reused scratch block,
times ``1 - d`` (d >= 0.5) or ``d``, then ``s +`` (or ``p -``) that into the shadow. Both are
the core's lerp steps in the same order and precision (float32 or wider), hence bit-equal to
the generic backend. Leaves of at most ``SMALL`` elements with equal dtypes are gathered into
one block and scattered back. Updates above ``PARALLEL_MIN`` elements are split over
``EMA_CORE_NUMPY_THREADS`` threads (default: usable CPUs, at most 4; ``_threads``); like
``EMA_CORE_NUMBA``, it is read once (``ema_core._settings``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ema_core._settings import settings
from ema_core._types import Array, LeafKind, Namespace, NonFloatPolicy, Value
from ema_core.backends import _numba, _threads
from ema_core.backends._threads import Item, Job
from ema_core.backends.generic import guard

__all__ = ["BLOCK", "SMALL", "guard", "update_leaves"]

#: Elements per block: three float32 blocks (shadow, params, scratch) use 768 KiB of L2 cache.
BLOCK = 65536
#: Leaves of at most this many elements are blended together through one flat block.
SMALL = 4096
#: Updates smaller than this many elements run on the calling thread.
PARALLEL_MIN = 1 << 22

_LOCAL = threading.local()


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
    """Blend float leaves in one pass or block by block, copy exact ones; in place where
    ``writes`` says.

    ``s <- s + (1 - d) (p - s)`` per float leaf, bit for bit as the generic backend computes
    it. A decay of 1 returns each float shadow itself (as the generic backend does); a decay of 0
    copies the params exactly; integer and bool leaves take the params (``non_float="copy"``)
    on every call, a decay of 1 included.

    Args:
        xp: the namespace (unused: the arrays are numpy's).
        shadows, params: the leaves, pairwise of equal shapes; kinds: "float" or "exact".
        decay, rate: the decay and ``1 - decay``, Python floats or host 0-d arrays.
        non_float: "copy" copies exact leaves, anything else keeps them.
        writes: per leaf, write into the shadow and return it, or return a new array.

    Returns:
        The new leaves, in order.

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
    workers = settings().numpy_threads or _threads.usable_cpus(4)
    out: list[Array] = []
    jobs: list[Job] = []
    for s, p, kind, write in zip(shadows, params, kinds, writes, strict=True):
        if kind != "float" or d == 1.0:
            out.append(_keep_or_copy(s, p, kind, non_float, write))
            continue
        target = s if write else np.empty_like(s)
        if d == 0.0:
            np.copyto(target, p, casting="same_kind")
        else:
            jobs.append((target, s, p))
        out.append(target)
    if jobs:
        items = _group_small(jobs)
        _threads.run(items, lambda item: _do(item, d, r), workers, least=PARALLEL_MIN // 2,
                     grain=BLOCK)  # fmt: skip
    return out


def _keep_or_copy(
    s: np.ndarray, p: np.ndarray, kind: LeafKind, non_float: NonFloatPolicy, write: bool
) -> np.ndarray:
    """A leaf that is not blended: kept (a float leaf at decay 1, a frozen one) or copied
    exactly (integer, bool: at every decay, 1 included)."""
    if kind == "float" or non_float != "copy":
        return s
    if not write:
        return np.array(p, copy=True)
    np.copyto(s, p)
    return s


def _compute_dtype(shadow: np.ndarray) -> np.dtype[Any]:
    """float32, or the shadow's dtype when it is wider (float64, complex)."""
    if shadow.dtype.itemsize < 4 and shadow.dtype.kind == "f":
        return np.dtype(np.float32)
    return shadow.dtype


def _blend(o: np.ndarray, s: np.ndarray, p: np.ndarray, d: float, r: float) -> None:
    """One block: ``o = s + r * (p - s)`` (d >= 0.5) or ``o = p - d * (p - s)``, in cache."""
    ct = _compute_dtype(o)
    buf = _scratch(ct, s.size).reshape(s.shape)
    np.subtract(p, s, out=buf, dtype=ct)
    if d >= 0.5:
        np.multiply(buf, _factor(ct, r), out=buf)
        np.add(s, buf, out=o, dtype=ct)
    else:
        np.multiply(buf, _factor(ct, d), out=buf)
        np.subtract(p, buf, out=o, dtype=ct)


def _one_pass(o: np.ndarray, s: np.ndarray, p: np.ndarray, d: float, r: float) -> bool:
    """The compiled one-pass blend of contiguous arrays (``_numba``), if one fits."""
    flat_s = s.reshape(-1)
    return _numba.blend_(flat_s if o is s else o.reshape(-1), flat_s, p.reshape(-1), d, r)


@functools.lru_cache(maxsize=64)
def _factor(dtype: np.dtype[Any], value: float) -> np.ndarray:
    """``value`` as a 0-d array of ``dtype``: rounded once, as numpy rounds a Python float."""
    return np.asarray(value, dtype=dtype)


def _scratch(dtype: np.dtype[Any], size: int, tag: str = "blend") -> np.ndarray:
    """This thread's reused scratch block ``tag`` of ``dtype``, cut to ``size`` elements."""
    cache: dict[tuple[str, Any], np.ndarray] = _LOCAL.__dict__.setdefault("scratch", {})
    buf = cache.get((tag, dtype))
    if buf is None or buf.size < size:
        buf = cache[tag, dtype] = np.empty(max(size, BLOCK), dtype)
    return buf[:size]


def _blocks(job: Job) -> Iterator[Job]:
    """Cache-sized views of one job: flat slices when contiguous, else slabs along axis 0."""
    o, s, p = job
    if _threads.flat(job):
        flat = [a.reshape(-1) for a in job]
        for i in range(0, o.size, BLOCK):
            yield flat[0][i : i + BLOCK], flat[1][i : i + BLOCK], flat[2][i : i + BLOCK]
        return
    row = o.size // o.shape[0] if o.shape[0] else 1
    step = max(1, BLOCK // max(row, 1))
    for i in range(0, o.shape[0], step):
        yield o[i : i + step], s[i : i + step], p[i : i + step]


def _group_small(jobs: list[Job]) -> list[Item]:
    """Work items: large leaves as they are, small contiguous ones in batches of same dtypes
    holding at most ``BLOCK`` elements together."""
    items: list[Item] = []
    batches: dict[tuple[int, int], tuple[list[Job], list[int]]] = {}
    for job in jobs:
        o, s, p = job
        n = o.size
        if n > SMALL or not _threads.flat(job):
            items.append(job)
            continue
        key = (id(s.dtype), id(p.dtype))  # equal dtypes may differ in id: harmless, new batch
        batch, filled = batches.get(key, ([], [BLOCK]))
        if filled[0] + n > BLOCK:
            batch, filled = batches[key] = ([], [0])
            items.append(batch)
        batch.append(job)
        filled[0] += n
    return items


def _do(item: Item, d: float, r: float) -> None:
    """Blend one work item: a leaf in one pass or block by block, or a batch of small leaves
    gathered flat."""
    if isinstance(item, tuple) or len(item) == 1:
        job = item if isinstance(item, tuple) else item[0]
        if not (_threads.flat(job) and _one_pass(*job, d, r)):
            for o, s, p in _blocks(job):
                _blend(o, s, p, d, r)
        return
    sizes = [o.size for o, _, _ in item]
    gs = _scratch(item[0][1].dtype, sum(sizes), "gather_shadow")
    gp = _scratch(item[0][2].dtype, sum(sizes), "gather_params")
    np.concatenate([s for _, s, _ in item], axis=None, out=gs)
    np.concatenate([p for _, _, p in item], axis=None, out=gp)
    if not _one_pass(gs, gs, gp, d, r):
        _blend(gs, gs, gp, d, r)
    start = 0
    for (o, _, _), n in zip(item, sizes, strict=True):
        o.reshape(-1)[...] = gs[start : start + n]
        start += n
