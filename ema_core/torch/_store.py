"""Where an ``EMA`` keeps its shadows, and how it updates them.

``Local``: the shadows sit on the params' devices; one ``Plan`` built at construction is
applied every update (no per-tensor Python work per update beyond the fused calls).

``Remote``: the shadows live on another device, in practice ``device="cpu"`` for a CUDA model,
in pinned host memory. Each update streams one tensor at a time: the shadow goes to the params'
device with a non-blocking copy, is blended there and goes back with a non-blocking copy, all in
stream order, so the host never waits. ``wait()`` blocks until those copies are done; the
``EMA`` calls it before anything reads or writes the host shadow.

``Sharded``: DTensor (FSDP2) params; the fused plan runs over the local shards (see ``_dtensor``).

Every store applies its work in units (a fused group, or one tensor) and lists in ``done`` the
positions whose unit finished, so that an update cut by an exception can be completed later
without applying a unit twice (``EMA.update``; ``_options.Binding`` holds the store).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import torch

from ema_core._types import LeafKind, Namespace, Value
from ema_core.backends.torch._routes import Group, Plan, apply, make_plan
from ema_core.torch import _dtensor

#: A unit of work: the positions (in the store's lists) it updates, and its one-group plan.
Unit: TypeAlias = tuple[list[int], Plan]


def make_shadow(
    live: torch.Tensor, dtype: torch.dtype, device: torch.device | None, zeros: bool
) -> torch.Tensor:
    """A new shadow for ``live``: a copy (or zeros) in ``dtype`` on ``device`` (pinned host
    memory when ``live`` is on CUDA and ``device`` is the CPU). Never aliases ``live``. A
    DTensor (FSDP2) gets a DTensor shadow with its placements (``_dtensor``)."""
    if _dtensor.is_dtensor(live):
        return _dtensor.make_shadow(live, dtype, device, zeros)
    out = _empty(live, dtype, device)
    return out.zero_() if zeros else out.copy_(live.detach())


def moved_shadow(
    shadow: torch.Tensor, live: torch.Tensor, dtype: torch.dtype, device: torch.device | None
) -> torch.Tensor:
    """The shadow kept for ``live`` after the model converted or moved it: ``shadow`` itself
    where it still fits (``dtype``, and ``device`` or else the live tensor's device), else a
    converted copy of it (its values kept, rounded to ``dtype``). A DTensor shadow is
    converted shard by shard (no collective) and never moved: FSDP2 moves shards itself, and
    ``Sharded`` follows them."""
    if _dtensor.is_dtensor(live) or _dtensor.is_dtensor(shadow):
        with torch.no_grad(), torch.inference_mode(False):
            return shadow if shadow.dtype == dtype else shadow.to(dtype)
    want = device if device is not None else live.device
    if shadow.dtype == dtype and _same(want, shadow.device):
        return shadow
    return _empty(live, dtype, device).copy_(shadow)


def _empty(live: torch.Tensor, dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
    """A new tensor like ``live``, never an inference tensor (made inside
    ``torch.inference_mode`` it could not be updated in place outside it)."""
    source = live.detach()
    with torch.inference_mode(False):
        if device is None or _same(device, source.device):
            return torch.empty_like(source, dtype=dtype)
        pin = device.type == "cpu" and source.is_cuda
        return torch.empty(source.shape, dtype=dtype, device=device, pin_memory=pin)


def _same(wanted: torch.device, actual: torch.device) -> bool:
    """``"cuda"`` (no index) names the device a CUDA tensor is already on."""
    return wanted.type == actual.type and wanted.index in (None, actual.index)


def units(
    shadows: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    kinds: Sequence[LeafKind],
    names: Sequence[str] | None = None,
) -> tuple[Plan, list[Unit]]:
    """The fused plan of these pairs, and its groups as units applied one after another.

    All mixed-precision groups form the first unit: the kernels check every one of their
    pairs before writing any (a tensor resized behind the plan's back then raises before
    anything is written). Then one unit per group (one fused call), and one per tensor where
    a group is updated tensor by tensor anyway (``other``). The units share the plan's groups
    (and their cached host views)."""
    plan = make_plan(shadows, params, kinds, names)
    where = {id(s): i for i, s in enumerate(shadows)}
    out: list[Unit] = []
    if plan.mixed:
        out.append(([where[id(s)] for g in plan.mixed for s in g.shadows], Plan(mixed=plan.mixed)))
    for bucket in ("exact", "same", "other"):
        for group in getattr(plan, bucket):
            pieces = [group]
            if bucket == "other":
                pieces = [
                    Group(shadows=[s], params=[p], names=[n])
                    for s, p, n in zip(group.shadows, group.params, group.names, strict=True)
                ]
            for piece in pieces:
                one = Plan(**{bucket: [piece]})
                out.append(([where[id(s)] for s in piece.shadows], one))
    return plan, out


def _run(
    work: list[Unit], done: list[int], xp: Namespace, decay: Value, rate: Value, kept: bool
) -> None:
    for positions, plan in work:
        apply(xp, plan, decay, rate, kept=kept)
        done.extend(positions)


class Local:
    """Shadows on the params' devices: a fused plan built once."""

    refusal: str | None = None  # ``Sharded``'s: these pairs always fit

    def __init__(
        self,
        shadows: list[torch.Tensor],
        live: list[torch.Tensor],
        kinds: list[LeafKind],
        names: list[str] | None = None,
    ) -> None:
        self.plan, self.units = units(shadows, live, kinds, names)
        self.done: list[int] = []

    def apply(self, xp: Namespace, decay: Value, rate: Value, *, kept: bool = False) -> None:
        """``kept``: the caller found the tensors unchanged since the host engine's views
        were bound (``_options.Binding``), which are then used without comparing them again."""
        self.done = []
        _run(self.units, self.done, xp, decay, rate, kept)

    def forget(self) -> None:
        """Drop the host engine's views and the Triton launches, the float32 groups' too
        (made again, each pair checked, at the next use)."""
        for group in (*self.plan.mixed, *self.plan.same):
            group.host = group.launch = None

    def wait(self) -> None:
        """Nothing is in flight: local updates are stream-ordered with every later use."""


class Remote:
    """Shadows on another device (pinned host memory): blended on the params' device."""

    refusal: str | None = None  # ``Sharded``'s: these pairs always fit

    def __init__(
        self,
        shadows: list[torch.Tensor],
        live: list[torch.Tensor],
        kinds: list[LeafKind],
        names: list[str] | None = None,
    ) -> None:
        self.pairs = list(zip(shadows, live, kinds, strict=True))
        self.names = [f"#{i}" for i in range(len(shadows))] if names is None else names
        self.event: torch.cuda.Event | None = None
        self.done: list[int] = []

    def apply(self, xp: Namespace, decay: Value, rate: Value, *, kept: bool = False) -> None:
        """``kept`` is not used: each update plans afresh."""
        self.done = []
        skip = isinstance(decay, float) and decay == 1.0  # only the exact tensors are copied
        for i, (shadow, live, kind) in enumerate(self.pairs):
            if skip and kind != "exact":
                self.done.append(i)
                continue
            work = torch.empty_like(live, dtype=shadow.dtype)
            work.copy_(shadow, non_blocking=True)
            plan = make_plan([work], [live], [kind], [self.names[i]])
            apply(xp, plan, decay, rate)
            shadow.copy_(work, non_blocking=True)
            self.done.append(i)
        if any(live.is_cuda for _, live, _ in self.pairs):
            self.event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self.event.record()

    def forget(self) -> None:
        """Nothing kept between updates."""

    def wait(self) -> None:
        """Block until the last update's copies have landed in host memory."""
        if self.event is not None:
            self.event.synchronize()
            self.event = None


class Sharded:
    """Shadows of DTensor params (and of any plain tensors beside them), updated shard-locally.

    The units over the local tensors are kept while the params' local tensors stay the same
    objects (one identity check per tensor and update) and rebuilt when FSDP2 replaced one.
    A pair whose layouts differ (``refusal``) is refused by every update before any write:
    the binding that holds this store stays consistent, and the refusal lasts.
    """

    def __init__(
        self,
        shadows: list[torch.Tensor],
        live: list[torch.Tensor],
        kinds: list[LeafKind],
        names: list[str] | None = None,
    ) -> None:
        #: every apply raises it first, and so does ``EMA.swap`` before it puts anything in
        self.refusal = _dtensor.refusal(shadows, live, names)
        self.shadows = [_dtensor.local(s) for s in shadows]
        self.live, self.kinds, self.names = live, kinds, names
        self.parts: list[torch.Tensor] = []
        self.units: list[Unit] = []
        self.done: list[int] = []

    def apply(self, xp: Namespace, decay: Value, rate: Value, *, kept: bool = False) -> None:
        """``kept`` is not used: the watch does not see local shards, so views are compared."""
        self.done = []
        if self.refusal is not None:
            raise ValueError(self.refusal)
        parts = [_dtensor.part(t) for t in self.live]
        if len(parts) != len(self.parts) or any(
            a is not b for a, b in zip(parts, self.parts, strict=True)
        ):
            self.parts = parts
            _, self.units = units(self.shadows, parts, self.kinds, self.names)
        _run(self.units, self.done, xp, decay, rate, False)

    def forget(self) -> None:
        """Nothing to drop: the views over local shards are compared at every update."""

    def wait(self) -> None:
        """Nothing is in flight: local updates are stream-ordered with every later use."""


Store: TypeAlias = "Local | Remote | Sharded"


def store_for(
    shadows: Sequence[torch.Tensor],
    live: Sequence[torch.Tensor],
    kinds: Sequence[LeafKind],
    names: Sequence[str] | None = None,
) -> Store:
    """``Sharded`` when any tensor is a DTensor; ``Local`` when every shadow is on its live
    tensor's device; else ``Remote``. ``names`` name the tensors in errors."""
    args = (list(shadows), list(live), list(kinds), None if names is None else list(names))
    if any(_dtensor.is_dtensor(t) for t in (*live, *shadows)):
        return Sharded(*args)
    same = all(s.device == t.device for s, t in zip(shadows, live, strict=True))
    return Local(*args) if same else Remote(*args)
