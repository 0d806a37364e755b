"""Which shadows may be written in place, checked before the first write.

An array takes an in-place write unless it is a JAX array, read-only, a broadcast view (a stride
of 0: several elements share one memory location), a self-overlapping view (``as_strided``) or
a torch inference tensor outside
``torch.inference_mode``. Arrays written in place must not share memory: the same array twice in
a shadow (tied weights copied with their tie) would be updated twice. Frameworks are recognised
through array-api-compat and ``sys.modules``; none is imported here.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import array_api_compat as compat

from ema_core._memory_overlap import (
    FOREIGN,
    array_kind,
    byte_span,
    memory_key,
    overlap,
    same_elements,
)
from ema_core._paths import Path, path_str
from ema_core._types import Array


def resolve_writes(
    copy: bool | None,
    shadows: Sequence[Array],
    paths: Sequence[Path],
    name: str = "shadow",
    params: Sequence[Array] = (),
) -> list[bool]:
    """Per leaf, whether the result is written into the shadow in place.

    ``copy=True``: never. ``copy=None``: where the array can be written. ``copy=False``:
    always, and a ``ValueError`` when some array cannot be written. A ``ValueError`` too when
    two arrays to be written share memory, or one shares memory with ``params`` (read while it
    is written) other than as the very same elements.
    """
    if copy is not None and not isinstance(copy, bool):
        raise TypeError(f"copy must be None, True or False, got {copy!r}")
    if copy is True:
        return [False] * len(shadows)
    why = [why_not_writeable(s) for s in shadows]
    if copy is False and any(why):
        i = next(i for i, w in enumerate(why) if w)
        raise ValueError(
            f"copy=False needs writeable arrays, but {path_str(name, paths[i])} cannot be "
            f"written in place ({why[i]}); pass copy=None or copy=True"
        )
    writes = [w is None for w in why]
    written = [i for i, w in enumerate(writes) if w]
    if not written or _compiling():  # fake tensors have no memory to compare
        return writes
    keys = list(map(memory_key, shadows))  # the unwritten ones too: they are read
    check_no_shared_memory(shadows, paths, name, keys, writes)
    if params:
        check_apart_from_params(written, [keys[i] for i in written], shadows, params, paths, name)
    return writes


def _compiling() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.compiler.is_compiling())


def why_not_writeable(s: Array) -> str | None:
    """Why ``s`` cannot take an in-place write, or None when it can."""
    kind = array_kind(s)
    unit = 1  # torch strides count elements; numpy's and CuPy's count bytes
    if kind == "torch" or (kind == "other" and compat.is_torch_array(s)):
        strides = s.stride()
        if s.is_inference() and not sys.modules["torch"].is_inference_mode_enabled():
            return "an inference tensor outside torch.inference_mode"
    elif kind in ("numpy", "strict"):
        s = getattr(s, "_array", s)
        if not s.flags.writeable:
            return "read-only"
        strides, unit = s.strides, s.itemsize
    elif not compat.is_writeable_array(s):
        return "read-only"
    else:
        strides, unit = getattr(s, "strides", None), getattr(s, "itemsize", 1)
    return _shared_elements(tuple(s.shape), tuple(strides or ()), unit)


def _shared_elements(shape: tuple[int, ...], strides: tuple[int, ...], unit: int) -> str | None:
    """Why a layout's elements share memory (a broadcast or self-overlapping view), or None
    (also for no elements: numpy gives an empty array zero strides)."""
    if 0 in shape:
        return None
    if 0 in strides and any(st == 0 and n > 1 for st, n in zip(strides, shape, strict=True)):
        return "a broadcast view: several elements share one memory location"
    if strides and _self_overlapping(shape, strides, unit):
        return "a self-overlapping view (as_strided): several elements share one memory location"
    return None


#: Elements up to which a layout the quick test cannot clear is checked offset by offset;
#: a larger one is taken as overlapping (it is copied, never written in place).
_EXACT_LIMIT = 1 << 16


def _self_overlapping(shape: tuple[int, ...], strides: tuple[int, ...], unit: int) -> bool:
    """Whether two elements of a strided layout lie at one offset. Quick test first: with the
    dimensions sorted by stride, each stride passes the furthest offset the smaller ones reach
    (every contiguous, transposed, sliced or channels-last layout); a layout that fails it (an
    ``as_strided`` view) has its offsets counted."""
    if 0 in shape:
        return False  # no elements
    dims = sorted((abs(st), n) for st, n in zip(strides, shape, strict=True) if n > 1)
    reach = 0
    for stride, n in dims:
        if stride < reach + unit:
            break
        reach += stride * (n - 1)
    else:
        return False
    count = 1
    for _, n in dims:
        count *= n
    if count > _EXACT_LIMIT:
        return True
    offsets = [0]
    for stride, n in dims:
        offsets = [o + stride * i for o in offsets for i in range(n)]
    offsets.sort()
    return any(b - a < unit for a, b in itertools.pairwise(offsets))  # shared or partly shared


def check_no_shared_memory(
    arrays: Sequence[Array],
    paths: Sequence[Path],
    name: str,
    keys: Sequence[Any] | None = None,
    writes: Sequence[bool] | None = None,
) -> None:
    """Arrays to be written in place (``writes``, default all) must be distinct objects whose
    memory overlaps no other array's: a written one would be updated twice, or an unwritten
    one read after a write to it.

    Arrays are grouped by the memory they live in (a torch storage, the numpy array owning the
    data: ``keys``, found here when not given); within a group, and across all of them when a
    numpy array lies over foreign memory (a view whose base is no array), byte ranges are
    compared (exactly for numpy when they interleave). Other arrays are compared by identity.
    """
    if len(arrays) < 2 or _compiling():
        return
    keys = list(map(memory_key, arrays)) if keys is None else keys
    written = [True] * len(arrays) if writes is None else writes
    first: dict[int, int] = {}
    groups: dict[Any, list[int]] = {}
    for i, (a, key) in enumerate(zip(arrays, keys, strict=True)):
        j = first.setdefault(id(a), i)
        if j != i and (written[i] or written[j]):
            raise _shared(name, paths[j], paths[i])
        if key is not None:
            groups.setdefault(key, []).append(i)
    loose = groups.pop(FOREIGN, [])
    candidates = loose + [i for g in groups.values() if len(g) > 1 or loose for i in g]
    spans = sorted((*byte_span(arrays[i]), i) for i in candidates)
    for j, i in _meeting(spans):
        if (written[i] or written[j]) and overlap(arrays[j], arrays[i]):
            raise _shared(name, paths[j], paths[i])


def _meeting(spans: Sequence[tuple[int, int, Any]]) -> Iterator[tuple[Any, Any]]:
    """``(earlier, later)`` for every two of the ``(lo, hi, tag)`` byte ranges (sorted by
    ``lo``) that intersect: each range is held open until a later one starts at or after its
    end, so a long range (an interleaved view across a buffer) hides no pair inside it."""
    open_: list[tuple[int, Any]] = []
    for lo, hi, tag in spans:
        if lo >= hi:
            continue  # an empty array shares nothing
        open_ = [(end, other) for end, other in open_ if end > lo]
        for _, other in open_:
            yield other, tag
        open_.append((hi, tag))


def check_apart_from_params(
    written: Sequence[int],
    keys: Sequence[Any],
    shadows: Sequence[Array],
    params: Sequence[Array],
    paths: Sequence[Path],
    name: str,
) -> None:
    """A shadow written in place (``written``, whose memory owners are ``keys``) may share
    memory with the params only as the very same elements of its own params leaf (the shadow
    is them, or the same view): any other overlap would read params the update has already
    overwritten. Compared as ``check_no_shared_memory`` compares: by owner, then byte ranges."""
    p_keys = list(map(memory_key, params))
    s_set, p_set = set(keys), set(p_keys)
    common = s_set | p_set if FOREIGN in s_set | p_set else s_set & p_set
    common.discard(None)
    if not common:
        return
    near = [(i, 0) for i, k in zip(written, keys, strict=True) if k in common]
    near += [(i, 1) for i, k in enumerate(p_keys) if k in common]
    sides = (shadows, params)
    spans = sorted((*byte_span(sides[side][i]), (side, i)) for i, side in near)
    for (side_a, a), (side_b, b) in _meeting(spans):
        if side_a == side_b:
            continue  # two shadows (checked above) or two params (only read)
        s_i, p_i = (a, b) if side_a == 0 else (b, a)
        same = s_i == p_i and same_elements(shadows[s_i], params[p_i])  # its own params
        if not same and overlap(shadows[s_i], params[p_i]):
            raise ValueError(
                f"{path_str(name, paths[s_i])} and {path_str('params', paths[p_i])} share "
                "memory; an in-place update would read params it has already written: give "
                "the shadow its own array, or pass copy=True"
            )


def _shared(name: str, a: Path, b: Path) -> ValueError:
    return ValueError(
        f"{path_str(name, a)} and {path_str(name, b)} share memory (one array twice, or "
        "overlapping views); an in-place update would apply twice: give each leaf its own "
        "array, or pass copy=True"
    )
