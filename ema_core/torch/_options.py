"""The ``Binding`` of the tracked tensors to their shadows and store, which follows the module
when it replaces or converts a tensor and remembers an update cut short (``Pending``); the
rules it applies per tensor (shadow dtype, which tensors move, what a replacement may change)
are in ``_rules``."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from ema_core._config import Config
from ema_core._leaf_checks import check_finite
from ema_core._types import Namespace, Value
from ema_core.torch import _dtensor, _names, _store, _ties, _watch
from ema_core.torch._prefixes import wrapper_prefix
from ema_core.torch._rules import check_rebind, moves, shadow_dtype


class Pending(NamedTuple):
    """An update cut short by an exception: its step, decay and the tracked tensors it did."""

    step: int | torch.Tensor
    decay: Value
    rate: Value
    done: frozenset[int]


class Binding:
    """The tracked tensors, their shadows (``shadows[i]`` for ``live[i]``) and the store.

    ``refresh()`` follows tensors the module replaced, converted or moved since the last look
    (``_watch.Watch``: one pointer, shape and dtype read per tensor when nothing changed):
    the shadows are kept, converted to the dtype rule of the new tensor and moved beside it
    where needed. ``apply`` updates the tracked tensors that move (``Config.non_float`` may
    freeze integer ones) and keeps track of an update cut short (``pending``).

    The same look covers the host engine's views and the Triton launches of a ``Local`` store's
    groups (mixed, and float32 on CUDA; one pass over the tensors per update): when it found them
    unchanged (``vouched``, for the next ``apply`` only) the store uses them without comparing them
    again. ``covered``: every view (and launch) the store holds was bound under the current watch;
    one bound without its vouching (the module held other objects over the same memory) is dropped
    at the next vouched look.
    """

    #: the root's wrapper prefix (None: read again, for a Binding pickled before it was kept)
    prefix: str | None = None
    #: the tracked tensors' tied names, read when the EMA was built (none in older pickles)
    aliases: _ties.Aliases = ()

    def __init__(
        self,
        config: Config,
        root: torch.nn.Module | None,
        tracked: list[_names.Tracked],
        target: torch.device | None,
    ) -> None:
        self.config, self.root, self.target = config, root, target
        self.prefix = "" if root is None else wrapper_prefix(root)  # kept: names never change
        zeros = config.init == "zeros"
        self.shadows = [
            _store.make_shadow(
                t.tensor, shadow_dtype(config, t), target, zeros and t.kind == "float"
            )
            for t in tracked
        ]
        self.pending: Pending | None = None
        self.aliases = _ties.tied_names(root, tracked)
        self._bind(tracked)

    def tied_raw(self) -> list[str]:
        """The raw paths of the tied names watched (``_ties``)."""
        return [raw for raw, _ in self.aliases]

    def _bind(self, tracked: list[_names.Tracked]) -> None:
        self.tracked = tracked
        self.live = [t.tensor for t in tracked]
        self.forms = _forms(self.live)
        self.kinds = [t.kind for t in tracked]
        self.moving = [i for i, t in enumerate(tracked) if moves(self.config, t)]
        self.store = self._store_of(self.moving)
        self._watch(tracked)

    def _watch(self, tracked: list[_names.Tracked]) -> None:
        """Watch ``tracked`` from now on, with the shadows of a ``Local`` store: the watch
        then also vouches for the store's host-engine views (``_watch.Watch``), which are
        dropped here so that every view bound from now on is bound to what it watches."""
        local = isinstance(self.store, _store.Local)
        shadows = self.shadows if local else None
        self.watch = _watch.Watch(self.root, tracked, shadows, self.aliases)
        self.store.forget()
        self.covered = True  # every view of the store bound under this watch (none yet)
        self.vouched = True  # the next apply may skip the views' own check

    def _store_of(self, indices: list[int]) -> _store.Store:
        pick = [self.shadows[i] for i in indices], [self.live[i] for i in indices]
        names = [f"[{self.tracked[i].name!r}]" for i in indices]
        return _store.store_for(*pick, [self.kinds[i] for i in indices], names)

    def refresh(self, objects: bool = False) -> None:
        """Rebind to the module's current tensors when the watch saw a change (``objects``:
        also one that shares the old tensor's storage; see ``_watch.Watch``).

        Raises:
            ValueError: a tracked tensor is gone, on the meta device, reshaped, or changed
                between floating and integer, or a name tied to one holds a tensor of its own
                (``_ties.check_ties``); nothing is changed then.
        """
        if self.watch.same(objects):
            fits, held = self.watch.fits, self.watch.held
            if not fits:  # a shadow or a layout changed over the same memory
                self.watch.views.renew()
            if not fits or (held and not self.covered):  # views made again, all watched
                self.store.forget()
                self.covered = True
            self.vouched = held
            return
        self.vouched = False
        now = _names.lookup(self.root, self.tracked, self.config.buffers, self.prefix)
        for old, new, shadow in zip(self.tracked, now, self.shadows, strict=True):
            check_rebind(old, new, shadow)
        self.aliases = _ties.check_ties(self.root, self.aliases, now)
        self.store.wait()
        shadows = [
            _store.moved_shadow(s, t.tensor, shadow_dtype(self.config, t), self.target)
            for s, t in zip(self.shadows, now, strict=True)
        ]
        kept = all(a is b for a, b in zip(shadows, self.shadows, strict=True))
        if (
            kept
            and _forms([t.tensor for t in now]) == self.forms
            and all(a.tensor is b for a, b in zip(now, self.live, strict=True))
        ):  # the same tensors with their data moved: the kernels follow that themselves
            self.tracked = now
            self._watch(now)
            return
        self.shadows = shadows
        self._bind(now)

    def follow(self) -> None:
        """``refresh()`` when a tracked tensor's data moved (``_watch.Watch.moved``: one
        pointer read per plain tensor, one lookup per module on their paths), for reads of
        the shadows between updates. A change ``refresh`` refuses (a tensor gone, reshaped,
        sparse, on the meta device) leaves the shadows readable as they are; the next
        ``update`` raises it."""
        if self.watch.moved():
            with contextlib.suppress(TypeError, ValueError):  # refused before any change
                self.refresh()

    def check_finite(self, xp: Namespace, names: tuple[str, ...]) -> None:
        """With ``Config.guard_finite``, raise for a non-finite live tensor (before a write)."""
        if self.config.guard_finite:
            live = _dtensor.finite_stand_ins(self.live)  # one answer on every rank
            check_finite(xp, live, self.kinds, [(("key", n),) for n in names])

    def apply(self, xp: Namespace, step: int | torch.Tensor, decay: Value, rate: Value) -> None:
        """Update the tensors that move at ``step``, or finish the ``pending`` update first
        when it is that step (its tensors done are skipped). An exception that cuts the update
        short leaves ``pending`` saying what is done; a complete one clears it."""
        skip = self.pending.done if self.pending is not None else frozenset()
        indices = [i for i in self.moving if i not in skip] if skip else self.moving
        store = self._store_of(indices) if skip else self.store
        kept, self.vouched = self.vouched and not skip, False  # vouched by this update's look
        self.covered = self.covered and (kept or bool(skip))
        try:
            with torch.no_grad():
                store.apply(xp, decay, rate, kept=kept)
        except BaseException:
            done = skip | {indices[p] for p in store.done}
            self.pending = Pending(step, decay, rate, done) if done else None
            raise
        self.pending = None


def _forms(tensors: list[torch.Tensor]) -> list[tuple[torch.dtype, torch.device]]:
    return [(t.dtype, t.device) for t in tensors]
