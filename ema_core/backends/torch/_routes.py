"""The in-place blend of many torch tensors, grouped once into a ``Plan`` and applied per update.

Leaves are grouped by (kind, device, shadow dtype, params dtype):

* same dtype: one ``torch._foreach_lerp_`` per group (a per-tensor ``lerp_`` loop where the
  private op is missing). ``lerp_(params, 1 - decay)`` is the core's two-sided blend; it may
  differ from the generic path by one rounding (at most 1 ulp of ``max(|s|, |p|)``).
* a float32/float64 shadow over narrower float params (bf16, fp16): one pass without an fp32
  copy of the params (``_host``'s compiled loop on CPU when numba is installed, else ``_mixed``);
* anything else (complex, a shadow narrower than its params): the generic core, per leaf;
* integer and bool leaves (and copied buffers): ``torch._foreach_copy_``, on every call,
  whatever the decay (1 included: the copied tensors follow the model also when the averaged
  ones skip).

A host decay (Python float) skips the averaged groups at 1 and copies them at 0. A device decay
(0-d tensor) is never read: it reaches ``lerp_`` as a tensor weight and both ends are selected
on the device with ``torch.where`` (decay 1 keeps every averaged shadow's bits, decay 0 gives
the params' bits, inf and NaN included), so an update can be captured in a CUDA graph.

Before anything is written, every float32/float64-over-half pair is checked against its shadow
(shape and device): those paths run kernels that index the params by the shadow's size
(compiled host loops, Triton) or cast-copy them into a scratch (which would broadcast). The
host loops' views are (re)made, each pair checked, when a tensor's storage, shape or dtype
changed. A mismatch raises ``ValueError`` naming the tensor and leaves every shadow as it was.
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
    names: list[str] = field(default_factory=list)  # for error messages
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
    shadows: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    kinds: Sequence[LeafKind],
    names: Sequence[str] | None = None,
) -> Plan:
    """Group leaf pairs (already validated: equal shapes and devices) by how they update;
    ``names`` (default: the positions) name the tensors in errors."""
    labels = [f"#{i}" for i in range(len(shadows))] if names is None else list(names)
    keyed: dict[tuple[LeafKind, torch.device, torch.dtype, torch.dtype], Group] = {}
    for s, p, kind, name in zip(shadows, params, kinds, labels, strict=True):
        group = keyed.setdefault((kind, s.device, s.dtype, p.dtype), Group())
        group.shadows.append(s)
        group.params.append(p)
        group.names.append(name)
    plan = Plan()
    for (kind, *_), group in keyed.items():
        getattr(plan, _bucket(kind, group.shadows[0], group.params[0])).append(group)
    return plan


def apply(xp: Namespace, plan: Plan, decay: Value, rate: Value) -> None:
    """Blend every averaged group of ``plan`` in place with ``decay`` (weight on the old
    average) and copy the exact ones (at every decay; a host decay of 1 copies only those).

    Raises:
        ValueError: a params tensor of a mixed-precision group no longer fits its shadow
            (resized or moved since the plan was made); nothing has been written then.
    """
    if isinstance(decay, float) and decay == 1.0:
        for group in plan.exact:
            copy_(group)
        return
    hosted = _check_mixed(plan, decay)
    for group in plan.exact:
        copy_(group)
    if isinstance(decay, float) and decay == 0.0:
        for group in (*plan.same, *plan.mixed, *plan.other):
            _foreach.copy_(group.shadows, group.params)
        return
    for group in plan.same:
        like = group.shadows[0]
        if isinstance(rate, float):
            _foreach.lerp_(group.shadows, group.params, rate)
        elif like.dtype in _HALF:  # a device rate must not be rounded to a half dtype: the
            _generic(xp, group, decay, rate)  # core computes in fp32
        else:
            _foreach.lerp_ends_(group.shadows, group.params, _weight(rate, like), _on(decay, like))
    for group, host in zip(plan.mixed, hosted, strict=True):
        rest = _on_host(xp, group, decay, rate) if host else group
        if rest.shadows:
            like = rest.shadows[0]
            ends = decay if isinstance(decay, float) else _on(decay, like)
            lerp_mixed_(rest.shadows, rest.params, _weight(rate, like), ends)
    for group in plan.other:
        _generic(xp, group, decay, rate)


def _check_mixed(plan: Plan, decay: Value) -> list[bool]:
    """Check every mixed pair against its shadow, or (re)bind the host loops' views, which
    checks each pair when they are (re)made; per group, whether ``_on_host`` takes it."""
    hosted = []
    for group in plan.mixed:
        shadow = group.shadows[0]
        cpu = shadow.device.type == "cpu" and type(shadow) is torch.Tensor
        loops = isinstance(decay, float) and decay != 0.0 and _host.usable(shadow, group.params[0])
        if loops and _host.stale(group.host, group.shadows, group.params):
            _check_pairs(group)
            group.host = _host.bind(group.shadows, group.params, group.host)
        elif not loops:
            _check_pairs(group)
        hosted.append(loops or (cpu and not isinstance(decay, float)))
    return hosted


def _check_pairs(group: Group) -> None:
    """Raise ``ValueError`` if a params tensor no longer has its shadow's shape and device."""
    for s, p, name in zip(group.shadows, group.params, group.names, strict=True):
        if p.shape != s.shape or p.device != s.device:
            raise ValueError(
                f"params {name}: shape {tuple(p.shape)} on {p.device}, but its shadow has "
                f"shape {tuple(s.shape)} on {s.device}; it was resized, replaced or moved "
                "after the update plan was made, and must keep its shadow's shape and device"
            )


def _on_host(xp: Namespace, group: Group, decay: Value, rate: Value) -> Group:
    """Blend what the compiled host kernels take (``_host``, views bound by ``_check_mixed``);
    the group of what is left. On the CPU a device decay takes the generic core: the same bits
    as a host decay gets from the compiled loop or from ``_mixed``'s op-by-op steps."""
    if not isinstance(decay, float):
        _generic(xp, group, decay, rate)
        return Group()
    bound = group.host
    if bound is None:  # not bound (cannot happen after _check_mixed): the torch path does all
        return group
    _host.run(bound, decay, float(rate))
    return Group([group.shadows[i] for i in bound.left], [group.params[i] for i in bound.left])


def copy_(group: Group) -> None:
    """Integer, bool and copied leaves: the params' value on every call, whatever the decay
    (no decay is read, so a device decay needs no select here)."""
    _foreach.copy_(group.shadows, group.params)


def _on(decay: Value, like: torch.Tensor) -> torch.Tensor:
    """A device decay on ``like``'s device (no host read)."""
    return torch.as_tensor(decay, device=like.device)


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
