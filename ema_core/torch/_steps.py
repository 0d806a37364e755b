"""One ``EMA.update``: its step and decay checked before any write, an update an exception cut
short finished first, then the shadows blended and the counter and weight advanced (``settle``
finishes such an update before the shadows are read)."""

from __future__ import annotations

from typing import Protocol

import array_api_compat.torch as xp
import torch

from ema_core import _ops
from ema_core._checks import check_decay_value
from ema_core._config import Config
from ema_core._core import next_weight
from ema_core._types import Step, Value
from ema_core.backends.torch._routes import host_values
from ema_core.torch import _options, _refusals, _rules
from ema_core.torch._interrupts import HeldInterrupts


class Stepped(Protocol):
    """What an update reads and writes of an ``EMA``."""

    names: tuple[str, ...]
    config: Config
    _bound: _options.Binding
    _step: int | torch.Tensor
    _weight: float | torch.Tensor
    _swapped: bool

    def _apply(self, t: int | torch.Tensor, decay: Value, rate: Value) -> None: ...

    def _refuse_in_swap(self, what: str) -> None: ...


def update(ema: Stepped, step: Step | None, named: dict[str, Step | None]) -> None:
    """``EMA.update(step, **named)``: everything checked, then the pending update and this one."""
    ema._refuse_in_swap("update")
    step = _refusals.step_of(step, named)  # also refuses timm's update(model, step=t)
    pending = ema._bound.pending
    t = _ops.next_step(ema._step, "EMA step") if step is None else _rules.given_step(step)
    if step is not None:
        _rules.check_not_back(t, ema._step if pending is None else pending.step)
    decay, rate = host_values(*ema.config._pair_at(t))
    check_decay_value(decay, "the decay", step=t)
    ema._bound.refresh()
    ema._bound.check_finite(xp, ema.names)  # with Config.guard_finite
    with HeldInterrupts():
        if pending is not None:
            ema._apply(pending.step, pending.decay, pending.rate)
            if step is None or _rules.same_host_step(t, pending.step):
                return
        ema._apply(t, decay, rate)


def apply(ema: Stepped, t: int | torch.Tensor, decay: Value, rate: Value) -> None:
    """``EMA._apply``: update at step t (or finish its pending update) and count the step."""
    ema._bound.apply(xp, t, decay, rate)
    if ema.config.init == "zeros":
        ema._weight = next_weight(xp, ema._weight, decay, rate)
    ema._step = t


def settle(ema: Stepped, follow: bool) -> None:
    """``EMA._settle``: complete a pending update and wait for the store's copies."""
    pending = ema._bound.pending
    if follow and not ema._swapped:
        ema._bound.follow()
    if pending is not None:
        ema._bound.refresh()
        with HeldInterrupts():
            ema._apply(pending.step, pending.decay, pending.rate)
    ema._bound.store.wait()
