"""The Triton kernel of ``_cuda``'s "triton" routes: float32 shadows blended with half params cast
in registers (or float32 params, for the one-pass device-decay route of float32 pairs), torch's
``lerp`` formula, exact ends under a device decay. Half params round each operation (the core's
bits); float32 params fuse each multiply-add as torch's own ``lerp`` does, so a float32 model's
update under a device step (a CUDA graph's) gives the bits of the same int step (the H100 run
of 2026-12-05 found them apart when that route rounded each operation too). One launch covers
many leaves: each program reads its leaf and start from a table (``table`` below: the shadows'
and params' addresses, the sizes, then per chunk of ``BLOCK`` elements its leaf and its first
element). Full chunks load and store unmasked, and with ``ALIGNED`` (every address a multiple
of 16 bytes) the compiler is told so, which lets it use 16-byte loads and stores; the last
chunk of a leaf is masked. ``groups`` sorts the pairs into launches (one per params dtype and
alignment) and leaves the strided pairs out. Triton is imported in the calls, never at import.

The first GPU run (H200, 2026-12-04) launched one kernel per leaf: Triton's Python launch costs
about 17 us, and GPT-2 small's 148 bf16 leaves took 2.9 ms where the bytes need 0.3 ms. The
table's one launch per group (run3, the same day) took 1.236 ms, 5.98 us per leaf beyond the
bytes, and 0.858 ms queued (the ceiling's: 0.289): host work per leaf. Since then a group
keeps its launch (``_launch.Launch``: checked once, ``groups`` and tables made once) while its
pairs stay as they were: on an H100 (2026-12-05, run 2) the ``EMA`` class then took 0.625 ms
on GPT-2 small in bf16 (0.97 of the ceiling queued) and 0.80 us per leaf on 20k tiny bf16
tensors, against 5.90 in run 3 (``python -m benchmarks --routes`` times the host's part on a
CPU).
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import operator
import threading
from typing import Any

import torch

from ema_core.backends.torch import _pairs

__all__ = ["groups", "jit", "kernel", "table", "table_at"]

Pairs = list[tuple[torch.Tensor, torch.Tensor]]
#: Per (params dtype, 16-byte aligned): the shadows' and params' addresses and the sizes.
Groups = dict[tuple[torch.dtype, bool], tuple[list[int], list[int], list[int]]]

#: Tables kept (the last ones used): an EMA passes the same leaves every step, so its table is
#: built once; a CUDA graph's replays read the table its capture saw, kept while it is in here.
TABLES_KEPT = 64
_TABLES: collections.OrderedDict[tuple[Any, ...], tuple[torch.Tensor, int, torch.Tensor]]
_TABLES = collections.OrderedDict()
_TABLES_LOCK = threading.Lock()


def table(
    shadows: list[torch.Tensor], params: list[torch.Tensor], block: int
) -> tuple[torch.Tensor, int]:
    """The kernel's table for contiguous, non-empty pairs on one device, and its chunk count.

    Layout (int64, on the shadows' device): the shadows' addresses, the params' addresses, the
    sizes (one each per leaf), then per chunk of ``block`` elements its leaf and its first
    element. Cached by addresses and sizes (``TABLES_KEPT``): built and copied to the device
    (from pinned memory, no host sync) only for leaves not seen before, so a steady-state
    update, and a captured graph after its warm-up call, copies and allocates nothing.
    """
    s_addr = [s.data_ptr() for s in shadows]
    p_addr = [p.data_ptr() for p in params]
    return table_at(shadows[0].device, s_addr, p_addr, [s.numel() for s in shadows], block)


def table_at(
    device: torch.device, s_addr: list[int], p_addr: list[int], sizes: list[int], block: int
) -> tuple[torch.Tensor, int]:
    """``table`` from the addresses and sizes already read (the launcher reads them once, for
    its alignment groups too)."""
    key = (device, block, *s_addr, *p_addr, *sizes)
    with _TABLES_LOCK:
        hit = _TABLES.get(key)
        if hit is not None:
            _TABLES.move_to_end(key)
            return hit[0], hit[1]
    counts = torch.tensor([(n + block - 1) // block for n in sizes], dtype=torch.int64)
    leaf_of = torch.repeat_interleave(torch.arange(len(sizes)), counts)
    first = torch.cumsum(counts, 0) - counts
    start = (torch.arange(leaf_of.numel()) - first[leaf_of]) * block
    fixed = torch.tensor([*s_addr, *p_addr, *sizes], dtype=torch.int64)
    host = torch.cat([fixed, leaf_of, start])
    if device.type == "cuda":
        host = host.pin_memory()
        on_device = host.to(device, non_blocking=True)
    else:  # Triton's interpreter (CPU tensors)
        on_device = host
    with _TABLES_LOCK:
        _TABLES[key] = (on_device, leaf_of.numel(), host)  # host: pinned until the copy ran
        while len(_TABLES) > TABLES_KEPT:
            _TABLES.popitem(last=False)
    return on_device, leaf_of.numel()


def groups(shadows: list[torch.Tensor], params: list[torch.Tensor]) -> tuple[Groups, Pairs]:
    """The launches ``_cuda`` makes: the contiguous non-empty pairs per (params dtype, 16-byte
    aligned), as the shadows' and params' addresses and the sizes (``table_at``'s arguments);
    and the pairs the kernel does not take: strided ones, params with the negative bit (their
    memory holds ``-p``) and tensor subclasses (a wrapper's ``data_ptr()`` is 0; only plain
    tensors and Parameters are read by address). A model's usual case (every pair plain,
    contiguous, aligned, non-empty, one params dtype, no negative bit) is read list by list
    (``_pairs``)."""
    if (
        shadows
        and _pairs.all_plain(shadows)
        and _pairs.all_plain(params)
        and _pairs.all_contiguous(shadows)
        and _pairs.all_contiguous(params)
        and not any(map(torch.Tensor.is_neg, params))
    ):
        s_addrs, p_addrs = _pairs.addresses(shadows), _pairs.addresses(params)
        sizes = _pairs.sizes(shadows)
        low = functools.reduce(operator.or_, [*s_addrs, *p_addrs], 0)  # any address's low bits
        dtype = params[0].dtype
        if not low & 15 and 0 not in sizes and _pairs.all_dtype(params, dtype):
            return {(dtype, True): (s_addrs, p_addrs, sizes)}, []
    left: Pairs = []
    found: Groups = {}
    for s, p in zip(shadows, params, strict=True):
        plain = type(s) in _pairs.PLAIN and type(p) in _pairs.PLAIN
        if not (plain and s.is_contiguous() and p.is_contiguous()) or p.is_neg():
            left.append((s, p))
        elif n := s.numel():
            s_addr, p_addr = s.data_ptr(), p.data_ptr()
            aligned = s_addr % 16 == 0 and p_addr % 16 == 0
            group = found.setdefault((p.dtype, aligned), ([], [], []))
            group[0].append(s_addr)
            group[1].append(p_addr)
            group[2].append(n)
    return found, left


@functools.cache
def kernel() -> Any:
    """``jit()``, or None without Triton or, unless Triton's interpreter is on (its
    ``knobs.runtime.interpret``, read once as ``triton.jit`` does), CUDA is not available. Only
    direct calls (the CPU suite's check) send CPU tensors: ``triton_usable`` wants CUDA."""
    compiled = jit()
    if compiled is None:
        return None
    import triton

    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4
    interpreting = knobs is not None and bool(knobs.runtime.interpret)
    return compiled if interpreting or torch.cuda.is_available() else None


@functools.cache
def jit() -> Any:
    """The ``triton.jit`` kernel (also without a GPU: ``triton.compile`` builds it for a GPU
    target on the CPU), or None without Triton."""
    if importlib.util.find_spec("triton") is None:
        return None
    import triton
    import triton.language as tl

    @triton.jit  # type: ignore[untyped-decorator,unused-ignore]
    def blend(  # type: ignore[no-untyped-def]  # noqa: ANN202, PLR0912 (constexpr branches)
        table_ptr,  # noqa: ANN001
        w_ptr,  # noqa: ANN001
        d_ptr,  # noqa: ANN001
        w_value,  # noqa: ANN001
        n_leaves,  # noqa: ANN001
        n_chunks,  # noqa: ANN001
        ENDS: tl.constexpr,  # noqa: N803
        BF16: tl.constexpr,  # noqa: N803
        F32: tl.constexpr,  # noqa: N803
        ALIGNED: tl.constexpr,  # noqa: N803
        BLOCK: tl.constexpr,  # noqa: N803
    ):
        chunk = tl.program_id(0).to(tl.int64)
        leaf = tl.load(table_ptr + 3 * n_leaves + chunk)
        start = tl.load(table_ptr + 3 * n_leaves + n_chunks + chunk)
        size = tl.load(table_ptr + 2 * n_leaves + leaf)
        s_ptr = tl.load(table_ptr + leaf).to(tl.pointer_type(tl.float32))
        if F32:  # float32 params: the one-pass device-decay route of float32 pairs
            p_ptr = tl.load(table_ptr + n_leaves + leaf).to(tl.pointer_type(tl.float32))
        elif BF16:
            p_ptr = tl.load(table_ptr + n_leaves + leaf).to(tl.pointer_type(tl.bfloat16))
        else:
            p_ptr = tl.load(table_ptr + n_leaves + leaf).to(tl.pointer_type(tl.float16))
        if ALIGNED:
            s_ptr = tl.multiple_of(s_ptr, 16)
            p_ptr = tl.multiple_of(p_ptr, 16)
            start = tl.multiple_of(start, BLOCK)
        if ENDS:  # noqa: SIM108 (a constexpr branch, resolved when Triton compiles)
            w = tl.load(w_ptr).to(tl.float32)
        else:
            w = w_value
        offs = start + tl.arange(0, BLOCK)
        full = start + BLOCK <= size
        if full:
            s = tl.load(s_ptr + offs)
            p = tl.load(p_ptr + offs).to(tl.float32)
        else:
            s = tl.load(s_ptr + offs, mask=offs < size)
            p = tl.load(p_ptr + offs, mask=offs < size).to(tl.float32)
        diff = p - s
        if F32:  # torch's lerp as torch's builds run it, each product and sum one FMA: the bits
            # of the foreach-lerp route under a host decay (a graph replay equals eager steps)
            out = tl.where(tl.abs(w) < 0.5, tl.fma(w, diff, s), tl.fma(-diff, 1.0 - w, p))
        else:  # each operation rounded (no fusion, LAUNCH_OPTIONS): the core's bits
            out = tl.where(tl.abs(w) < 0.5, s + w * diff, p - diff * (1.0 - w))
        if ENDS:  # a device decay: exact ends, decided on the device
            d = tl.load(d_ptr)
            out = tl.where(d == 1.0, s, tl.where(d == 0.0, p, out))
        if full:
            tl.store(s_ptr + offs, out)
        else:
            tl.store(s_ptr + offs, out, mask=offs < size)

    return blend
