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
    one rank would refuse an update that the others apply. Here the counts of non-finite
    elements of each rank's local parts are stacked per mesh (and the device the parts live
    on: CPU-offloaded shards stay on the CPU) and summed over every dimension of the mesh (one
    small all-reduce per mesh dimension for all of its sharded tensors, on every rank of it, in
    the same order; a Replicate dimension included, so that HSDP's replica groups agree):
    every rank gets the same answer before any write. The plain floating tensors beside them
    (buffers, which FSDP2 leaves whole on each rank) are counted per rank, stacked, and summed
    over the first DTensor's mesh the same way: a NaN in one rank's BatchNorm statistics
    refuses the update on every rank too. No count is read on the host here.
    """
    if sys.modules.get("torch.distributed.tensor") is None:  # no DTensor exists: nothing to do
        return list(live)
    groups: dict[tuple[Any, str], tuple[Any, list[int], list[torch.Tensor]]] = {}
    plain: list[int] = []
    with torch.no_grad():
        for i, t in enumerate(live):
            if not _floating(t):
                continue  # copied, never checked
            if not is_dtensor(t):
                plain.append(i)
                continue
            count = _count(t.to_local())  # type: ignore[attr-defined]
            mesh = t.device_mesh  # type: ignore[attr-defined]
            group = groups.setdefault((mesh, count.device.type), (mesh, [], []))  # equal meshes
            group[1].append(i)
            group[2].append(count)
        found = list(live)
        if not groups:
            return found  # no DTensor: each rank checks its own tensors, with no collective
        first = next(iter(groups.values()))[0]
        if plain:
            counts = [_count(live[i]).to(first.device_type) for i in plain]
            groups[(None, first.device_type)] = (first, plain, counts)
        for mesh, where, counts in groups.values():  # in ``live``'s order on every rank
            bad = _summed(torch.stack(counts), mesh) > 0
            nan = torch.tensor(float("nan"), device=bad.device)
            zero = torch.tensor(0.0, device=bad.device)
            for k, i in enumerate(where):
                found[i] = torch.where(bad[k], nan, zero)
    return found


def _summed(counts: torch.Tensor, mesh: Any) -> torch.Tensor:
    """``counts`` summed over every rank of ``mesh``, in place: one all-reduce per mesh
    dimension (integer counts: the order of the sums does not matter), as a DTensor would
    reduce them, without its warning for a mesh of two or more dimensions."""
    import torch.distributed as dist

    for dim in range(mesh.ndim):
        dist.all_reduce(counts, group=mesh.get_group(dim))
    return counts


def _count(tensor: torch.Tensor) -> torch.Tensor:
    """The number of NaN and infinite elements of ``tensor``, a 0-d tensor where it lives."""
    return torch.isfinite(tensor).logical_not().sum()


def _floating(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()
