"""The CUDA-only blend of a wide shadow over narrow params (fp32 over bf16/fp16, fp64 over fp32),
and the one-pass device-decay blend of float32 pairs.

Eager torch needs two passes here: ``lerp_`` rejects mixed dtypes, and ``s.lerp_(p.float(), w)``
writes and reads a model-sized copy of the params. Two one-pass ways instead (``_routes`` picks):

* blocked (routes "cuda-mixed" / "cuda-mixed-ends"): the params are cast block by block into a
  reused scratch (``BLOCK`` elements) and the shadow is blended with the scratch, so memory sees
  one read of the params and one read and write of the shadow. Leaves smaller than a block are
  packed into one scratch block together: a batch costs a few ``_foreach_*`` launches whatever
  its number of tensors; larger leaves are cut into pieces (views).
* Triton (routes "triton-mixed" / "triton-mixed-ends"; a float32 shadow, Triton installed): one
  kernel casts in registers, 10 bytes per element for bf16 params; strided pairs, params with
  the negative bit and tensor subclasses take the blocked way. The formula is torch's ``lerp``:
  ``s + w * (p - s)`` for ``|w| < 0.5``, ``p - (p - s) * (1 - w)`` otherwise. The same kernel
  takes float32 params: under a host decay (route "triton-same"), one launch per params layout
  where torch's foreach ``lerp_`` launches per chunk of tensors, and under a device decay
  (route "triton-ends"), one pass with exact ends where ``_foreach.lerp_ends_`` takes three ops
  and a temporary per tensor; the pairs it leaves take torch's foreach ops directly (no cast,
  no scratch). ``_launch`` prepares the kernel's launches over the pairs (checked, grouped,
  tables built), which a route's group keeps between updates.

With a host decay (``*_lerp_``: a float weight, the caller has ruled out decay 0 and 1) the blend
is one fused ``lerp``. With a device decay (``*_lerp_ends_``: a 0-d weight and decay on the
shadows' device, never read on the host, so capturable in a CUDA graph) both ends are exact, bit
for bit: decay 1 keeps each shadow, decay 0 gives the widened params, inf and NaN included.
The functions are plain torch (Triton aside) and also run on CPU tensors, which is how the CPU
suite checks the blocked way; ``_routes`` sends only CUDA groups here. The Triton functions run on
CPU tensors too under Triton's interpreter (``TRITON_INTERPRET=1`` set before Triton is imported):
``tests/test_triton_interpreter.py`` runs the kernel so in a subprocess, bit for bit against the
core at the decay the kernel applies, ``1 - fl32(1 - decay)``, for half params; compiled
without contraction (``LAUNCH_OPTIONS``), a GPU rounds each operation as the interpreter does.
Float32 params ("triton-ends") take explicit FMAs, torch's own ``lerp`` (checked against it), so
a device step gives the bits the foreach route gives the same int step.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator

import torch
from torch._utils import _unflatten_dense_tensors

from ema_core.backends.torch import _foreach, _launch, _triton_kernel
from ema_core.backends.torch._launch import LAUNCH_OPTIONS, TRITON_BLOCK  # read by tests
from ema_core.backends.torch._triton_kernel import kernel as _kernel  # also read by tests

__all__ = [
    "BLOCK",
    "LAUNCH_OPTIONS",
    "TRITON_BLOCK",
    "blocked_lerp_",
    "blocked_lerp_ends_",
    "triton_lerp_",
    "triton_lerp_ends_",
    "triton_usable",
]

#: Scratch elements per batch: large, because each block costs a few kernel launches.
BLOCK = 1 << 24
_LOCAL = threading.local()

Pairs = _triton_kernel.Pairs
Blend = Callable[[list[torch.Tensor], list[torch.Tensor]], None]


def blocked_lerp_(shadows: list[torch.Tensor], params: list[torch.Tensor], weight: float) -> None:
    """``s += weight * (p - s)``, ``p`` widened to ``s.dtype`` block by block (a host decay
    strictly between 0 and 1; ``weight`` is ``1 - decay``)."""
    _blocked(shadows, params, functools.partial(_foreach.lerp_, weight=weight))


def blocked_lerp_ends_(
    shadows: list[torch.Tensor],
    params: list[torch.Tensor],
    weight: torch.Tensor,
    decay: torch.Tensor,
) -> None:
    """``blocked_lerp_`` with a device ``weight`` (0-d, the shadows' dtype) and ``decay`` (0-d),
    both on the shadows' device: exact at both ends (``_foreach.lerp_ends_``), no host read."""
    _blocked(shadows, params, functools.partial(_foreach.lerp_ends_, weight=weight, decay=decay))


def _blocked(shadows: list[torch.Tensor], params: list[torch.Tensor], blend: Blend) -> None:
    if not shadows:
        return
    scratch = _scratch(shadows[0], BLOCK)
    for batch, used in _batches(shadows, params, BLOCK):
        s_list = [s for s, _ in batch]
        views = list(_unflatten_dense_tensors(scratch[:used], s_list))  # type: ignore[no-untyped-call]
        _foreach.copy_(views, [p for _, p in batch])
        blend(s_list, views)


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
        with torch.inference_mode(False):  # written in place outside inference_mode later too
            cache[key] = torch.empty(block, dtype=like.dtype, device=like.device)
    return cache[key]


def triton_usable(like: torch.Tensor) -> bool:
    """True for a float32 CUDA shadow when Triton can be imported."""
    return like.is_cuda and like.dtype == torch.float32 and _kernel() is not None


def triton_lerp_(
    shadows: list[torch.Tensor],
    params: list[torch.Tensor],
    weight: float,
    launch: _launch.Launch | None = None,
) -> None:
    """``blocked_lerp_`` through the Triton kernel (the pairs it leaves: the blocked way, or
    for float32 params torch's foreach ``lerp_``).

    ``launch``: these pairs' ``_launch.prepare``, made earlier (the caller vouches that they
    are still as its key says); None prepares it now.

    Raises:
        ValueError: as ``_launch.prepare``; checked for all pairs before any write.
    """
    launch = _launch.prepare(shadows, params) if launch is None else launch
    _launch.run(launch, (weight,))
    s_left, p_left = _left(launch)
    if s_left and s_left[0].dtype == p_left[0].dtype:  # float32 params: torch's own lerp
        _foreach.lerp_(s_left, p_left, weight)
    else:
        blocked_lerp_(s_left, p_left, weight)


def triton_lerp_ends_(
    shadows: list[torch.Tensor],
    params: list[torch.Tensor],
    weight: torch.Tensor,
    decay: torch.Tensor,
    launch: _launch.Launch | None = None,
) -> None:
    """``blocked_lerp_ends_`` through the Triton kernel, which reads ``weight`` and ``decay``
    from device memory and selects the ends element by element (the pairs it leaves: blocked,
    or for float32 params ``_foreach.lerp_ends_``).
    Float32 params too (route "triton-ends"): one pass where ``_foreach.lerp_ends_`` takes three.
    ``launch`` as in ``triton_lerp_``.

    Raises:
        ValueError: as ``_launch.prepare``, or ``weight`` / ``decay`` is not 0-d on the
            shadows' device (nothing written then).
    """
    launch = _launch.prepare(shadows, params) if launch is None else launch
    _launch.run(launch, (weight, decay))
    s_left, p_left = _left(launch)
    if s_left and s_left[0].dtype == p_left[0].dtype:  # float32 params: no scratch needed
        _foreach.lerp_ends_(s_left, p_left, weight, decay)
    else:
        blocked_lerp_ends_(s_left, p_left, weight, decay)


def _left(launch: _launch.Launch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The pairs the kernel left (strided, params with the negative bit, tensor subclasses), as
    two lists (one params dtype per group: the caller's group is one bucket)."""
    return [s for s, _ in launch.left], [p for _, p in launch.left]
