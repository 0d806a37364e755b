"""CPU tensors through the host engine (``ema_core.backends.host``), with or without numba.

A float32/float64 shadow over params no wider (bf16, fp16, fp32 under fp64) is blended in one
engine plan: each tensor is seen as a numpy array without a copy (bfloat16 as its uint16 bits,
strided tensors with their strides), small leaves are batched, large ones cut over
``torch.get_num_threads()`` threads, and each piece runs numba's compiled loop. Without numba,
contiguous leaves of at least ``LARGE`` elements take torch's own ops instead (the params
widened into a cache-sized scratch, then the core's steps: vectorised and multi-threaded by
torch, they beat the engine's numpy ufunc blocks on large leaves: ``EMA_CORE_NUMBA=0 python -m
benchmarks --backend torch --no-peers``), and the rest the engine's numpy blocks. The
arithmetic is the generic core's (no FMA), so it may differ from torch's own ``lerp_`` by one
rounding; the tests pin it to the generic path bit for
bit. A ``Bound`` keeps the views and the plan between updates, and is rebuilt when a tensor's
storage, shape or dtype changes (``stale``). Host (Python float) decays only.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

import torch

from ema_core.backends.torch import _memory, _pairs

if importlib.util.find_spec("numpy") is not None:  # torch runs without numpy: then no engine
    from ema_core.backends import host

__all__ = ["Bound", "bind", "lerp_", "run", "stale", "usable"]

_SHADOW_DTYPES = (torch.float32, torch.float64)
_PARAMS_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_NUMPY = importlib.util.find_spec("numpy") is not None
#: Without numba, leaves of at least this many contiguous elements take torch's ops.
LARGE = 1 << 18
#: Elements per block of torch's ops (float32: 8 MiB, an L3-sized block).
TORCH_BLOCK = 1 << 21


def usable(shadow: torch.Tensor, params: torch.Tensor) -> bool:
    """Whether a group like this pair takes the host engine: CPU, plain tensors (no subclass,
    not being traced by torch.compile), a float32 or float64 shadow over params no wider, and
    numpy installed (numba is not needed: the engine's numpy blocks run without it)."""
    return (
        _NUMPY
        and shadow.device.type == "cpu"
        and type(shadow) is torch.Tensor
        and type(params) in (torch.Tensor, torch.nn.Parameter)
        and not torch.compiler.is_compiling()  # traced tensors have no memory to view
        and shadow.dtype in _SHADOW_DTYPES
        and params.dtype in _PARAMS_DTYPES
        and params.dtype.itemsize <= shadow.dtype.itemsize
    )


class Bound:
    """A group's tensors seen as numpy arrays, with the engine's plan; rebuilt when a tensor's
    storage, shape or dtype changes (``param.data = ...``, ``module.to(...)``), found by
    comparing its ``_pairs.Key``. The views hold the storage they see, so a replaced one is
    freed at the next update. Every pair is checked before any view is made: the same shape and
    device (the compiled loops index the params by the shadow's size, so an unchecked pair
    could read past its end). ``left`` lists the pairs no numpy view can see (a tensor with its
    conjugate or negative bit set): another path does them.

    Raises:
        ValueError: a params tensor's shape differs from its shadow's, or a tensor's storage
            cannot hold its elements (``short_memory``); nothing is written.
    """

    def __init__(self, shadows: list[torch.Tensor], params: list[torch.Tensor]) -> None:
        self.key = _pairs.key(shadows, params)
        for i, (s, p) in enumerate(zip(shadows, params, strict=True)):
            if s.shape != p.shape or s.device != p.device:
                raise ValueError(
                    f"params #{i} of shape {tuple(p.shape)} on {p.device} does not fit its "
                    f"shadow of shape {tuple(s.shape)} on {s.device}"
                )
            for what, t in (("shadow", s), ("params", p)):
                if (why := _memory.short_memory(t)) is not None:
                    raise ValueError(f"{what} #{i}: {why}")
        self.left: list[int] = []
        self.shadows: list[Any] = []
        self.params: list[Any] = []
        self.formats: list[host.ParamsFormat] = []
        self.large: list[tuple[torch.Tensor, torch.Tensor]] = []  # flat, for torch's ops
        small: list[int] = []
        for i, (s, p) in enumerate(zip(shadows, params, strict=True)):
            views = _memory.view(s), _memory.view(p)
            if views[0] is None or views[1] is None:
                self.left.append(i)
                continue
            if s.numel() >= LARGE and s.is_contiguous() and p.is_contiguous():
                self.large.append((s.detach().view(-1), p.detach().view(-1)))
            else:
                small.append(len(self.shadows))
            self.shadows.append(views[0])
            self.params.append(views[1])
            self.formats.append("bfloat16" if p.dtype == torch.bfloat16 else "float")
        self.small = small  # positions (among the views) the engine blends without numba
        self.plans: dict[tuple[int, bool], host.Plan] = {}  # per thread count, all or small

    def plan_for(self, workers: int, *, all_leaves: bool = True) -> host.Plan:
        """The engine's plan for ``workers`` threads over every view, or (``all_leaves``
        False) over the views not in ``large`` (made once per count)."""
        if (workers, all_leaves) not in self.plans:
            keep = range(len(self.shadows)) if all_leaves else self.small
            self.plans[workers, all_leaves] = host.plan(
                [self.shadows[i] for i in keep],
                [self.params[i] for i in keep],
                [self.formats[i] for i in keep],
                workers=workers,
            )
        return self.plans[workers, all_leaves]


def stale(bound: Bound | None, shadows: list[torch.Tensor], params: list[torch.Tensor]) -> bool:
    """Whether ``bind`` would make new views: none yet, or a tensor's memory moved or changed
    (``_pairs.Key``); compared as read, nothing kept."""
    return bound is None or _pairs.changed(bound.key, shadows, params)


def bind(
    shadows: list[torch.Tensor], params: list[torch.Tensor], bound: Bound | None = None
) -> Bound:
    """``bound`` if it still fits the tensors, else new views and a new plan.

    Raises:
        ValueError: a params tensor's shape differs from its shadow's (nothing is written).
    """
    return Bound(shadows, params) if bound is None or stale(bound, shadows, params) else bound


def run(bound: Bound, decay: float, rate: float) -> None:
    """Blend the pairs ``bound`` took, in place, with a host ``decay`` (its ``left`` ones are
    not touched): decay 1 writes nothing, 0 copies the params exactly. Without numba, large
    leaves take torch's own ops (``_torch_blocks``) and the rest the engine's numpy blocks."""
    workers = torch.get_num_threads()
    if decay in (0.0, 1.0) or host.compiled() or not bound.large:
        host.run(bound.plan_for(workers), decay, rate)
        return
    _torch_blocks(bound.large, decay, rate)
    host.run(bound.plan_for(workers, all_leaves=False), decay, rate)


def _torch_blocks(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], decay: float, rate: float
) -> None:
    """The core's blend op by op with torch's vectorised, multi-threaded kernels, in blocks
    of ``TORCH_BLOCK`` elements that stay in the cache: the params widened into a scratch,
    ``t = (p - s) * f``, then ``s + t`` (f = rate, decay >= 0.5) or ``p - t`` (f = decay).
    The same roundings as the core and the compiled loops, so the same bits."""
    low = decay >= 0.5
    factor = rate if low else decay
    work = _scratch(pairs[0][0].dtype)
    for s, p in pairs:
        for start in range(0, s.numel(), TORCH_BLOCK):
            ss, pp = s[start : start + TORCH_BLOCK], p[start : start + TORCH_BLOCK]
            t = work[: ss.numel()]
            t.copy_(pp)
            t.sub_(ss)
            t.mul_(factor)
            if low:
                ss.add_(t)
            else:
                ss.copy_(pp)
                ss.sub_(t)


_SCRATCH = threading.local()


def _scratch(dtype: torch.dtype) -> torch.Tensor:
    """This thread's reused scratch of ``TORCH_BLOCK`` elements of ``dtype``."""
    cache: dict[torch.dtype, torch.Tensor] = _SCRATCH.__dict__.setdefault("blocks", {})
    if dtype not in cache or cache[dtype].numel() < TORCH_BLOCK:
        # a plain tensor also when first made inside inference_mode: an inference tensor
        # could not be written in place by a later update outside it
        with torch.inference_mode(False):
            cache[dtype] = torch.empty(TORCH_BLOCK, dtype=dtype, device="cpu")  # not the default
    return cache[dtype]


def lerp_(
    shadows: list[torch.Tensor],
    params: list[torch.Tensor],
    decay: float,
    rate: float,
    bound: Bound | None = None,
) -> Bound:
    """Blend the pairs the engine takes, in place; returns the ``Bound`` (reuse it next time),
    whose ``left`` lists the indices of the pairs left for another path (``bind``, ``run``).

    Raises:
        ValueError: a params tensor's shape differs from its shadow's (nothing is written).
    """
    bound = bind(shadows, params, bound)
    run(bound, decay, rate)
    return bound
