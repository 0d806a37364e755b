"""The two fused ops every torch path uses, with per-tensor loops where ``torch._foreach_*``
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


def copy_(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """``t.copy_(s)`` for every pair (casting to the target's dtype)."""
    if HAS_FOREACH:
        torch._foreach_copy_(targets, sources)
    else:
        for t, s in zip(targets, sources, strict=True):
            t.copy_(s)
