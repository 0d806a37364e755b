"""torch's caches of values computed from a module's tensors, keyed on the tensor objects or
the modules (not on their contents): autocast's casts of the weights inside one autocast
region, and ``torch.nn.utils.parametrize.cached()``'s parametrized weights. A write that keeps
the objects (``swap()``, ``copy_to``, the drop-ins' in-place assigns) must forget them, or a
forward after it reads values derived from what the tensors held before."""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize

__all__ = ["forget_derived"]


def forget_derived() -> None:
    """Drop autocast's cached casts and ``parametrize.cached()``'s cached weights (both are
    rebuilt from the tensors at their next use)."""
    torch.clear_autocast_cache()
    cache = getattr(parametrize, "_cache", None)  # private in torch: looked up at each call
    if isinstance(cache, dict):
        cache.clear()
