"""The Triton kernel of the CUDA mixed-precision blend (``_cuda``'s "triton" routes): a float32
shadow blended with half params cast in registers, torch's ``lerp`` formula, exact ends under a
device decay. Triton is imported in the calls, never at import."""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch

__all__ = ["jit", "kernel"]


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
    def blend(  # type: ignore[no-untyped-def]  # noqa: ANN202
        s_ptr,  # noqa: ANN001
        p_ptr,  # noqa: ANN001
        w_ptr,  # noqa: ANN001
        d_ptr,  # noqa: ANN001
        w_value,  # noqa: ANN001
        n,  # noqa: ANN001
        ENDS: tl.constexpr,  # noqa: N803
        BLOCK: tl.constexpr,  # noqa: N803
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        if ENDS:  # noqa: SIM108 (a constexpr branch, resolved when Triton compiles)
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
