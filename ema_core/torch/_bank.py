"""``EMABank``: K EMAs of the same tensors with different configs, updated in one pass."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import array_api_compat.torch as xp
import torch

from ema_core import _bank_snapshots, _banks, _snapshot_args
from ema_core._config import Config
from ema_core._core import next_weight
from ema_core._leaf_checks import check_finite
from ema_core._types import Step, Value
from ema_core.torch import _bank_args, _bank_snap, _dtensor, _names, _refusals, _rules
from ema_core.torch._bank_fused import Fused
from ema_core.torch._eager import eager
from ema_core.torch._interrupts import HeldInterrupts
from ema_core.torch._module import EMA

FORMAT = "ema_core.torch.EMABank"
VERSION = 1


class EMABank:
    """K exponential moving averages of one model's tensors, each with its own ``Config``,
    updated together: on the CPU the params are read once for all K (``8K + 4`` bytes moved
    per float32 element instead of ``12K``), elsewhere each EMA updates as it would alone.
    Every average is bit-equal to that of a separate ``EMA`` with the same config.

    ``bank[k]`` is a real ``EMA`` (``average``, ``swap()``, ``copy_to``, ``state_dict``) whose
    updates the bank performs; ``len(bank)`` is K.

    Args:
        module_or_named_tensors: what ``EMA`` takes (a module, a mapping or (name, tensor)
            pairs).
        configs: one ``Config`` per EMA. They must agree on ``buffers``, ``non_float`` and
            ``dtype``; schedules, ``init``, ``interval`` and the rest may differ.
        sigma_rels: instead of ``configs``, EDM2's power-function EMAs (``init="copy"``,
            buffers copied), e.g. ``(0.05, 0.10)``.
        interval: with ``sigma_rels``: update every ``interval`` steps, compensated (the
            decays telescope to EDM2's ``(1 - interval/t) ** (gamma + 1)``).
        dtype, device, buffers, include, exclude: as ``EMA``, for every EMA of the bank.
        snapshot_every: after the update at every step that is a multiple of it, write one
            ``ema_core.posthoc.save_snapshot`` per EMA into ``snapshot_dir`` (power-function
            EMAs whose average is that function's: ``_snapshot_args.check_power_profile``),
            the step's snapshots as one set: all written, or none if one fails.
            What can be checked before the update is (``_bank_snapshots.check_set``); a failed
            write leaves the update applied and raises ``SnapshotWriteError``: write the
            step's snapshots again with ``save_snapshots(which=error.which)``.
        snapshot_dir: the directory of those snapshots.

    Raises:
        TypeError / ValueError: before anything is built; see ``_bank_args``, and ``EMA``.

    Example:
        >>> import torch
        >>> from ema_core.torch import EMABank
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> bank = EMABank(model, sigma_rels=(0.05, 0.10))
        >>> len(bank), [round(s, 2) for s in bank.sigma_rels]
        (2, [0.05, 0.1])
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(2.0)
        >>> bank.update()  # the first update copies (init="copy")
        >>> bank[1].average["weight"]
        tensor([[2., 2.]])
    """

    def __init__(
        self,
        module_or_named_tensors: Any,
        /,
        configs: Sequence[Config] | None = None,
        *,
        sigma_rels: Sequence[float] | None = None,
        interval: int = 1,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        buffers: _names.BufferPolicy | None = None,
        include: _names.NameFilter = None,
        exclude: _names.NameFilter = None,
        snapshot_every: int | None = None,
        snapshot_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        found = _bank_args.resolve_configs(configs, sigma_rels, interval)
        resolved = [_rules.resolve_config(None, None, c, dtype, buffers) for c in found]
        _bank_args.check_shared(resolved)
        # each EMA's sigma_rel as its config reads (the shortest decimal of its gamma), so that
        # the bank's snapshots and save_snapshot(dir, bank[k]) give one EMA one label
        self.sigma_rels = tuple(_bank_args.sigma_rels_of(resolved))
        _snapshot_args.check_snapshots(snapshot_every, snapshot_dir, resolved)
        self.snapshot_every, self.snapshot_dir = snapshot_every, snapshot_dir
        if snapshot_every is not None:
            _bank_snap.posthoc()  # fail here, not at the first snapshot, when it is missing
        tracked, include, exclude = map(
            _bank_args.read_once, (module_or_named_tensors, include, exclude)
        )
        self.emas = tuple(
            EMA(tracked, config=c, device=device, include=include, exclude=exclude)
            for c in resolved
        )
        self._fused: Fused | None = None
        if snapshot_every is not None:  # refused before the first update, not at a due step
            _bank_snap.check_at_build(self.emas, self.sigma_rels, snapshot_every, snapshot_dir)

    def __len__(self) -> int:
        return len(self.emas)

    def __getitem__(self, k: int) -> EMA:
        """The ``k``-th EMA; ``k`` an int in ``[-K, K)`` (negative counts from the end).

        Raises:
            TypeError: ``k`` is not an int (a bool or slice is not one). IndexError: out of
                range; both name ``k`` and K.
        """
        return self.emas[_banks.index("bank", k, len(self.emas))]

    def __iter__(self) -> Iterator[EMA]:
        return iter(self.emas)

    def __repr__(self) -> str:
        return f"EMABank({len(self.emas)} EMAs of {len(self.emas[0].names)} tensors)"

    def __copy__(self) -> EMABank:
        """``copy.copy``: as ``copy.deepcopy`` (the EMAs copy as ``EMA`` does, sharing no
        shadow; a shallow copy would hold the same EMAs, updated twice by the two banks)."""
        return copy.deepcopy(self)

    def __getstate__(self) -> dict[str, Any]:
        """Copied or pickled without the fused plan (views of the EMAs' memory, numba's among
        them): the next update makes it again. The EMAs copy as ``EMA`` does."""
        return {**self.__dict__, "_fused": None}

    @eager  # inside a compiled function: run eagerly (a graph break)
    def update(self, step: Step | None = None, /, **named: Step | None) -> None:
        """Update every EMA of the bank at ``step`` (each counts its own updates when None),
        as ``EMA.update`` does; all steps and decays are checked before anything is written.

        Raises:
            TypeError / ValueError: as ``EMA.update``, for any EMA of the bank, or a snapshot
                due after it that its writer would refuse, or (with snapshots) a ``step``
                that leaves out an update its interval makes due; PermissionError / OSError: its
                folder is not writable, or a link in its way; RuntimeError while an EMA is
                inside ``swap()``. Nothing is written then.
            SnapshotWriteError: the update is applied, but writing its snapshots failed.
        """
        step = _refusals.step_of(step, named)  # also refuses timm's update(model, step=t)
        for ema in self.emas:
            ema._refuse_in_swap("update")
        # an update an exception cut short (bank[k].update(...)) is completed first; given
        # again its very step, that EMA is not updated at it a second time (as EMA.update);
        # without a step, this call is a new update of every EMA, at its next step
        given = None if step is None else _rules.given_step(step)
        finished = [
            given is not None
            and e._bound.pending is not None
            and _rules.same_host_step(given, e._bound.pending.step)
            for e in self.emas
        ]
        for ema in self.emas:
            ema._settle()
        work = [
            (ema._step, 1.0, 0.0) if done else _bank_args.checked_step(ema, given)  # 1: kept
            for ema, done in zip(self.emas, finished, strict=True)
        ]
        steps = [t for t, _, _ in work]
        if given is not None:
            _bank_snap.check_no_gap(self.emas, self.snapshot_every, self.snapshot_dir, steps)
        due = _bank_snap.check_due(  # before any shadow changes
            self.emas, self.sigma_rels, self.snapshot_every, self.snapshot_dir, steps
        )
        for ema in self.emas:
            ema._bound.refresh()
        if any(ema.config.guard_finite for ema in self.emas):  # one answer on every rank
            bound = self.emas[0]._bound
            paths = [(("key", n),) for n in self.emas[0].names]
            check_finite(xp, _dtensor.finite_stand_ins(bound.live), bound.kinds, paths)
        decays = [d for _, d, _ in work]
        if all(isinstance(d, float) for d in decays):
            self._fused_update(work)
        else:  # device or CPU-tensor steps: each EMA by its own routes
            with HeldInterrupts():
                for ema, (t, d, r) in zip(self.emas, work, strict=True):
                    ema._apply(t, d, r)
        if due and self.snapshot_dir is not None:
            which = [k for k, ema in enumerate(self.emas) if any(ema is e for e, _ in due)]
            with _bank_snapshots.retrying("", which, len(self.emas)) as retry:
                _bank_snap.write(due, self.snapshot_dir, None, retry)

    def _fused_update(self, work: list[tuple[Any, Value, Value]]) -> None:
        bindings = [ema._bound for ema in self.emas]
        if self._fused is None or not self._fused.current(bindings) or not self._fused.prepare():
            self._fused = Fused(bindings)  # a tensor made strided in place is split out again
            self._fused.prepare()
        decays = [float(d) for _, d, _ in work]
        rates = [float(r) for _, _, r in work]
        with HeldInterrupts():
            self._fused.apply(xp, decays, rates)
            for ema, (t, d, r) in zip(self.emas, work, strict=True):
                if ema.config.init == "zeros":
                    ema._weight = next_weight(xp, ema._weight, d, r)
                ema._step = t

    def save_snapshots(
        self,
        directory: str | os.PathLike[str] | None = None,
        /,
        *,
        dtype: str | None = None,
        which: Sequence[int] | None = None,
    ) -> list[Path]:
        """Write every EMA's average (or those of ``bank[k]`` for k in ``which``) as an EDM2
        snapshot at its step, as one set (all or none), into ``directory`` (default
        ``snapshot_dir``); return the paths. After a ``SnapshotWriteError``, and before the
        next update, ``save_snapshots(which=error.which)`` writes the update's files.

        Raises:
            TypeError: no ``directory`` nor ``snapshot_dir``. ValueError: an EMA is not a power
                function, two share a sigma_rel, or their intervals differ; an EMA to write
                is at step 0. What ``_banks.indices`` refuses of ``which``, and what
                ``save_snapshot`` raises; SnapshotWriteError: the write failed.
        """
        folder = self.snapshot_dir if directory is None else directory
        if folder is None:
            raise TypeError("save_snapshots() needs a directory: this bank has no snapshot_dir")
        chosen = _banks.indices(which, len(self.emas))
        for ema in self.emas:
            ema._settle()
        sigma_rels = _bank_snap.sigma_rels(self.emas, self.sigma_rels)
        _snapshot_args.snapshot_steps([int(e.step) for e in self.emas], None, chosen, "bank")
        due = [(self.emas[k], sigma_rels[k]) for k in chosen]
        return _bank_snap.write(due, folder, dtype, None)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the bank bit for bit: each EMA's ``state_dict``."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "emas": [ema.state_dict() for ema in self.emas],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any], /, *, strict: bool = True) -> None:
        """Restore every EMA from ``state_dict``; all K parts are checked before any is loaded.

        Raises:
            TypeError / ValueError: a wrong format or version, another number of EMAs, or a
                part that ``EMA.load_state_dict`` refuses; nothing is written then.
        """
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be a bool (True or False), got {strict!r:.80}")
        parts = _bank_args.parts(state_dict, len(self.emas), FORMAT, VERSION)
        for k, (ema, part) in enumerate(zip(self.emas, parts, strict=True)):
            try:
                ema._checked_state(part, strict)
            except (TypeError, ValueError) as error:  # the same error, naming the EMA
                raise type(error)(f"state_dict['emas'][{k}]: {error}") from error
        for ema, part in zip(self.emas, _bank_args.unaliased(parts, self.emas), strict=True):
            ema.load_state_dict(part, strict=strict)
