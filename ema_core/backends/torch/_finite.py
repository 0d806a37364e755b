"""The DTensor (FSDP2) parts the torch backend needs below the ``EMA`` class: telling a DTensor
apart without importing torch.distributed, and ``guard_finite``'s one answer on every rank
(``finite_stand_ins``), which ``ema_core.ema_update`` / ``update`` and the ``EMA`` class share.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor; never imports torch.distributed (none exists before)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def finite_stand_ins(live: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """For ``guard_finite``: ``live`` with each floating DTensor replaced by a plain 0-d float32
    tensor, NaN when a shard of it on any rank holds a NaN or an infinity, else 0.

    ``bool(isfinite(d).all())`` of a DTensor ``d`` reads a partial result on this rank only:
    one rank would refuse an update that the others apply. Here the count of non-finite
    elements of each rank's local part is summed over every dimension of ``d``'s mesh (one
    small all-reduce per sharded tensor and mesh dimension, on every rank of its mesh, in the
    same order; a Replicate dimension included, so that HSDP's replica groups agree): every
    rank gets the same answer before any write. The plain floating tensors beside them
    (buffers, which FSDP2 leaves whole on each rank) are counted per rank, stacked, and summed
    over the first DTensor's mesh the same way: a NaN in one rank's BatchNorm statistics
    refuses the update on every rank too.
    """
    if sys.modules.get("torch.distributed.tensor") is None:  # no DTensor exists: nothing to do
        return list(live)
    mesh = next((t.device_mesh for t in live if is_dtensor(t)), None)  # type: ignore[attr-defined]
    plain = [i for i, t in enumerate(live) if not is_dtensor(t) and _floating(t)]
    found = [_stand_in(t) if is_dtensor(t) else t for t in live]
    if mesh is None or not plain:
        return found
    with torch.no_grad():
        counts = [torch.isfinite(live[i]).logical_not().sum().to(mesh.device_type) for i in plain]
        summed = _summed(torch.stack(counts), mesh)
    nan, zero = torch.tensor(float("nan")), torch.tensor(0.0)
    for i, bad in zip(plain, summed.cpu().tolist(), strict=True):
        found[i] = nan if bad > 0 else zero
    return found


def _summed(counts: torch.Tensor, mesh: Any) -> torch.Tensor:
    """``counts`` summed over every rank of ``mesh``, in place: one all-reduce per mesh
    dimension (integer counts: the order of the sums does not matter), as a DTensor would
    reduce them, without its warning for a mesh of two or more dimensions."""
    import torch.distributed as dist

    for dim in range(mesh.ndim):
        dist.all_reduce(counts, group=mesh.get_group(dim))
    return counts


def _floating(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


def _stand_in(tensor: torch.Tensor) -> torch.Tensor:
    if not _floating(tensor):
        return tensor  # copied, never checked
    # the local count summed over every mesh dimension: ``sum()`` of the DTensor itself is
    # Partial over its Shard dimensions only, so the replica groups of HSDP (a Replicate
    # dimension) and a tensor-parallel Replicate bias would each count their own copy alone
    with torch.no_grad():
        local = torch.isfinite(tensor.to_local()).logical_not().sum()  # type: ignore[attr-defined]
        bad = _summed(local, tensor.device_mesh)  # type: ignore[attr-defined]
    nan, zero = (torch.tensor(v, device=bad.device) for v in (float("nan"), 0.0))
    return torch.where(bad > 0, nan, zero)
