"""CPU tensors through ema-core's compiled host kernels (``backends._numba``), when numba is here.

A float32/float64 shadow over bf16, fp16 or same-dtype params is blended in one pass that reads
the params where they lie: each tensor is seen as a numpy array without a copy (bfloat16 as its
uint16 bits), the pieces are shared over ``torch.get_num_threads()`` threads (``_threads``).
The arithmetic is the generic core's (no FMA), so it may differ from torch's own ``lerp_`` by one
rounding; the tests pin it to the generic path bit for bit.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import torch

__all__ = ["Bound", "lerp_", "usable"]

#: Updates smaller than this many elements run on the calling thread.
PARALLEL_MIN = 1 << 21
_SHADOW_DTYPES = (torch.float32, torch.float64)
_PARAMS_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def usable(shadow: torch.Tensor, params: torch.Tensor) -> bool:
    """Whether a group like this pair takes the host kernels: CPU, plain tensors, a float32 or
    float64 shadow over params no wider, numba installed and not turned off."""
    return (
        shadow.device.type == "cpu"
        and type(shadow) is torch.Tensor
        and shadow.dtype in _SHADOW_DTYPES
        and params.dtype in _PARAMS_DTYPES
        and params.dtype.itemsize <= shadow.dtype.itemsize
        and os.environ.get("EMA_CORE_NUMBA", "1") != "0"
        and _installed()
    )


@functools.cache
def _installed() -> bool:
    return importlib.util.find_spec("numba") is not None


class Bound:
    """A group's tensors seen as numpy arrays, with the kernels bound; rebuilt when a tensor's
    storage moves (``param.data = ...``, ``module.to(...)``), found by comparing data pointers."""

    def __init__(self, shadows: list[torch.Tensor], params: list[torch.Tensor]) -> None:
        from ema_core.backends import _numba

        fmt: _numba.ParamsFormat = "bfloat16" if params[0].dtype == torch.bfloat16 else "float"
        self.pointers = _pointers(shadows, params)
        self.kernel: Any = None  # one for the group: its pairs share their dtypes
        self.items: list[Any] = []  # in-place jobs (shadow, shadow, params) of numpy views
        self.left: list[int] = []  # the pairs no kernel takes (strided): another path does them
        for i, (s, p) in enumerate(zip(shadows, params, strict=True)):
            ready = s.is_contiguous() and p.is_contiguous()
            prepared = _numba.prepare(_view(s), _view(p), fmt) if ready else None
            if prepared is not None:
                self.kernel = prepared.kernel
                self.items.append((prepared.shadow, prepared.shadow, prepared.params))
            elif s.numel():
                self.left.append(i)


def lerp_(
    shadows: list[torch.Tensor],
    params: list[torch.Tensor],
    decay: float,
    rate: float,
    bound: Bound | None = None,
) -> Bound:
    """Blend the pairs a kernel takes, in place; returns the ``Bound`` (reuse it next time),
    whose ``left`` lists the indices of the pairs left for another path."""
    from ema_core.backends import _numba, _threads

    if bound is None or bound.pointers != _pointers(shadows, params):
        bound = Bound(shadows, params)
    kernel = bound.kernel

    def do(item: Any) -> None:
        _numba.apply(_numba.Prepared(kernel, item[1], item[2]), decay, rate)

    workers = torch.get_num_threads()
    _threads.run(bound.items, do, workers, least=PARALLEL_MIN // 2, grain=1 << 16)
    return bound


def _pointers(shadows: list[torch.Tensor], params: list[torch.Tensor]) -> list[int]:
    return [t.data_ptr() for t in shadows] + [t.data_ptr() for t in params]


def _view(t: torch.Tensor) -> Any:
    """A flat numpy view of a contiguous CPU tensor (bfloat16 as uint16 bits); no copy."""
    flat = t.detach().reshape(-1)
    if t.dtype == torch.bfloat16:
        return flat.view(torch.int16).numpy().view("uint16")
    return flat.numpy()
