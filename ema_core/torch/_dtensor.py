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

Telling a DTensor apart and ``guard_finite``'s all-reduced check live below, in the torch
backend (``ema_core.backends.torch._finite``), which the functional API shares.

A state dict of DTensor shadows is what ``torch.distributed.checkpoint`` (DCP) saves and loads,
also onto another world size; ``_dist.full_state_dict`` gathers plain tensors for one file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ema_core.backends.torch._finite import finite_stand_ins, is_dtensor

__all__ = [
    "check_layout",
    "check_sharded",
    "copy_into",
    "describe",
    "finite_stand_ins",
    "fsdp_modules",
    "is_dtensor",
    "layout",
    "local",
    "make_shadow",
    "part",
    "refusal",
    "reshard",
]


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
    """Raise unless every parameter the FSDP2 ``modules`` manage is a DTensor (after
    ``reshard``). A parameter FSDP2 leaves alone (``fully_shard(ignored_params=...)``, one
    registered after ``fully_shard``) is a plain tensor, one copy per rank, tracked as one."""
    for module in modules:
        managed = _managed(module)
        for prefix, owner in module.named_modules():
            for key, param in owner.named_parameters(recurse=False):
                if is_dtensor(param) or (managed is not None and (id(owner), key) not in managed):
                    continue
                name = f"{prefix}.{key}" if prefix else key
                raise ValueError(
                    f"parameter {name!r} of FSDP2 module {type(module).__name__} is not sharded "
                    "after reshard(); an EMA tracks the sharded parameters only: build it "
                    "outside forward and backward"
                )


def _managed(module: torch.nn.Module) -> set[tuple[int, str]] | None:
    """``(id(owner), name)`` of each parameter FSDP2 manages for ``module`` (its param groups'
    ``FSDPParam``s, shared ones included); ``None`` where torch's FSDP2 keeps them otherwise
    (every parameter is then taken for a managed one)."""
    try:
        state = module._get_fsdp_state()  # type: ignore[operator]
        groups = getattr(state, "_fsdp_param_groups", None)
        if groups is None:  # an older FSDP2 kept one group, ``_fsdp_param_group``
            group = state._fsdp_param_group
            groups = [] if group is None else [group]
        managed: set[tuple[int, str]] = set()
        for group in groups:
            for param in group.fsdp_params:
                info = param._module_info
                managed.add((id(info.module), info.param_name))
                shared = zip(info.shared_modules, info.shared_param_names, strict=True)
                managed.update((id(m), n) for m, n in shared)
        return managed
    except AttributeError:
        return None


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
