"""The in-place blend of many torch tensors, grouped once into a ``Plan`` and applied per update.

Leaves are grouped by (kind, device, shadow dtype, params dtype):

* same dtype: one ``torch._foreach_lerp_`` per group (a per-tensor ``lerp_`` loop where the
  private op is missing). ``lerp_(params, 1 - decay)`` is the core's two-sided blend; it may
  differ from the generic path by one rounding (at most 1 ulp of ``max(|s|, |p|)``).
* a float32/float64 shadow over narrower float params (bf16, fp16): one pass without an fp32
  copy of the params (``_host``'s compiled loop on CPU when numba is installed, else ``_mixed``);
* anything else (complex, a shadow narrower than its params): the generic core, per leaf;
* integer and bool leaves (and copied buffers): ``torch._foreach_copy_``.

A host decay (Python float) skips at 1 and copies at 0. A device decay (0-d tensor) is never
read: it reaches ``lerp_`` as a tensor weight and the copies go through ``torch.where``, so an
update can be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ema_core import _core
from ema_core._types import LeafKind, Namespace, Value
from ema_core.backends.torch import _foreach, _host
from ema_core.backends.torch._mixed import lerp_mixed_

_HALF = (torch.float16, torch.bfloat16)


@dataclass
class Group:
    """Tensors that one fused call can update: same device and dtypes."""

    shadows: list[torch.Tensor] = field(default_factory=list)
    params: list[torch.Tensor] = field(default_factory=list)
    host: _host.Bound | None = None  # the numpy views ``_host`` made for it, kept for reuse


@dataclass
class Plan:
    """The groups of one set of leaves; build it once, apply it every update."""

    same: list[Group] = field(default_factory=list)
    mixed: list[Group] = field(default_factory=list)
    other: list[Group] = field(default_factory=list)
    exact: list[Group] = field(default_factory=list)


def _bucket(kind: LeafKind, s: torch.Tensor, p: torch.Tensor) -> str:
    if kind == "exact":
        return "exact"
    if s.is_complex() or p.is_complex():
        return "other"
    if s.dtype == p.dtype:
        return "same"
    widens = torch.promote_types(s.dtype, p.dtype) == s.dtype and s.dtype not in _HALF
    return "mixed" if widens else "other"


def make_plan(
    shadows: Sequence[torch.Tensor], params: Sequence[torch.Tensor], kinds: Sequence[LeafKind]
) -> Plan:
    """Group leaf pairs (already validated: equal shapes and devices) by how they update."""
    keyed: dict[tuple[LeafKind, torch.device, torch.dtype, torch.dtype], Group] = {}
    for s, p, kind in zip(shadows, params, kinds, strict=True):
        group = keyed.setdefault((kind, s.device, s.dtype, p.dtype), Group())
        group.shadows.append(s)
        group.params.append(p)
    plan = Plan()
    for (kind, *_), group in keyed.items():
        getattr(plan, _bucket(kind, group.shadows[0], group.params[0])).append(group)
    return plan


def apply(xp: Namespace, plan: Plan, decay: Value, rate: Value) -> None:
    """Blend every group of ``plan`` in place with ``decay`` (weight on the old average)."""
    if isinstance(decay, float) and decay == 1.0:
        return
    for group in plan.exact:
        copy_(group, decay)
    if isinstance(decay, float) and decay == 0.0:
        for group in (*plan.same, *plan.mixed, *plan.other):
            _foreach.copy_(group.shadows, group.params)
        return
    for group in plan.same:
        if isinstance(rate, float) or group.shadows[0].dtype not in _HALF:
            _foreach.lerp_(group.shadows, group.params, _weight(rate, group.shadows[0]))
        else:  # a device rate must not be rounded to a half dtype: the core computes in fp32
            _generic(xp, group, decay, rate)
    for group in plan.mixed:
        rest = _on_host(xp, group, decay, rate)
        if rest.shadows:
            host = decay if isinstance(decay, float) else None
            lerp_mixed_(rest.shadows, rest.params, _weight(rate, rest.shadows[0]), host)
    for group in plan.other:
        _generic(xp, group, decay, rate)


def _on_host(xp: Namespace, group: Group, decay: Value, rate: Value) -> Group:
    """Blend what the compiled host kernels take (``_host``); the group of what is left.
    On the CPU a device decay takes the generic core: the same bits as a host decay gets from
    the compiled loop or from ``_mixed``'s op-by-op steps."""
    shadow = group.shadows[0]
    if (
        not isinstance(decay, float)
        and shadow.device.type == "cpu"
        and type(shadow) is torch.Tensor
    ):
        _generic(xp, group, decay, rate)
        return Group()
    if not (isinstance(decay, float) and _host.usable(shadow, group.params[0])):
        return group
    group.host = _host.lerp_(group.shadows, group.params, decay, float(rate), group.host)
    left = group.host.left
    return Group([group.shadows[i] for i in left], [group.params[i] for i in left])


def copy_(group: Group, decay: Value) -> None:
    """Integer, bool and copied leaves: the params' value wherever the update applies."""
    if isinstance(decay, float):
        _foreach.copy_(group.shadows, group.params)
        return
    skip = decay == 1.0
    for s, p in zip(group.shadows, group.params, strict=True):
        s.copy_(torch.where(skip.to(s.device), s, p))


def _weight(rate: Value, like: torch.Tensor) -> float | torch.Tensor:
    """A host rate as a float; a device rate as a 0-d tensor in the shadow's compute dtype."""
    if isinstance(rate, float):
        return rate
    dtype = torch.float32 if like.dtype in _HALF else like.dtype
    weight: torch.Tensor = rate.to(device=like.device, dtype=dtype)
    return weight


def _generic(xp: Namespace, group: Group, decay: Value, rate: Value) -> None:
    for s, p in zip(group.shadows, group.params, strict=True):
        new = _core.blend(xp, s, p, decay, rate)
        if new is not s:
            s.copy_(new)
