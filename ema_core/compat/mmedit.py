"""MMEditing's ``ExponentialMovingAverage`` (mmengine's, with the MMEditing signature) for torch
modules, on ema-core's update.

Like mmengine 0.10: ``module`` is an averaged copy of the model (a deep copy made once, with
``requires_grad`` off), ``steps`` counts ``update_parameters()`` calls; the first call copies
the model, later calls blend when ``steps % interval == 0`` with ``momentum`` as the weight of
the NEW value (``decay = 1 - momentum``). Buffers are copied from the model every call, or, with
``update_buffers=True``, floating buffers are averaged and integer ones left alone after the
first copy. Torch modules only: for JAX models use ``ema_core.init`` / ``update`` with
``presets.mmedit(...)``, the functional equivalent.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

import ema_core
from ema_core import presets
from ema_core._checks import check_fraction, check_positive
from ema_core.schedules import momentum as momentum_schedule


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
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_fraction("momentum", momentum)
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"momentum must be in (0, 1), got {momentum}")
        check_positive("interval", interval, integer=True)
        if not isinstance(update_buffers, bool):
            raise TypeError(f"update_buffers must be a bool, got {update_buffers!r}")
        self.module = copy.deepcopy(model).requires_grad_(False)
        if device is not None:
            self.module = self.module.to(device)
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long, device=device))
        self.momentum, self.interval, self.update_buffers = momentum, interval, update_buffers
        self.config = presets.mmedit(momentum, interval, update_buffers)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The averaged model's forward."""
        return self.module(*args, **kwargs)

    def _averaged(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        if self.update_buffers:
            return dict(model.state_dict(keep_vars=True))
        return dict(model.named_parameters())

    def avg_func(
        self, averaged_param: torch.Tensor, source_param: torch.Tensor, steps: int
    ) -> None:
        """Blend one tensor in place: ``averaged += momentum * (source - averaged)``."""
        ema_core.ema_update(
            averaged_param, source_param, steps + 1, schedule=momentum_schedule(self.momentum)
        )

    def update_parameters(self, model: torch.nn.Module) -> None:
        """Copy (first call) or blend (every ``interval`` calls) the model into ``module``."""
        mine, theirs = self._averaged(self.module), self._averaged(model)
        if set(mine) != set(theirs):
            raise ValueError(
                f"model does not match the averaged module: {sorted(set(mine) ^ set(theirs))}"
            )
        steps = int(self.steps)
        src = {k: v.detach().to(mine[k].device) for k, v in theirs.items()}
        with torch.no_grad():
            if steps == 0:
                for key, value in mine.items():
                    value.copy_(src[key])
            else:
                ema_core.ema_update(
                    {k: v.detach() for k, v in mine.items()}, src, steps + 1, config=self.config
                )
        if not self.update_buffers:
            self.sync_buffers(model)
        self.steps.add_(1)

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Copy the model's buffers into ``module``."""
        with torch.no_grad():
            for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
                mine.copy_(theirs.to(mine.device))

    def sync_parameters(self, model: torch.nn.Module) -> None:
        """Copy the model's parameters and buffers into ``module``."""
        source = model.state_dict(keep_vars=True)
        with torch.no_grad():
            for key, value in self.module.state_dict(keep_vars=True).items():
                value.copy_(source[key].to(value.device))
