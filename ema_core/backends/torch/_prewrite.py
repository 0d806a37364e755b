"""What a route checks before its first write (``_routes.apply`` runs ``check`` for every
group of a mixed or a Triton route before it runs any), and the reads a group keeps between
updates: the host engine's views (``Group.host``) and the Triton kernel's launch
(``Group.launch``), each made with every pair checked and kept while the pairs' ``_pairs.Key``
holds, or while the caller vouches for them (``kept``: the ``EMA`` class's watch, the stateless
call's cache). A refused pair raises ``ValueError`` naming it, and nothing is written.
"""

from __future__ import annotations

from ema_core.backends.torch import _host, _launch, _memory, _pairs
from ema_core.backends.torch._plan import Group

__all__ = ["TRITON", "check", "check_pairs", "prepare"]

#: The routes through the Triton kernel, whose launch a group keeps (``prepare``).
TRITON = ("triton-mixed", "triton-mixed-ends", "triton-ends", "triton-same")


def check(group: Group, way: str, kept: bool = False) -> None:
    """Check a group's pairs before any write (a mixed group's, or a Triton route's): each
    time for the blocked CUDA routes, and for the host engine and the Triton routes when their
    views or launch are made (kept while nothing moved or the caller vouches, ``prepare``)."""
    if way in TRITON:
        prepare(group, trusted=kept)
    elif way != "host-engine":
        check_pairs(group)
    elif kept and group.host is not None:
        return
    elif _host.stale(group.host, group.shadows, group.params):
        check_pairs(group, memory=True)
        group.host = _host.bind(group.shadows, group.params, group.host)


def prepare(group: Group, trusted: bool) -> None:
    """Keep ``group.launch`` (the Triton kernel's tables over the group) while the caller
    vouches for the pairs (``trusted``: ``kept``; the ``EMA`` class's watch covers the pairs
    of every Triton group, mixed and float32, ``_watch_views.prepared``, and the stateless
    cache every leaf) or while their ``_pairs.Key`` holds; else check
    the pairs and prepare the launch again. A kept launch skips every per-pair read: the
    checks, the groups and the table's key."""
    launch = group.launch
    if launch is not None and (
        trusted or not _pairs.changed(launch.key, group.shadows, group.params)
    ):
        return
    group.launch = None  # a refused pair leaves none behind
    check_pairs(group)
    group.launch = _launch.prepare(group.shadows, group.params)


def check_pairs(group: Group, memory: bool = False) -> None:
    """Raise ``ValueError`` if a params tensor no longer has its shadow's shape and device, or
    (``memory``: before the host engine views them) a tensor's storage no longer holds it.
    Whole-list reads first (``_pairs``); the loop below, which names the pair, only when they
    find something."""
    shadows, params = group.shadows, group.params
    if not memory and shadows and _pairs.same_shapes(shadows, params):
        device = shadows[0].device
        if _pairs.all_on(shadows, device) and _pairs.all_on(params, device):
            return
    for s, p, name in zip(group.shadows, group.params, group.names, strict=True):
        if p.shape != s.shape or p.device != s.device:
            raise ValueError(
                f"params {name}: shape {tuple(p.shape)} on {p.device}, but its shadow has "
                f"shape {tuple(s.shape)} on {s.device}; it was resized, replaced or moved "
                "after the update plan was made, and must keep its shadow's shape and device"
            )
        for what, t in (("params", p), ("shadow", s)) if memory else ():
            if (why := _memory.short_memory(t)) is not None:
                raise ValueError(f"{what} {name}: {why}")
