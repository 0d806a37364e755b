"""A Triton kernel for the fp32-shadow / narrow-params blend on CUDA: the cast happens in
registers, so memory sees 10 bytes per element (bf16 params) instead of the 18 of two passes.

Used only where Triton imports and the shadow is a contiguous float32 CUDA tensor; everything
else goes back to the blocked path. The formula is torch's ``lerp``:
``s + w * (p - s)`` for ``|w| < 0.5``, ``p - (p - s) * (1 - w)`` otherwise, with ``w = 1 - decay``
read from device memory when it is a tensor (no host sync, capturable in a CUDA graph). With a
device decay the kernel also reads the decay and selects, element by element, the shadow where
it is 1 and the widened params where it is 0, bit for bit (the blend alone would turn an inf or
NaN on the other side into NaN). A host decay never reaches it at 0 or 1.
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
    shadows: list[torch.Tensor],
    params: list[torch.Tensor],
    weight: float | torch.Tensor,
    decay: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Blend the contiguous pairs in place; return the pairs it left (strided ones). A tensor
    ``weight`` comes with its ``decay`` (0-d, on the shadows' device) for exact ends.

    Raises:
        ValueError: a params tensor has another number of elements than its shadow (the
            kernel reads both over the shadow's size), checked for all before the first launch.
    """
    for s, p in zip(shadows, params, strict=True):
        if p.numel() != s.numel() or p.device != s.device:
            raise ValueError(
                f"a params tensor of shape {tuple(p.shape)} on {p.device} does not fit its "
                f"shadow of shape {tuple(s.shape)} on {s.device}"
            )
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
        if isinstance(weight, float):  # s stands in for the pointers that are not read
            kernel[grid](s, p, s, s, weight, n, W_IS_PTR=False, ENDS=False, BLOCK=BLOCK)
        else:
            ends = s if decay is None else decay
            flags = {"W_IS_PTR": True, "ENDS": decay is not None, "BLOCK": BLOCK}
            kernel[grid](s, p, weight, ends, 0.0, n, **flags)
    return left_s, left_p


@functools.cache
def _kernel() -> Any:
    """The compiled kernel, or None where Triton (or CUDA) is not available."""
    if importlib.util.find_spec("triton") is None or not torch.cuda.is_available():
        return None
    import triton
    import triton.language as tl

    @triton.jit  # type: ignore[untyped-decorator,unused-ignore]
    def blend(  # type: ignore[no-untyped-def]  # noqa: ANN202
        s_ptr,  # noqa: ANN001
        p_ptr,  # noqa: ANN001
        w_ptr,  # noqa: ANN001
        d_ptr,  # noqa: ANN001
        w_value,  # noqa: ANN001
        n,  # noqa: ANN001
        W_IS_PTR: tl.constexpr,  # noqa: N803
        ENDS: tl.constexpr,  # noqa: N803
        BLOCK: tl.constexpr,  # noqa: N803
    ):
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
        if ENDS:  # a device decay: exact ends, decided on the device
            d = tl.load(d_ptr)
            out = tl.where(d == 1.0, s, tl.where(d == 0.0, p, out))
        tl.store(s_ptr + offs, out, mask=mask)

    return blend
