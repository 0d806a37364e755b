"""The arguments of ``EMA``: one ``Config`` from decay / schedule / config, and the step."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ema_core._checks import check_choice, check_fraction
from ema_core._config import Config
from ema_core._ops import is_host_array, ops_for
from ema_core.backends.torch._names import BUFFER_POLICIES
from ema_core.schedules import as_schedule


def checked_step(step: Any) -> int | torch.Tensor:
    ops_for(step, "step")  # TypeError / ValueError for what is not a count
    return int(step) if is_host_array(step) else step


def resolve_config(decay: Any, schedule: Any, config: Any, dtype: Any, buffers: Any) -> Config:
    """The one Config: from ``config``, or built from ``decay`` / ``schedule``; ``dtype`` and
    ``buffers`` override its fields when given (``buffers`` is ``"copy"`` without a config)."""
    pairs = (("decay", decay), ("schedule", schedule), ("config", config))
    given = [n for n, v in pairs if v is not None]
    if len(given) > 1:
        raise TypeError(f"pass at most one of decay, schedule or config; got {', '.join(given)}")
    if buffers is not None:
        check_choice("buffers", buffers, BUFFER_POLICIES)
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be an ema_core.Config, got {type(config).__name__}")
    changes: dict[str, Any] = {}
    if config is None:
        rule = Config().schedule if decay is None else check_fraction("decay", decay)
        config = Config(schedule=rule if schedule is None else as_schedule(schedule))
        changes["buffers"] = "copy"
    if buffers is not None:
        changes["buffers"] = buffers
    if dtype is not None:
        changes["dtype"] = (
            str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
        )
    resolved: Config = dataclasses.replace(config, **changes)
    return resolved
