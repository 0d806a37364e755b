"""``Watch``: the per-update check that the module still holds the tensors an ``EMA`` tracks,
where and as they were (``_names`` says which tensors and under which names)."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Any

import torch

from ema_core.torch import _dtensor
from ema_core.torch._names import PLAIN as _PLAIN
from ema_core.torch._names import Tracked

__all__ = ["Watch"]


class Watch:
    """Notices, cheaply, that the module replaced a tracked tensor or moved its data.

    ``same()`` is the per-update check, one pointer, one shape and one dtype read per tensor and
    nothing per element: each plain tensor the module holds under a tracked name (read through
    its owner's ``_parameters`` / ``_buffers``; the tensors themselves for named tensors) still
    has the data pointer, shape and dtype it had (``param.data = param.data[:16]`` keeps the
    pointer, ``param.data = param.data.view(torch.float16)`` the pointer and shape). That sees
    a tensor replaced (``model.weight = ...``, ``to_empty``, ``module.to`` re-creating buffers)
    and data moved or converted in place (``param.data = ...``, ``module.to(dtype)``,
    ``module.cuda()``); each module on the way must still be its parent's. Tensors without
    data pointers (empty, tensor subclasses) are compared by identity, dtype and device.
    ``same(objects=True)`` also compares every tensor's identity (a replacement sharing the old
    storage), for the rarer calls. DTensors (FSDP2) are left to the store, which follows their
    local shards itself. When ``same()`` is False, ``EMA``
    looks the tensors up again by name (``lookup``) and rebinds.
    """

    def __init__(self, root: torch.nn.Module | None, tracked: list[Tracked]) -> None:
        watched = [t for t in tracked if not _dtensor.is_dtensor(t.tensor)]
        fast = [type(t.tensor) in _PLAIN and t.tensor.data_ptr() != 0 for t in watched]
        self.fast = _Reads(root, [t for t, f in zip(watched, fast, strict=True) if f])
        self.slow = _Reads(root, [t for t, f in zip(watched, fast, strict=True) if not f])
        self.pointers = list(map(torch.Tensor.data_ptr, self.fast.held))
        self.shapes = [t.shape for t in self.fast.held]
        self.dtypes = [t.dtype for t in self.fast.held]
        self.forms = [(t.dtype, t.device) for t in self.slow.held]
        chain = {(id(p), k): (p, k, c) for t in watched for p, k, c in _chain(root, t.raw)}
        self.parents = [p for p, _, _ in chain.values()]
        self.names = [k for _, k, _ in chain.values()]
        self.children = [c for _, _, c in chain.values()]

    def same(self, objects: bool = False) -> bool:
        """True when every tracked tensor is where, and as, it was (see the class doc)."""
        try:
            now = list(self.fast.now())
            if list(map(torch.Tensor.data_ptr, now)) != self.pointers:
                return False
            # compared as they come: a list of 20k new Size objects per update would survive
            # long enough to wake the garbage collector's full passes
            if not all(map(operator.eq, map(_SHAPE, now), self.shapes)):
                return False
            if not all(map(operator.is_, map(_DTYPE, now), self.dtypes)):
                return False  # the same memory seen as another dtype (p.data = p.data.view(...))
        except (TypeError, RuntimeError):  # gone (None), or a tensor without storage now
            return False
        slow = list(self.slow.now())
        return (
            all(map(operator.is_, slow, self.slow.held))
            and [(t.dtype, t.device) for t in slow] == self.forms
            and all(map(operator.is_, map(dict.get, self.parents, self.names), self.children))
            and (not objects or all(map(operator.is_, self.fast.now(), self.fast.held)))
        )


_SHAPE = operator.attrgetter("shape")
_DTYPE = operator.attrgetter("dtype")


class _Reads:
    """Tracked tensors read back: through their owners' dicts for a module, else as held."""

    def __init__(self, root: torch.nn.Module | None, tracked: list[Tracked]) -> None:
        self.held = [t.tensor for t in tracked]
        slots = [_slot(root, t) for t in tracked] if root is not None else []
        self.tables = [table for table, _ in slots]
        self.keys = [key for _, key in slots]

    def now(self) -> Iterator[Any]:
        return map(dict.get, self.tables, self.keys) if self.tables else iter(self.held)


def _slot(root: torch.nn.Module, t: Tracked) -> tuple[dict[str, Any], str]:
    """The dict (``_parameters`` or ``_buffers``) and key under which ``root`` holds ``t``."""
    path, _, key = t.raw.rpartition(".")
    owner = root.get_submodule(path) if path else root
    return (owner._buffers if t.is_buffer else owner._parameters), key


def _chain(root: torch.nn.Module | None, raw: str) -> list[tuple[dict[str, Any], str, Any]]:
    """``(parent._modules, name, child)`` for each module on the way from ``root`` to ``raw``."""
    out: list[tuple[dict[str, Any], str, Any]] = []
    module = root
    for name in raw.split(".")[:-1]:
        if module is None:
            break
        child = module._modules.get(name)
        out.append((module._modules, name, child))
        module = child
    return out
