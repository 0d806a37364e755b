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
  kernel casts in registers, 10 bytes per element for bf16 params; strided pairs take the
  blocked way. The formula is torch's ``lerp``: ``s + w * (p - s)`` for ``|w| < 0.5``,
  ``p - (p - s) * (1 - w)`` otherwise. The same kernel takes float32 params under a device
  decay (route "triton-ends"): one pass with exact ends, where ``_foreach.lerp_ends_`` takes
  three ops and a temporary per tensor.

With a host decay (``*_lerp_``: a float weight, the caller has ruled out decay 0 and 1) the blend
is one fused ``lerp``. With a device decay (``*_lerp_ends_``: a 0-d weight and decay on the
shadows' device, never read on the host, so capturable in a CUDA graph) both ends are exact, bit
for bit: decay 1 keeps each shadow, decay 0 gives the widened params, inf and NaN included.
The functions are plain torch (Triton aside) and also run on CPU tensors, which is how the CPU
suite checks the blocked way; ``_routes`` sends only CUDA groups here. The Triton functions run on
CPU tensors too under Triton's interpreter (``TRITON_INTERPRET=1`` set before Triton is imported):
``tests/test_triton_interpreter.py`` runs the kernel so in a subprocess, bit for bit against the
core at the decay the kernel applies, ``1 - fl32(1 - decay)``; compiled without FMAs
(``LAUNCH_OPTIONS``), a GPU rounds each operation as the interpreter does.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch._utils import _unflatten_dense_tensors

from ema_core.backends.torch import _foreach, _pairs, _triton_kernel
from ema_core.backends.torch._triton_kernel import kernel as _kernel  # also read by tests

__all__ = [
    "BLOCK",
    "Launch",
    "blocked_lerp_",
    "blocked_lerp_ends_",
    "prepare",
    "triton_lerp_",
    "triton_lerp_ends_",
]

#: Scratch elements per batch: large, because each block costs a few kernel launches.
BLOCK = 1 << 24
#: Elements per Triton program.
TRITON_BLOCK = 1024
#: Every launch's compile options: no FMA, as under the interpreter (stated, Triton >= 3.9
#: warns when left to its default, which 3.10 changes).
LAUNCH_OPTIONS: dict[str, Any] = {"enable_fp_fusion": False}

_LOCAL = threading.local()

Pairs = _triton_kernel.Pairs
#: The params dtypes the kernel reads under a float32 shadow.
_KERNEL_PARAMS = (torch.float16, torch.bfloat16, torch.float32)
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
        cache[key] = torch.empty(block, dtype=like.dtype, device=like.device)
    return cache[key]


def triton_usable(like: torch.Tensor) -> bool:
    """True for a float32 CUDA shadow when Triton can be imported."""
    return like.is_cuda and like.dtype == torch.float32 and _kernel() is not None


class Launch(NamedTuple):
    """The Triton kernel's launches over some pairs, prepared once (``prepare``: the pairs
    checked, grouped per params dtype and alignment, each group's table built) and reused while
    the pairs stay as ``key`` says (``_routes`` keeps one per group).

    ``tables``: per launch, its params dtype, 16-byte alignment, table and chunk count, and
    its number of leaves. ``left``: the strided pairs, which the blocked way takes.
    """

    key: _pairs.Key
    device: torch.device | None  # None: no pairs
    tables: list[tuple[torch.dtype, bool, torch.Tensor, int, int]]
    left: Pairs


def prepare(shadows: list[torch.Tensor], params: list[torch.Tensor]) -> Launch:
    """The kernel's ``Launch`` over these pairs, on the first shadow's device.

    Raises:
        ValueError: a pair the kernel cannot take (a shadow not float32, params not float16,
            bfloat16 or float32, another number of elements or another device than the first
            shadow's); nothing is written.
    """
    if not shadows:
        _check_pairs(shadows, params, torch.device("cpu"))  # lists of other lengths
        return Launch(_pairs.key(shadows, params), None, [], [])
    device = shadows[0].device
    _check_pairs(shadows, params, device)
    found, left = _triton_kernel.groups(shadows, params)
    tables = []
    for (pdtype, aligned), (s_addrs, p_addrs, sizes) in found.items():
        table, chunks = _triton_kernel.table_at(device, s_addrs, p_addrs, sizes, TRITON_BLOCK)
        tables.append((pdtype, aligned, table, chunks, len(sizes)))
    return Launch(_pairs.key(shadows, params), device, tables, left)


def triton_lerp_(
    shadows: list[torch.Tensor],
    params: list[torch.Tensor],
    weight: float,
    launch: Launch | None = None,
) -> None:
    """``blocked_lerp_`` through the Triton kernel (strided pairs: the blocked way).

    ``launch``: these pairs' ``prepare``, made earlier (the caller vouches that they are still
    as its key says); None prepares it now.

    Raises:
        ValueError: as ``prepare``; checked for all pairs before any write.
    """
    launch = prepare(shadows, params) if launch is None else launch
    _launch(launch, (weight,))
    left = launch.left
    blocked_lerp_([s for s, _ in left], [p for _, p in left], weight)


def triton_lerp_ends_(
    shadows: list[torch.Tensor],
    params: list[torch.Tensor],
    weight: torch.Tensor,
    decay: torch.Tensor,
    launch: Launch | None = None,
) -> None:
    """``blocked_lerp_ends_`` through the Triton kernel, which reads ``weight`` and ``decay``
    from device memory and selects the ends element by element (strided pairs: blocked).
    Float32 params too (route "triton-ends"): one pass where ``_foreach.lerp_ends_`` takes three.
    ``launch`` as in ``triton_lerp_``.

    Raises:
        ValueError: as ``prepare``, or ``weight`` / ``decay`` is not 0-d on the shadows'
            device (nothing written then).
    """
    launch = prepare(shadows, params) if launch is None else launch
    _launch(launch, (weight, decay))
    left = launch.left
    blocked_lerp_ends_([s for s, _ in left], [p for _, p in left], weight, decay)


def _launch(launch: Launch, scalars: tuple[Any, ...]) -> None:
    """Run the kernel over the prepared pairs, on their device (Triton launches on the current
    device): one launch per params dtype and alignment, not one per leaf. The scalars are
    checked first (nothing written when they are off)."""
    device = launch.device
    if device is None:
        return
    _check_scalars(scalars, device)
    if not launch.tables:
        return
    kernel = _kernel()
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for pdtype, aligned, table, chunks, leaves in launch.tables:
            if len(scalars) == 1:  # a host weight by value; the table stands in for pointers
                args = (table, table, table, scalars[0])
            else:
                args = (table, *scalars, 0.0)
            kernel[(chunks,)](
                *args, leaves, chunks, ENDS=len(scalars) == 2,
                BF16=pdtype == torch.bfloat16, F32=pdtype == torch.float32,
                ALIGNED=aligned, BLOCK=TRITON_BLOCK, **LAUNCH_OPTIONS,
            )  # fmt: skip


def _check_scalars(scalars: tuple[Any, ...], device: torch.device) -> None:
    """``ValueError`` for a weight or decay that is not 0-d on ``device`` (the kernel reads
    them there)."""
    for name, x in zip(("weight", "decay"), scalars, strict=False):
        if isinstance(x, torch.Tensor) and (x.device != device or x.ndim != 0):
            raise ValueError(
                f"the {name} must be a 0-d tensor on the shadows' device {device}, got "
                f"shape {tuple(x.shape)} on {x.device}"
            )


def _check_pairs(
    shadows: list[torch.Tensor], params: list[torch.Tensor], device: torch.device
) -> None:
    """``ValueError`` before any write for pairs off ``device`` or of another size or dtypes
    than the kernel reads."""
    pdtype = params[0].dtype if params else None  # lists of other lengths: the loop says so
    if (  # the usual case, read list by list (``_pairs``); the loop names a pair that is off
        pdtype in _KERNEL_PARAMS
        and _pairs.all_dtype(shadows, torch.float32)
        and _pairs.all_dtype(params, pdtype)
        and _pairs.sizes(params) == _pairs.sizes(shadows)
        and _pairs.all_on(shadows, device)
        and _pairs.all_on(params, device)
    ):
        return
    for s, p in zip(shadows, params, strict=True):
        if s.dtype != torch.float32 or p.dtype not in _KERNEL_PARAMS:
            raise ValueError(
                "the kernel blends float32 shadows with float16, bfloat16 or float32 params, "
                f"got a {s.dtype} shadow over {p.dtype} params"
            )
        if p.numel() != s.numel() or p.device != device or s.device != device:
            raise ValueError(
                f"a params tensor of shape {tuple(p.shape)} on {p.device} does not fit its "
                f"shadow of shape {tuple(s.shape)} on {s.device} (one launch runs on "
                f"{device})"
            )
