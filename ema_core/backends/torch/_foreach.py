"""The fused ops every torch path uses, with per-tensor loops where ``torch._foreach_*``
(private API) is missing. ``HAS_FOREACH`` picks; the tests pin both choices bitwise equal."""

from __future__ import annotations

import torch

#: ``torch._foreach_lerp_`` / ``_foreach_copy_`` exist (torch >= 2.1); loops otherwise.
HAS_FOREACH = hasattr(torch, "_foreach_lerp_") and hasattr(torch, "_foreach_copy_")


def lerp_(
    shadows: list[torch.Tensor], ends: list[torch.Tensor], weight: float | torch.Tensor
) -> None:
    """``s += weight * (e - s)`` for same-dtype pairs (``weight`` is ``1 - decay``)."""
    if not HAS_FOREACH:
        for s, e in zip(shadows, ends, strict=True):
            s.lerp_(e, weight)
    elif isinstance(weight, float):
        torch._foreach_lerp_(shadows, ends, weight)
    else:  # the Scalar overload would read a 0-d tensor on the host; the List one does not
        torch._foreach_lerp_(shadows, ends, [weight] * len(shadows))


def lerp_ends_(
    shadows: list[torch.Tensor],
    ends: list[torch.Tensor],
    weight: float | torch.Tensor,
    decay: torch.Tensor,
) -> None:
    """``lerp_`` with a device weight, exact at both ends without reading the decay on the
    host: where ``decay`` (0-d, on the shadows' device) is 1 every shadow keeps its bits, where
    it is 0 each takes its ``ends``' (same dtype) bits; inf and NaN included, which the blend
    alone would spread (``s + 0 * (inf - s)`` is NaN). Three ops per tensor (lerp, two selects)
    and one temporary of its size: only device decays come here."""
    keep, take = decay == 1.0, decay == 0.0
    for s, e in zip(shadows, ends, strict=True):
        mid = torch.lerp(s, e, weight)
        if type(s) is torch.Tensor:
            torch.where(take, e, mid, out=mid)
            torch.where(keep, s, mid, out=s)
        else:  # a tensor subclass (DTensor): no ``out=``
            s.copy_(torch.where(keep, s, torch.where(take, e, mid)))


def copy_(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """``t.copy_(s)`` for every pair (casting to the target's dtype)."""
    if HAS_FOREACH:
        torch._foreach_copy_(targets, sources)
    else:
        for t, s in zip(targets, sources, strict=True):
            t.copy_(s)
