"""A Triton kernel for the fp32-shadow / narrow-params blend on CUDA: the cast happens in
registers, so memory sees 10 bytes per element (bf16 params) instead of the 18 of two passes.

Used only where Triton imports and the shadow is a contiguous float32 CUDA tensor; everything
else goes back to the blocked path. The formula is torch's ``lerp``:
``s + w * (p - s)`` for ``|w| < 0.5``, ``p - (p - s) * (1 - w)`` otherwise, with ``w = 1 - decay``
read from device memory when it is a tensor (no host sync, capturable in a CUDA graph).
Unverified in this repository's CI (no GPU): ``tests/test_torch_gpu.py`` checks it on a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch

#: Elements per Triton program.
BLOCK = 1024


def usable(like: torch.Tensor) -> bool:
    """True for a float32 CUDA shadow when Triton can be imported."""
    return like.is_cuda and like.dtype == torch.float32 and _kernel() is not None


def lerp_mixed_(
    shadows: list[torch.Tensor], params: list[torch.Tensor], weight: float | torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Blend the contiguous pairs in place; return the pairs it left (strided ones)."""
    kernel = _kernel()
    left_s: list[torch.Tensor] = []
    left_p: list[torch.Tensor] = []
    for s, p in zip(shadows, params, strict=True):
        if not (s.is_contiguous() and p.is_contiguous()):
            left_s.append(s)
            left_p.append(p)
            continue
        n = s.numel()
        if n == 0:
            continue
        grid = ((n + BLOCK - 1) // BLOCK,)
        if isinstance(weight, float):
            kernel[grid](s, p, s, weight, n, W_IS_PTR=False, BLOCK=BLOCK)
        else:
            kernel[grid](s, p, weight, 0.0, n, W_IS_PTR=True, BLOCK=BLOCK)
    return left_s, left_p


@functools.cache
def _kernel() -> Any:
    """The compiled kernel, or None where Triton (or CUDA) is not available."""
    if importlib.util.find_spec("triton") is None or not torch.cuda.is_available():
        return None
    import triton
    import triton.language as tl

    @triton.jit  # type: ignore[untyped-decorator,unused-ignore]
    def blend(s_ptr, p_ptr, w_ptr, w_value, n, W_IS_PTR: tl.constexpr, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202, N803
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        if W_IS_PTR:  # noqa: SIM108 (a constexpr branch, resolved when Triton compiles)
            w = tl.load(w_ptr).to(tl.float32)
        else:
            w = w_value
        s = tl.load(s_ptr + offs, mask=mask)
        p = tl.load(p_ptr + offs, mask=mask).to(tl.float32)
        diff = p - s
        out = tl.where(tl.abs(w) < 0.5, s + w * diff, p - diff * (1.0 - w))
        tl.store(s_ptr + offs, out, mask=mask)

    return blend
