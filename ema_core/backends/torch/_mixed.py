"""One pass for a wide shadow over narrow params (fp32 over bf16/fp16), with no fp32 copy.

Eager torch needs two passes here: ``lerp_`` rejects mixed dtypes, and ``s.lerp_(p.float(), w)``
writes and reads a model-sized fp32 copy of the params. Instead the params are cast block by
block into a reused scratch that stays in the cache (``BLOCK`` elements, 8 MiB in fp32), and the
shadow is blended with the scratch: memory sees one read of the params, one read and one write
of the shadow. Leaves smaller than a block are packed into one scratch block together, so a
batch costs a few ``_foreach_*`` calls whatever its number of tensors.

On the CPU with a host decay the blend is the generic core's, op by op (``p - s``, times the
factor, then ``s +`` or ``p -``), so it gives the same bits as ``_host``'s compiled loop and the
generic path; on CUDA with a host decay it is one fused ``lerp_``; with a device decay it is
``lerp_`` followed by two selects that keep the shadow where the decay is 1 and take the params
where it is 0, bit for bit (``_foreach.lerp_ends_``). On CUDA with Triton installed, a Triton
kernel does the cast inside the blend (``_triton``), the selects included.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch
from torch._utils import _unflatten_dense_tensors

from ema_core.backends.torch import _foreach, _triton

#: Scratch elements per batch: measured best between 1 and 2 Mi elements on a 2-core EPYC
#: (L3-sized); GPUs use larger blocks because each block costs two kernel launches.
BLOCK = 1 << 21
CUDA_BLOCK = 1 << 24

_LOCAL = threading.local()

Pairs = list[tuple[torch.Tensor, torch.Tensor]]


def lerp_mixed_(
    shadows: list[torch.Tensor],
    params: list[torch.Tensor],
    weight: float | torch.Tensor,
    decay: float | torch.Tensor | None = None,
) -> None:
    """``s += weight * (p - s)`` with ``p`` cast to ``s.dtype`` (exact: it only widens).

    ``decay`` is ``1 - weight`` exactly: a host float selects the generic core's steps on CPU;
    a 0-d tensor on the shadows' device (with a tensor ``weight``) makes both ends exact, with
    no host read (decay 1 keeps each shadow's bits, decay 0 gives the widened params'); None
    runs the plain ``lerp_`` (the caller knows the decay is neither 0 nor 1)."""
    ends = decay if isinstance(decay, torch.Tensor) and isinstance(weight, torch.Tensor) else None
    if type(shadows[0].detach()) is not torch.Tensor:  # DTensor: two passes on its shards
        _lerp(shadows, [p.to(s.dtype) for s, p in zip(shadows, params, strict=True)], weight, ends)
        return
    if _triton.usable(shadows[0]):
        shadows, params = _triton.lerp_mixed_(shadows, params, weight, ends)
        if not shadows:
            return
    block = CUDA_BLOCK if shadows[0].is_cuda else BLOCK
    scratch = _scratch(shadows[0], block)
    for batch, used in _batches(shadows, params, block):
        s_list = [s for s, _ in batch]
        views = list(_unflatten_dense_tensors(scratch[:used], s_list))  # type: ignore[no-untyped-call]
        p_list = [p for _, p in batch]
        _foreach.copy_(views, p_list)
        if isinstance(decay, float) and isinstance(weight, float) and not shadows[0].is_cuda:
            _core_steps(s_list, p_list, views, decay, weight)
        else:
            _lerp(s_list, views, weight, ends)


def _lerp(
    shadows: list[torch.Tensor],
    ends: list[torch.Tensor],
    weight: float | torch.Tensor,
    decay: torch.Tensor | None,
) -> None:
    """The fused ``lerp_``, exact at both ends where a device ``decay`` is given."""
    if decay is None or not isinstance(weight, torch.Tensor):
        _foreach.lerp_(shadows, ends, weight)
    else:
        _foreach.lerp_ends_(shadows, ends, weight, decay)


def _core_steps(
    shadows: list[torch.Tensor],
    params: list[torch.Tensor],
    widened: list[torch.Tensor],
    decay: float,
    rate: float,
) -> None:
    """The core's blend, op by op: ``t = (p - s) * f``, then ``s + t`` (f = rate, d >= 0.5) or
    ``p - t`` (f = d). ``widened`` holds the params in the shadow's dtype and is overwritten."""
    low = decay >= 0.5
    torch._foreach_sub_(widened, shadows)
    torch._foreach_mul_(widened, rate if low else decay)
    if low:
        torch._foreach_add_(shadows, widened)
    else:
        _foreach.copy_(shadows, params)
        torch._foreach_sub_(shadows, widened)


def _batches(
    shadows: list[torch.Tensor], params: list[torch.Tensor], block: int
) -> Iterator[tuple[Pairs, int]]:
    """Pairs packed into batches of at most ``block`` elements; large leaves cut into pieces."""
    batch: Pairs = []
    used = 0
    for s, p in zip(shadows, params, strict=True):
        for piece in _pieces(s, p, block):
            n = piece[0].numel()
            if batch and used + n > block:
                yield batch, used
                batch, used = [], 0
            batch.append(piece)
            used += n
    if batch:
        yield batch, used


def _pieces(
    s: torch.Tensor, p: torch.Tensor, block: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(s, p)`` cut into pieces of at most ``block`` elements (views, no copies)."""
    if s.numel() <= block:
        yield s, p
    elif s.is_contiguous() and p.is_contiguous():
        yield from zip(s.view(-1).split(block), p.view(-1).split(block), strict=True)  # type: ignore[no-untyped-call]
    elif s[0].numel() <= block:  # strided: whole rows along the first dimension
        rows = block // s[0].numel()
        yield from zip(s.split(rows), p.split(rows), strict=True)  # type: ignore[no-untyped-call]
    else:  # a strided leaf whose first-dimension slices are themselves larger than a block
        for s_row, p_row in zip(s, p, strict=True):
            yield from _pieces(s_row, p_row, block)


def _scratch(like: torch.Tensor, block: int) -> torch.Tensor:
    """A per-thread scratch of ``block`` elements in ``like``'s dtype and device, reused."""
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] | None
    cache = getattr(_LOCAL, "scratch", None)
    if cache is None:
        cache = _LOCAL.scratch = {}
    key = (like.device, like.dtype)
    if key not in cache or cache[key].numel() < block:
        cache[key] = torch.empty(block, dtype=like.dtype, device=like.device)
    return cache[key]
