"""MMEditing's ``ExponentialMovingAverage`` (mmengine's, with the MMEditing signature) for torch
modules, on ema-core's update.

Like mmengine 0.10: ``module`` is an averaged copy of the model (a deep copy made once, with
``requires_grad`` off), ``steps`` counts ``update_parameters()`` calls; the first call copies
the model, later calls blend when ``steps % interval == 0`` with ``momentum`` as the weight of
the NEW value (``decay = 1 - momentum``). Buffers are copied from the model on every call (the
calls between interval updates included), or, with ``update_buffers=True``, floating buffers
are averaged and integer ones left alone after the first copy, as are tensors that are not
floating point among the parameters. A subclass's own ``avg_func`` is called per floating
tensor, as mmengine calls it; ``momentum`` and ``interval`` may be set between calls (checked).
A tensor tied under two names blends once (mmengine's ``update_buffers=True`` blends it once per
name). Torch modules only: for JAX models use ``ema_core.init`` /
``update`` with ``presets.mmedit(...)``, the functional equivalent.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import torch

import ema_core
from ema_core import presets
from ema_core._checks import check_fraction, check_positive
from ema_core.compat._modules import check_module, check_pairs, state_tensors
from ema_core.compat._writes import check_materialized
from ema_core.presets._args import check_bool
from ema_core.schedules import momentum as momentum_schedule
from ema_core.torch._refusals import device_of


class ExponentialMovingAverage(torch.nn.Module):
    """``Xema_{t+1} = (1 - momentum) * Xema_t + momentum * X_t`` for a torch module.

    Example:
        >>> import torch
        >>> from ema_core.compat.mmedit import ExponentialMovingAverage
        >>> model = torch.nn.Linear(2, 1)
        >>> ema = ExponentialMovingAverage(model, momentum=0.5)
        >>> ema.update_parameters(model)  # the first call copies
        >>> with torch.no_grad():
        ...     _ = model.bias.add_(2.0)
        >>> ema.update_parameters(model)
        >>> bool(torch.allclose(ema.module.bias, model.bias - 1.0))
        True
    """

    steps: torch.Tensor

    def __init__(
        self,
        model: torch.nn.Module,
        momentum: float = 0.0002,
        interval: int = 1,
        device: torch.device | str | None = None,
        update_buffers: bool = False,
    ) -> None:
        super().__init__()
        check_module(model)
        check_bool("update_buffers", update_buffers)
        self.update_buffers = update_buffers
        self._configure(momentum, interval)
        device = _device(device)
        self.module = copy.deepcopy(model).requires_grad_(False)
        if device is not None:
            self.module = self.module.to(device)
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long, device=device))

    def _configure(self, momentum: float, interval: int) -> None:
        """Check ``momentum`` and ``interval`` and build the ``config`` the blends use."""
        check_fraction("momentum", momentum)
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"momentum must be in (0, 1), got {momentum}")
        check_positive("interval", interval, integer=True)
        self.config = presets.mmedit(momentum, interval, self.update_buffers)
        self._momentum, self._interval = momentum, interval

    @property
    def momentum(self) -> float:
        """The weight of the new value; set it to change the blends that follow (checked)."""
        return self._momentum

    @momentum.setter
    def momentum(self, value: float) -> None:
        self._configure(value, self._interval)

    @property
    def interval(self) -> int:
        """Blend every ``interval`` calls; set it to change the calls that follow (checked)."""
        return self._interval

    @interval.setter
    def interval(self, value: int) -> None:
        with warnings.catch_warnings():  # a momentum above 0.5 was warned of when it was set
            warnings.simplefilter("ignore", UserWarning)
            self._configure(self._momentum, value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The averaged model's forward."""
        return self.module(*args, **kwargs)

    def _averaged(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return state_tensors(model) if self.update_buffers else dict(model.named_parameters())

    def avg_func(
        self, averaged_param: torch.Tensor, source_param: torch.Tensor, steps: int | torch.Tensor
    ) -> None:
        """Blend one tensor in place: ``averaged += momentum * (source - averaged)``.

        ``update_parameters`` calls a subclass's override once per floating tensor, with the
        ``steps`` buffer, as mmengine does; without one it blends all tensors in one call.
        """
        ema_core.ema_update(
            averaged_param, source_param, int(steps) + 1, schedule=momentum_schedule(self.momentum)
        )

    def update_parameters(self, model: torch.nn.Module) -> None:
        """Copy (first call) or blend (every ``interval`` calls) the model into ``module``.

        The model must have the averaged module's parameters and buffers (names, shapes, kinds
        of dtype), checked before the first write: on an error nothing has changed.
        """
        check_module(model)
        # built on a meta model (lazy init): materialised with its holder (to_empty) first
        first = "materialize them before the first update_parameters"
        check_materialized(_all_tensors(self.module), "the EMA's module", first)
        check_materialized(_all_tensors(model), "model", first)
        mine, theirs = self._averaged(self.module), self._averaged(model)
        check_pairs(mine, theirs, "model")
        buffers = None if self.update_buffers else self._buffer_pairs(model)
        steps = int(self.steps)
        src = {k: v.detach().to(mine[k].device) for k, v in theirs.items()}
        with torch.no_grad():
            if steps == 0:
                for key, value in mine.items():
                    value.copy_(src[key])
            elif steps % self._interval == 0:
                self._blend(_unique(mine), src)
            if buffers is not None:
                _copy_all(*buffers)
        self.steps.add_(1)

    def _blend(self, mine: dict[str, torch.Tensor], src: dict[str, torch.Tensor]) -> None:
        """As mmengine, only floating tensors blend; the others keep their first copy."""
        floating = [k for k, v in mine.items() if v.is_floating_point()]
        if type(self).avg_func is not ExponentialMovingAverage.avg_func:
            for key in floating:  # a subclass's own blend
                self.avg_func(mine[key].detach(), src[key], self.steps)
        elif floating:
            ema_core.ema_update(
                {k: mine[k].detach() for k in floating},
                {k: src[k] for k in floating},
                int(self.steps) + 1,
                config=self.config,
            )

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Copy the model's buffers into ``module`` (by name; all checked before the first)."""
        pairs = self._buffer_pairs(check_module(model))
        with torch.no_grad():
            _copy_all(*pairs)

    def sync_parameters(self, model: torch.nn.Module) -> None:
        """Copy the model's parameters and buffers into ``module`` (all checked before the
        first), non-persistent buffers included, as MMEditing copies ``parameters()`` and
        ``buffers()``."""
        mine, theirs = _all_tensors(self.module), _all_tensors(check_module(model))
        check_pairs(mine, theirs, "model")
        with torch.no_grad():
            _copy_all(mine, theirs)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """torch's ``load_state_dict``, with every entry checked first (names when ``strict``,
        shapes, kinds of dtype, data, ``steps >= 0``): on an error nothing has been loaded."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        check_bool("strict", strict)
        check_bool("assign", assign)
        mine = self.state_dict(keep_vars=True)
        theirs = dict(state_dict) if strict else {k: state_dict[k] for k in mine if k in state_dict}
        check_pairs(mine if strict else {k: mine[k] for k in theirs}, theirs, "state_dict")
        if "steps" in theirs and int(theirs["steps"]) < 0:
            raise ValueError(f"state_dict['steps'] must be >= 0, got {int(theirs['steps'])}")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _buffer_pairs(
        self, model: torch.nn.Module
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        mine, theirs = dict(self.module.named_buffers()), dict(model.named_buffers())
        check_pairs(mine, theirs, "model buffers")
        return mine, theirs


def _all_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``module`` by name (non-persistent buffers included)."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _unique(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The first name of each tensor: tied weights (one tensor under two names in a state dict)
    blend once, as they do through ``named_parameters()``."""
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        if id(value) not in seen:
            seen.add(id(value))
            out[key] = value
    return out


def _copy_all(mine: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor]) -> None:
    """``mine[k].copy_(theirs[k])`` for every name (checked by ``check_pairs`` before)."""
    for key, value in mine.items():
        value.copy_(theirs[key].to(value.device))


def _device(device: Any) -> torch.device | None:
    """None, or ``device`` as a ``torch.device`` this machine has (a TypeError or ValueError
    naming it, as ``EMA(device=...)`` checks it)."""
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise TypeError(f"device must be None, a str, an int or a torch.device, got {device!r:.80}")
    try:
        target = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must name a torch device, got {device!r}: {err}") from None
    # one this machine has (not torch's AssertionError), not meta; named as it was given
    return device_of(device if isinstance(device, str) else target)
