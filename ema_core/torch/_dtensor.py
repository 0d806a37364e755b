"""DTensor (FSDP2) shards for ``EMA``: shadows, local parts, resharding; no collective here.

FSDP2 (``fully_shard``) turns parameters into DTensors whose local tensor is this rank's shard
(uneven shards included: the last ranks may hold fewer rows, or none). The shadow of such a
parameter is a DTensor too, with the parameter's mesh, placements, global shape and stride, and
a local tensor of our own beside the parameter's: ``torch.empty_like`` of the parameter, which
makes each rank's shard from its own (uneven shards too, with no collective), on the shard's
device (the CPU under ``CPUOffloadPolicy``, whatever the mesh's). ``_store.Sharded`` updates
the local tensors directly with the fused kernels: no DTensor dispatch and no collective per
update. Each update checks that the params still hold the same local tensors (``part``) and
re-plans when one was replaced: FSDP2 swaps a sharded parameter's local tensor for a new one
(``module.to(...)``, ``reset_sharded_param``) while the parameter object stays.

Mixed precision (``MixedPrecisionPolicy``) changes only the dtype of the unsharded params used
in forward and backward: the sharded params, and so the shadows, stay float32.

A state dict of DTensor shadows is what ``torch.distributed.checkpoint`` (DCP) saves and loads,
also onto another world size; ``_dist.full_state_dict`` gathers plain tensors for one file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor; never imports torch.distributed (none exists before)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor``: the local shard of a DTensor (a view), else itself."""
    if is_dtensor(tensor):
        with torch.no_grad():  # without autograd, to_local() is the local tensor, no copy
            part: torch.Tensor = tensor.to_local()  # type: ignore[attr-defined]
        return part
    return tensor.detach()


def make_shadow(
    live: torch.Tensor, dtype: torch.dtype, device: torch.device | None, zeros: bool
) -> torch.Tensor:
    """A DTensor shadow of the DTensor ``live``: same mesh, placements, shape and stride, a
    local shard of our own in ``dtype`` (a copy of ``live``'s shard, or zeros) on the device of
    ``live``'s shard, which under ``CPUOffloadPolicy`` is the CPU beside an accelerator mesh
    (``DTensor.from_local`` would move it to the mesh's device)."""
    part = local(live)
    if device is not None and not (
        device.type == part.device.type and device.index in (None, part.device.index)
    ):
        raise ValueError(
            f"device={device} differs from the device of the DTensor (FSDP2) params "
            f"({part.device}); sharded shadows live beside their shards: pass device=None"
        )
    with torch.no_grad():  # shard by shard: empty_like of each local tensor, no collective
        shadow = torch.empty_like(live, dtype=dtype)
        mine = local(shadow)
        if zeros:
            mine.zero_()
        else:
            mine.copy_(part)
    return shadow


def part(tensor: torch.Tensor) -> torch.Tensor:
    """The local tensor object a DTensor holds (the same object while FSDP2 keeps it; ``to_local``
    would return a new view of it each time), or a plain tensor itself."""
    inner = getattr(tensor, "_local_tensor", None)
    return inner if isinstance(inner, torch.Tensor) else tensor


def fsdp_modules(source: Any) -> list[torch.nn.Module]:
    """The FSDP2 modules inside ``source`` (an ``nn.Module``), outermost first; else []."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None or not isinstance(source, torch.nn.Module):
        return []
    kind = getattr(fsdp, "FSDPModule", None)
    return [m for m in source.modules() if kind is not None and isinstance(m, kind)]


def reshard(modules: Iterable[torch.nn.Module]) -> None:
    """Put every FSDP2 module back in its sharded state (frees unsharded params; no collective).

    A forward with ``reshard_after_forward=False`` leaves a module's parameters unsharded: the
    module then holds plain, all-gathered tensors that an EMA must neither track (they are freed
    on the next reshard) nor write (a later forward would not see the shards change).
    """
    for module in modules:
        module.reshard()  # type: ignore[operator]


def check_sharded(modules: Sequence[torch.nn.Module]) -> None:
    """Raise unless every parameter of the FSDP2 ``modules`` is a DTensor (after ``reshard``)."""
    for module in modules:
        for name, param in module.named_parameters():
            if not is_dtensor(param):
                raise ValueError(
                    f"parameter {name!r} of FSDP2 module {type(module).__name__} is not sharded "
                    "after reshard(); an EMA tracks the sharded parameters only: build it "
                    "outside forward and backward"
                )


def copy_into(shadow: torch.Tensor, value: torch.Tensor) -> None:
    """``shadow.copy_(value)``, where a full (plain) ``value`` fills a DTensor ``shadow``'s
    shard from this rank's copy of it (every rank holds the full tensor: no collective)."""
    if is_dtensor(shadow) and not is_dtensor(value):
        from torch.distributed.tensor import distribute_tensor

        mesh, placements = shadow.device_mesh, shadow.placements  # type: ignore[attr-defined]
        value = distribute_tensor(
            value.to(local(shadow).device), mesh, placements, src_data_rank=None
        )
    shadow.copy_(value)


def layout(tensor: Any) -> tuple[Any, tuple[Any, ...]] | None:
    """``(mesh, placements)`` of a DTensor; ``None`` for a plain tensor."""
    if not (isinstance(tensor, torch.Tensor) and is_dtensor(tensor)):
        return None
    return tensor.device_mesh, tuple(tensor.placements)  # type: ignore[attr-defined]


def describe(where: tuple[Any, tuple[Any, ...]] | None) -> str:
    """A layout in words: ``"a plain tensor"`` or the DTensor's mesh and placements."""
    if where is None:
        return "a plain tensor"
    mesh, placements = where
    return f"a DTensor on mesh {mesh} with placements {placements}"


def check_layout(where: str, tensor: torch.Tensor, ours: torch.Tensor, what: str, fix: str) -> None:
    """Raise unless ``tensor`` and ``ours`` are both plain, or DTensors on one mesh with the
    same placements (their local shards then pair up without a collective).

    Raises:
        ValueError: naming ``where`` (the tensor), both layouts, and ``fix``.
    """
    mine, theirs = layout(tensor), layout(ours)
    if mine != theirs:
        raise ValueError(f"{where} is {describe(mine)}, and {what} is {describe(theirs)}: {fix}")


def refusal(
    shadows: Sequence[torch.Tensor], live: Sequence[torch.Tensor], names: Sequence[str] | None
) -> str | None:
    """Why these pairs cannot be updated shard by shard, or ``None``: each live tensor must
    have its shadow's layout (``check_layout``); a param sharded again, or sharded first, after
    the EMA was built has not, nor a plain tensor put in a sharded param's place."""
    for i, (shadow, tensor) in enumerate(zip(shadows, live, strict=True)):
        name = f"#{i}" if names is None else names[i]
        fix = _PLAIN_FIX if is_dtensor(shadow) and not is_dtensor(tensor) else _RESHARD_FIX
        try:
            check_layout(f"the module's tensor {name}", tensor, shadow, "its shadow", fix)
        except ValueError as error:
            return str(error)
    return None


_RESHARD_FIX = (
    "an EMA keeps the sharding it was built with; build a new EMA after fully_shard or any "
    "resharding (load a full_state_dict() of the old one to keep its averages); no shadow was "
    "changed"
)
_PLAIN_FIX = (
    "FSDP2 keeps gathering this param from its own shards, not from a plain tensor put in its "
    "place; to change its values, copy them into the param in place (with torch.no_grad(): "
    "param.copy_(...)) or assign a DTensor Parameter of the param's layout "
    "(distribute_tensor(value, mesh, placements)); no shadow was changed"
)


def finite_stand_ins(live: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """For ``guard_finite``: ``live`` with each floating DTensor replaced by a plain 0-d float32
    tensor, NaN when a shard of it on any rank holds a NaN or an infinity, else 0.

    ``bool(isfinite(d).all())`` of a DTensor ``d`` reads a partial result on this rank only:
    one rank would refuse an update that the others apply. Here the count of non-finite
    elements is summed over ``d``'s mesh (one small all-reduce per sharded tensor, on every
    rank of its mesh, in the same order): every rank gets the same answer before any write.
    The plain floating tensors beside them (buffers, which FSDP2 leaves whole on each rank)
    are counted per rank and summed over the first DTensor's mesh in one more all-reduce: a
    NaN in one rank's BatchNorm statistics refuses the update on every rank too.
    """
    mesh = next((t.device_mesh for t in live if is_dtensor(t)), None)  # type: ignore[attr-defined]
    plain = [i for i, t in enumerate(live) if not is_dtensor(t) and _floating(t)]
    found = [_stand_in(t) if is_dtensor(t) else t for t in live]
    if mesh is None or not plain:
        return found
    from torch.distributed.tensor import DTensor, Partial

    with torch.no_grad():
        counts = [torch.isfinite(live[i]).logical_not().sum().to(mesh.device_type) for i in plain]
        summed = DTensor.from_local(torch.stack(counts), mesh, [Partial()] * mesh.ndim)
    nan, zero = torch.tensor(float("nan")), torch.tensor(0.0)
    for i, bad in zip(plain, summed.full_tensor().cpu().tolist(), strict=True):
        found[i] = nan if bad > 0 else zero
    return found


def _floating(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


def _stand_in(tensor: torch.Tensor) -> torch.Tensor:
    if not _floating(tensor):
        return tensor  # copied, never checked
    with torch.no_grad():
        bad = torch.isfinite(tensor).logical_not().sum().full_tensor()  # type: ignore[attr-defined]
    nan, zero = (torch.tensor(v, device=bad.device) for v in (float("nan"), 0.0))
    return torch.where(bad > 0, nan, zero)
