"""``Watch``: the per-update check that the module still holds the tensors an ``EMA`` tracks,
where and as they were (``_names`` says which tensors and under which names)."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Any

import torch

from ema_core.backends.torch._pairs import PLAIN as _PLAIN
from ema_core.backends.torch._pairs import memory_key
from ema_core.torch import _dtensor
from ema_core.torch._names import Tracked
from ema_core.torch._ties import Aliases, entry, owner_of
from ema_core.torch._watch_views import Views, kept_reads, prepared

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
    storage), for the rarer calls. DTensors (FSDP2) are compared by identity and dtype (FSDP2
    keeps the DTensor through ``model.to(dtype)``): the store follows their local shards
    itself. Where the module holds another tensor in a DTensor's
    place, ``same()`` first reshards the FSDP2 modules (``put_back``; see ``_fsdp``): what is
    left there then is the user's, a change. When ``same()`` is False, ``EMA`` looks the
    tensors up again by name (``lookup``) and rebinds.

    Given the shadows, the same pass also covers what the kernels' prepared reads of the pairs
    depend on (the host engine's views of mixed-precision CPU pairs, the Triton kernel's launch
    tables of mixed-precision and float32 CUDA pairs: ``_pairs.Key``; ``Views``): each such param's
    layout and its shadow's pointer, size, layout and dtype (``fits``), and whether the module still
    holds those params' very objects (``held``). A ``same()`` with both vouches that views or
    launches made since the watch began (or since ``views.renew()``) still fit, and the store skips
    its own comparison of them (``_host.stale``, ``_prewrite.prepare``); ``held`` also needs every
    pair a kernel keeps reads of among the views (``complete``: a ``Parameter`` subclass, whose
    ``.data`` the watch does not read, is not).
    """

    def __init__(
        self,
        root: torch.nn.Module | None,
        tracked: list[Tracked],
        shadows: list[torch.Tensor] | None = None,
        aliases: Aliases = (),
    ) -> None:
        self.tracked_tensors = [t.tensor for t in tracked]
        others_named = [Tracked(raw, tracked[i].tensor, "float", raw) for raw, i in aliases]
        self.aliased = _Reads(root, others_named)  # tied names: what each holds now (the
        self.aliased.held = list(self.aliased.now())  # tracked tensor, or one over its memory)
        self.alias_memory = list(map(memory_key, self.aliased.held))
        others: list[torch.Tensor | None] = [None] * len(tracked) if shadows is None else [*shadows]
        pairs = zip(tracked, others, strict=True)
        watched = [(t, s) for t, s in pairs if not _dtensor.is_dtensor(t.tensor)]
        self.sharded = _Reads(root, [t for t in tracked if _dtensor.is_dtensor(t.tensor)])
        self.fsdp = _dtensor.fsdp_modules(root) if self.sharded.held else []
        fast = [type(t.tensor) in _PLAIN and t.tensor.data_ptr() != 0 for t, _ in watched]
        on = [w for w, f in zip(watched, fast, strict=True) if f]
        self.fast = _Reads(root, [t for t, _ in on])
        self.slow = _Reads(root, [t for (t, _), f in zip(watched, fast, strict=True) if not f])
        self.views = Views([(j, t.tensor, s) for j, (t, s) in enumerate(on) if prepared(s, t)])
        # a pair a kernel keeps reads of that the views do not cover (an empty param, a
        # Parameter subclass): never vouched for
        self.complete = len(self.views.where) == sum(kept_reads(s, t) for t, s in watched)
        self.fits = self.held = False
        self.pointers = list(map(torch.Tensor.data_ptr, self.fast.held))
        self.shapes = [t.shape for t in self.fast.held]
        self.dtypes = [t.dtype for t in self.fast.held]
        self.forms = [(t.dtype, t.device) for t in self.slow.held]
        self.sharded_dtypes = [t.dtype for t in self.sharded.held]  # FSDP2 converts in place
        raws = [t.raw for t, _ in watched] + [raw for raw, _ in aliases]
        chain = {(id(p), k): (p, k, c) for raw in raws for p, k, c in _chain(root, raw)}
        self.parents = [p for p, _, _ in chain.values()]
        self.names = [k for _, k, _ in chain.values()]
        self.children = [c for _, _, c in chain.values()]
        self._plain = _plain(self.parents)  # a TorchScript module's _modules is not a dict
        slots = {  # where each tracked tensor's owner holds it, from the reads above
            id(x): (table, key)
            for reads in (self.sharded, self.fast, self.slow)
            for x, table, key in zip(reads.held, reads.tables, reads.keys, strict=False)
        }
        self.slots = [slots.get(id(t.tensor)) for t in tracked]  # None: a named tensor

    def owners(self) -> list[Any]:
        """What each tracked tensor's owner holds now under its key (the tensor itself for
        named tensors); a submodule replaced since is not read (its old owner's dict is)."""
        return [
            t if slot is None else entry(*slot)
            for t, slot in zip(self.tracked_tensors, self.slots, strict=True)
        ]

    def same(self, objects: bool = False) -> bool:
        """True when every tracked tensor is where, and as, it was (see the class doc). When
        True, also sets ``fits`` (what the host engine's views depend on is as it was) and
        ``held`` (the module holds the objects the views were made from)."""
        self.fits = self.held = False
        sharded = self.put_back()
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
            self.fits = self.views.same(now)
        except (TypeError, RuntimeError):  # gone (None), or a tensor without storage now
            return False
        self.held = self.complete and self.views.held(now)
        slow = list(self.slow.now())
        return (
            all(map(operator.is_, slow, self.slow.held))
            and self._aliases_held()
            and [(t.dtype, t.device) for t in slow] == self.forms
            and self._children_held()
            and sharded
            and all(map(operator.is_, map(_DTYPE, self.sharded.held), self.sharded_dtypes))
            and (not objects or all(map(operator.is_, self.fast.now(), self.fast.held)))
        )

    def _aliases_held(self) -> bool:
        """Whether each tied name still holds what it held (a watch unpickled from before
        ties were watched has none)."""
        aliased = getattr(self, "aliased", None)
        if aliased is None or not aliased.held:
            return True
        now = list(aliased.now())  # the same objects over the same memory (.data replaced)
        return all(map(operator.is_, now, aliased.held)) and (
            list(map(memory_key, now)) == getattr(self, "alias_memory", None)
        )

    def _children_held(self) -> bool:
        """Whether each module on the tracked tensors' paths still holds the child it held."""
        found = map(dict.get if self._plain else entry, self.parents, self.names)
        return all(map(operator.is_, found, self.children))

    def forget(self) -> None:
        """Make the next ``same()`` and ``moved()`` see a change (no tensor has address -1):
        the owner then looks the tensors up again and watches them afresh."""
        self.pointers = [-1] * len(self.pointers)

    def moved(self) -> bool:
        """A cheaper look than ``same()``, for reads between updates (``EMA.average``): whether
        a tracked tensor's data pointer changed (``model.to(dtype)``, ``.to(device)``, a tensor
        replaced, a submodule replaced), one pointer read per plain tensor and one lookup per
        module on their paths. Misses what keeps the pointer (a view as
        another dtype or shape), which the next ``same()`` sees. Watches holding other tensors
        (subclasses, empty ones, DTensors) take the full look."""
        if self.slow.held or self.sharded.held:
            return not self.same()
        try:
            if not self._children_held():
                return True  # a submodule replaced: its old owner's dicts say nothing
            return list(map(torch.Tensor.data_ptr, self.fast.now())) != self.pointers
        except (TypeError, RuntimeError):  # gone (None), or a tensor without storage now
            return True

    def put_back(self) -> bool:
        """Reshard the FSDP2 modules (no collective) when the module holds another tensor in
        a tracked DTensor's place: FSDP2's all-gathered copy, never to be tracked or looked up
        by name in its stead. Returns ``sharded_held()`` after that."""
        held = self.sharded_held()
        if self.fsdp and not held:
            _dtensor.reshard(self.fsdp)
            held = self.sharded_held()
        return held

    def sharded_held(self) -> bool:
        """Whether the module holds every tracked DTensor itself, not some other tensor in
        its place: FSDP2's all-gathered copy (after a forward with ``reshard_after_forward=
        False``, or ``unshard()``), or a tensor the user put there."""
        return all(map(operator.is_, self.sharded.now(), self.sharded.held))


_SHAPE = operator.attrgetter("shape")
_DTYPE = operator.attrgetter("dtype")


class _Reads:
    """Tracked tensors read back: through their owners' dicts for a module, else as held."""

    def __init__(self, root: torch.nn.Module | None, tracked: list[Tracked]) -> None:
        self.held = [t.tensor for t in tracked]
        slots = [_slot(root, t) for t in tracked] if root is not None else []
        self.tables = [table for table, _ in slots]
        self.keys = [key for _, key in slots]
        self._plain = _plain(self.tables)

    def now(self) -> Iterator[Any]:
        if not self.tables:
            return iter(self.held)
        return map(dict.get if self._plain else entry, self.tables, self.keys)


def _plain(tables: list[Any]) -> bool:
    """Whether every table is a dict, read with ``dict.get`` (the fast path, which dynamo
    traces); else each is read with ``entry``: a TorchScript module holds its parameters,
    buffers and children in tables of its own."""
    return all(type(table) is dict for table in tables)


def _slot(root: torch.nn.Module, t: Tracked) -> tuple[dict[str, Any], str]:
    """The dict (``_parameters`` or ``_buffers``) and key under which ``root`` holds ``t``
    (walked child by child: a TorchScript module has no ``get_submodule``)."""
    owner, key = owner_of(root, t.raw)
    return (owner._buffers if t.is_buffer else owner._parameters), key


def _chain(root: torch.nn.Module | None, raw: str) -> list[tuple[dict[str, Any], str, Any]]:
    """``(parent._modules, name, child)`` for each module on the way from ``root`` to ``raw``."""
    out: list[tuple[dict[str, Any], str, Any]] = []
    module = root
    for name in raw.split(".")[:-1]:
        if module is None:
            break
        child = entry(module._modules, name)
        out.append((module._modules, name, child))
        module = child
    return out
