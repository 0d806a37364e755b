"""Where an ``EMA`` keeps its shadows, and how it updates them.

``Local``: the shadows sit on the params' devices; one ``Plan`` built at construction is
applied every update (no per-tensor Python work per update beyond the fused calls).

``Remote``: the shadows live on another device, in practice ``device="cpu"`` for a CUDA model,
in pinned host memory. Each update streams one tensor at a time: the shadow goes to the params'
device with a non-blocking copy, is blended there and goes back with a non-blocking copy, all in
stream order, so the host never waits. ``wait()`` blocks until those copies are done; the
``EMA`` calls it before anything reads or writes the host shadow.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ema_core._types import LeafKind, Namespace, Value
from ema_core.backends.torch import _dist, _kernels


def make_shadow(
    live: torch.Tensor, dtype: torch.dtype, device: torch.device | None, zeros: bool
) -> torch.Tensor:
    """A new shadow for ``live``: a copy (or zeros) in ``dtype`` on ``device`` (pinned host
    memory when ``live`` is on CUDA and ``device`` is the CPU). Never aliases ``live``. A
    DTensor (FSDP2) gets a DTensor shadow with its placements (``_dist``)."""
    if _dist.is_dtensor(live):
        return _dist.make_shadow(live, dtype, device, zeros)
    source = live.detach()
    if device is None or _same(device, source.device):
        out = torch.empty_like(source, dtype=dtype)
    else:
        pin = device.type == "cpu" and source.is_cuda
        out = torch.empty(source.shape, dtype=dtype, device=device, pin_memory=pin)
    return out.zero_() if zeros else out.copy_(source)


def _same(wanted: torch.device, actual: torch.device) -> bool:
    """``"cuda"`` (no index) names the device a CUDA tensor is already on."""
    return wanted.type == actual.type and wanted.index in (None, actual.index)


class Local:
    """Shadows on the params' devices: a fused plan built once."""

    def __init__(
        self, shadows: list[torch.Tensor], live: list[torch.Tensor], kinds: list[LeafKind]
    ) -> None:
        self.plan = _kernels.make_plan(shadows, live, kinds)

    def apply(self, xp: Namespace, decay: Value, rate: Value) -> None:
        _kernels.apply(xp, self.plan, decay, rate)

    def wait(self) -> None:
        """Nothing is in flight: local updates are stream-ordered with every later use."""


class Remote:
    """Shadows on another device (pinned host memory): blended on the params' device."""

    def __init__(
        self, shadows: list[torch.Tensor], live: list[torch.Tensor], kinds: list[LeafKind]
    ) -> None:
        self.pairs = list(zip(shadows, live, kinds, strict=True))
        self.event: torch.cuda.Event | None = None

    def apply(self, xp: Namespace, decay: Value, rate: Value) -> None:
        if isinstance(decay, float) and decay == 1.0:
            return
        for shadow, live, kind in self.pairs:
            work = torch.empty_like(live, dtype=shadow.dtype)
            work.copy_(shadow, non_blocking=True)
            _kernels.apply(xp, _kernels.make_plan([work], [live], [kind]), decay, rate)
            shadow.copy_(work, non_blocking=True)
        if any(live.is_cuda for _, live, _ in self.pairs):
            self.event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self.event.record()

    def wait(self) -> None:
        """Block until the last update's copies have landed in host memory."""
        if self.event is not None:
            self.event.synchronize()
            self.event = None


def store_for(
    shadows: Sequence[torch.Tensor], live: Sequence[torch.Tensor], kinds: Sequence[LeafKind]
) -> Local | Remote | _dist.Sharded:
    """``Sharded`` when any tensor is a DTensor; ``Local`` when every shadow is on its live
    tensor's device; else ``Remote``."""
    args = (list(shadows), list(live), list(kinds))
    if any(_dist.is_dtensor(t) for t in live):
        return _dist.Sharded(*args)
    same = all(s.device == t.device for s, t in zip(shadows, live, strict=True))
    return Local(*args) if same else Remote(*args)
