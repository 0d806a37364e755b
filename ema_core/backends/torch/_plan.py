"""A torch update's plan: leaf pairs grouped once by (kind, device, shadow dtype, params dtype,
and whether the shadow is a negative or conjugate view) into four buckets, each group one
fused call (``_routes`` picks its route per update).

* ``exact``: integer, bool and copied leaves; ``same``: one float dtype; ``mixed``: a
  float32/float64 shadow over narrower float params (bf16, fp16, fp32 under fp64); ``other``:
  complex, or a shadow narrower than its params.
* DTensor pairs are planned as their local shards (``to_local()``: no collective).
* A group keeps the host engine's views of its tensors (``Group.host``), or the Triton
  kernel's prepared launches over them (``Group.launch``), between updates.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import torch

from ema_core._types import LeafKind
from ema_core.backends.torch import _host, _launch

__all__ = ["BUCKETS", "Bucket", "Group", "Plan", "bucket", "make_plan"]

Bucket: TypeAlias = Literal["exact", "same", "mixed", "other"]
BUCKETS: tuple[Bucket, ...] = ("exact", "same", "mixed", "other")
_HALF = (torch.float16, torch.bfloat16)


@dataclass
class Group:
    """Tensors that one fused call can update: same kind, device and dtypes."""

    shadows: list[torch.Tensor] = field(default_factory=list)
    params: list[torch.Tensor] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # for error messages
    host: _host.Bound | None = None  # the host engine's views of it, kept for reuse
    launch: _launch.Launch | None = None  # the Triton kernel's launches over it, kept alike
    #: Shadows with torch's negative or conjugate bit (``torch._neg_view``, ``.conj()``):
    #: torch's fused ops refuse to write through them, so they form groups of their own, copied
    #: tensor by tensor and blended by the generic route.
    views: bool = False


@dataclass
class Plan:
    """The groups of one set of leaves, by bucket; build it once, apply it every update."""

    same: list[Group] = field(default_factory=list)
    mixed: list[Group] = field(default_factory=list)
    other: list[Group] = field(default_factory=list)
    exact: list[Group] = field(default_factory=list)


def bucket(kind: LeafKind, shadow: torch.Tensor, params: torch.Tensor) -> Bucket:
    """Which of a plan's four lists a pair belongs to."""
    if kind == "exact":
        return "exact"
    if shadow.is_complex() or params.is_complex() or shadow.is_neg() or shadow.is_conj():
        return "other"  # (torch's fused ops refuse to write through a negative view)
    if shadow.dtype == params.dtype:
        return "same"
    widens = torch.promote_types(shadow.dtype, params.dtype) == shadow.dtype
    return "mixed" if widens and shadow.dtype not in _HALF else "other"


def make_plan(
    shadows: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    kinds: Sequence[LeafKind],
    names: Sequence[str] | None = None,
) -> Plan:
    """Group leaf pairs (already validated: equal shapes and devices) by how they update;
    ``names`` (default: the positions) name the tensors in errors. DTensor pairs are planned
    as their local shards.

    Raises:
        ValueError: a DTensor pair whose shadow and params differ in mesh or placements, or
            a DTensor paired with a plain tensor (their local shards would not match).
    """
    labels = [f"#{i}" for i in range(len(shadows))] if names is None else list(names)
    keyed: dict[tuple[LeafKind, torch.device, torch.dtype, torch.dtype, bool], Group] = {}
    for pair, kind, name in zip(zip(shadows, params, strict=True), kinds, labels, strict=True):
        s, p = _local(*pair, name)
        views = s.is_neg() or s.is_conj()
        group = keyed.setdefault((kind, s.device, s.dtype, p.dtype, views), Group(views=views))
        group.shadows.append(s)
        group.params.append(p)
        group.names.append(name)
    plan = Plan()
    for (kind, *_), group in keyed.items():
        getattr(plan, bucket(kind, group.shadows[0], group.params[0])).append(group)
    return plan


def _local(s: torch.Tensor, p: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair as the tensors the routes write: DTensors as their local shards (a view)."""
    if type(s) is torch.Tensor and type(p) in (torch.Tensor, torch.nn.Parameter):
        return s, p
    module = sys.modules.get("torch.distributed.tensor")  # no DTensor before it is imported
    if module is None or not (isinstance(s, module.DTensor) or isinstance(p, module.DTensor)):
        return s, p
    dtensor = module.DTensor
    where = [(t.device_mesh, t.placements) if isinstance(t, dtensor) else None for t in (s, p)]
    if where[0] != where[1]:
        raise ValueError(
            f"params {name}: a DTensor pair must share its mesh and placements, got shadow "
            f"{where[0]} and params {where[1]}; update matching DTensors (or plain tensors)"
        )
    with torch.no_grad():  # without autograd, to_local() is the local tensor itself, no copy
        return s.to_local(), p.to_local()  # type: ignore[attr-defined]
