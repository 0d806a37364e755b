"""The Triton kernel's launches over a group's pairs (``_cuda``'s "triton" routes): prepared
once, run at every update.

``prepare`` checks the pairs (float32 shadows over float16, bfloat16 or float32 params, the
same sizes, one device), sorts them into launches (``_triton_kernel.groups``: one per params
dtype and alignment; strided pairs, params with the negative bit and tensor subclasses left
out) and builds each launch's table. The ``Launch`` it
returns keeps the pairs' ``_pairs.Key``: ``_prewrite`` keeps one per group and reuses it while
the pairs stay as the key says (or the caller vouches for them), so that an update of an
unchanged model reads nothing per pair. ``run`` launches the kernel over a ``Launch`` with a
host weight (by value) or a device weight and decay (read on the device).
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch

from ema_core.backends.torch import _pairs, _triton_kernel
from ema_core.backends.torch._triton_kernel import kernel as _kernel  # patched by tests

__all__ = ["KERNEL_PARAMS", "LAUNCH_OPTIONS", "TRITON_BLOCK", "Launch", "prepare", "run"]

#: Elements per Triton program.
TRITON_BLOCK = 1024
#: Every launch's compile options: no contracted FMA, as under the interpreter (stated, Triton
#: >= 3.9 warns when left to its default, which 3.10 changes); float32 params' explicit
#: ``tl.fma`` calls are kept.
LAUNCH_OPTIONS: dict[str, Any] = {"enable_fp_fusion": False}
#: The params dtypes the kernel reads under a float32 shadow.
KERNEL_PARAMS = (torch.float16, torch.bfloat16, torch.float32)

Pairs = _triton_kernel.Pairs


class Launch(NamedTuple):
    """The Triton kernel's launches over some pairs, prepared once (``prepare``: the pairs
    checked, grouped per params dtype and alignment, each group's table built) and reused while
    the pairs stay as ``key`` says (``_prewrite`` keeps one per group).

    ``tables``: per launch, its params dtype, 16-byte alignment, table and chunk count, and
    its number of leaves. ``left``: the pairs the kernel does not take (strided, params with the
    negative bit, tensor subclasses), which torch's ops take.
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


def run(launch: Launch, scalars: tuple[Any, ...]) -> None:
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
        pdtype in KERNEL_PARAMS
        and _pairs.all_dtype(shadows, torch.float32)
        and _pairs.all_dtype(params, pdtype)
        and _pairs.sizes(params) == _pairs.sizes(shadows)
        and _pairs.all_on(shadows, device)
        and _pairs.all_on(params, device)
    ):
        return
    for s, p in zip(shadows, params, strict=True):
        if s.dtype != torch.float32 or p.dtype not in KERNEL_PARAMS:
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
