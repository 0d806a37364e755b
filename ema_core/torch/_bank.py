"""``EMABank``: K EMAs of the same tensors with different configs, updated in one pass."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import array_api_compat.torch as xp
import torch

from ema_core import _banks, _ops
from ema_core._checks import check_decay_value
from ema_core._config import Config, config_text
from ema_core._leaf_checks import check_finite
from ema_core._types import Step, Value
from ema_core.torch import _bank_args, _names, _options, _state
from ema_core.torch._bank_fused import Fused
from ema_core.torch._module import EMA
from ema_core.torch._swap import HeldInterrupts

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
            EMAs only), the step's snapshots as one set: all written, or none if one fails.
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
        resolved = [_options.resolve_config(None, None, c, dtype, buffers) for c in found]
        _bank_args.check_shared(resolved)
        given = [float(s) for s in sigma_rels] if sigma_rels is not None else None
        self.sigma_rels = tuple(given or _bank_args.sigma_rels_of(resolved))
        _banks.check_snapshots(snapshot_every, snapshot_dir, resolved)
        self.snapshot_every, self.snapshot_dir = snapshot_every, snapshot_dir
        if snapshot_every is not None:
            _save_snapshot_set()  # fail here, not at the first snapshot, when it is missing
        self.emas = tuple(
            EMA(
                module_or_named_tensors,
                config=c,
                device=device,
                include=include,
                exclude=exclude,
            )
            for c in resolved
        )
        self._fused: Fused | None = None

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

    def update(self, step: Step | None = None) -> None:
        """Update every EMA of the bank at ``step`` (each counts its own updates when None),
        as ``EMA.update`` does; all steps and decays are checked before anything is written.

        Raises:
            TypeError / ValueError: as ``EMA.update``, for any EMA of the bank; RuntimeError
                while one of them is inside ``swap()``.
        """
        for ema in self.emas:
            ema._refuse_in_swap("update")
        for ema in self.emas:
            ema._settle()  # an update an exception cut short is completed first
        work = [_checked_step(ema, step) for ema in self.emas]
        if self.snapshot_dir is not None and self._snapshot_due([t for t, _, _ in work]):
            _banks.check_snapshot_dir(self.snapshot_dir)  # refused before any shadow changes
        for ema in self.emas:
            ema._bound.refresh()
        if any(ema.config.guard_finite for ema in self.emas):
            first = self.emas[0]
            paths = [(("key", n),) for n in first.names]
            check_finite(xp, first._bound.live, first._bound.kinds, paths)
        decays = [d for _, d, _ in work]
        if all(isinstance(d, float) for d in decays):
            self._fused_update(work)
        else:  # device or CPU-tensor steps: each EMA by its own routes
            with HeldInterrupts():
                for ema, (t, d, r) in zip(self.emas, work, strict=True):
                    ema._apply(t, d, r)
        self._snapshot()

    def _fused_update(self, work: list[tuple[Any, Value, Value]]) -> None:
        bindings = [ema._bound for ema in self.emas]
        if self._fused is None or not self._fused.current(bindings):
            self._fused = Fused(bindings)
        self._fused.prepare()
        decays = [float(d) for _, d, _ in work]
        rates = [float(r) for _, _, r in work]
        with HeldInterrupts():
            self._fused.apply(xp, decays, rates)
            for ema, (t, d, r) in zip(self.emas, work, strict=True):
                if ema.config.init == "zeros":
                    ema._weight = ema._weight * d + r
                ema._step = t

    def _snapshot_due(self, steps: list[Any]) -> bool:
        """Whether an EMA at one of ``steps`` writes a snapshot (a device step is read: one
        sync per snapshot check)."""
        every = self.snapshot_every
        return every is not None and any(int(t) % every == 0 and int(t) > 0 for t in steps)

    def _snapshot(self) -> None:
        """The due EMAs' snapshots, written as one set: all of them or none."""
        if self.snapshot_dir is None:
            return
        due = [
            (ema, sigma_rel)
            for ema, sigma_rel in zip(self.emas, self.sigma_rels, strict=True)
            if self._snapshot_due([ema.step])
        ]
        if due:
            _save_snapshot_set()(
                self.snapshot_dir,
                [ema.average for ema, _ in due],
                steps=[int(ema.step) for ema, _ in due],
                sigma_rels=[sigma_rel for _, sigma_rel in due],
                intervals=[ema.config.interval for ema, _ in due],
            )

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
        parts = _parts(state_dict, len(self.emas))
        for k, (ema, part) in enumerate(zip(self.emas, parts, strict=True)):
            ema._refuse_in_swap("load_state_dict")
            ema._bound.refresh(objects=True)
            text = config_text(ema.config)
            try:
                _state.check(part, ema.names, ema._bound.shadows, text, strict)
            except (TypeError, ValueError) as error:  # the same error, naming the EMA
                raise type(error)(f"state_dict['emas'][{k}]: {error}") from error
        for ema, part in zip(self.emas, parts, strict=True):
            ema.load_state_dict(part, strict=strict)


def _checked_step(ema: EMA, step: Step | None) -> tuple[Any, Value, Value]:
    """``ema``'s step, decay and rate for this update, checked as ``EMA.update`` checks them."""
    t = _ops.next_step(ema._step, "EMA step") if step is None else _ops.concrete_step(step)
    if step is not None:
        _options.check_not_back(t, ema._step)
    decay, rate = ema.config.decay_and_rate(t)
    check_decay_value(decay, "the decay", step=t)
    return t, decay, rate


def _parts(state: Any, k: int) -> list[Any]:
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise ValueError(
            f"state_dict is format {state.get('format')!r} version {state.get('version')!r}; "
            f"this bank reads {FORMAT!r} version {VERSION}"
        )
    parts = state.get("emas")
    if not isinstance(parts, Sequence) or isinstance(parts, str):
        raise TypeError(f"state_dict['emas'] must be a list, got {type(parts).__name__}")
    if len(parts) != k:
        raise ValueError(f"state_dict['emas'] holds {len(parts)} EMAs; this bank has {k}")
    return list(parts)


def _save_snapshot_set() -> Any:
    """``ema_core.posthoc``'s writer of a set of snapshots, imported when a bank first needs it.

    Raises:
        ImportError: ``ema_core.posthoc`` is not there.
    """
    return importlib.import_module("ema_core.posthoc._snapshots").save_snapshot_set
