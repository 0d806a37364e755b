"""Putting an average into a live tensor for ``EMA.swap()``, and taking it out again exactly.

A plain tensor gets the average's storage (``live.data = average``): nothing is copied when
dtype and device match, and the live storage is kept aside untouched. A tensor subclass such as
a DTensor (FSDP2) keeps its storage behind the wrapper, where ``.data`` does not reach and FSDP2
all-gathers from, so the average is copied into it and a clone of the live shard is restored
afterwards (one shard-sized copy per rank, never the whole model).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def put(live: torch.Tensor, average: torch.Tensor) -> Callable[[], None]:
    """Make ``live`` hold ``average`` (cast to its dtype and device); return the undo."""
    if type(live.detach()) is not torch.Tensor:
        backup = live.detach().clone()
        live.detach().copy_(average)
        return lambda: _copy_back(live, backup)
    if average.dtype != live.dtype or average.device != live.device:
        average = average.to(dtype=live.dtype, device=live.device)
    saved = live.data
    live.data = average
    return lambda: _set_data(live, saved)


def _copy_back(live: torch.Tensor, backup: torch.Tensor) -> None:
    live.detach().copy_(backup)


def _set_data(live: torch.Tensor, data: torch.Tensor) -> None:
    live.data = data
