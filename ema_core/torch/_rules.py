"""What the ``EMA`` arguments mean for its tensors: one ``Config`` from decay / schedule /
config (read by ``ema_core._arguments``, as every entry reads them); the step counter (advanced,
never going back; checked by ``_ops.concrete_step``); the shadow dtype of a tracked tensor and
whether an update moves it; what a tensor the module replaced may change."""

from __future__ import annotations

from typing import Any

import torch

from ema_core import _arguments, _ops
from ema_core._config import Config, shadow_dtype_name
from ema_core.torch._names import Tracked


def check_not_back(step: int | torch.Tensor, current: int | torch.Tensor) -> None:
    """Raise when an explicit ``step`` is below the EMA's ``current`` count; checked where the
    host holds both values (Python ints, CPU tensors); device values are trusted.

    Raises:
        ValueError: ``step < current``, or ``step`` is a meta tensor (checked first: an update
            at it would copy the exact leaves, then fail on its meta decay).
    """
    if isinstance(step, torch.Tensor) and step.is_meta:  # its decay would be meta too
        raise ValueError(
            "step is a meta tensor (it holds no value): pass an int or a 0-d integer tensor "
            "with data (on the CPU or the model's device)"
        )
    new, old = _host_int(step), _host_int(current)
    if new is not None and old is not None and new < old:
        raise ValueError(
            f"step={new} is below this EMA's step {old}: updates cannot go back (a step at the "
            "schedule's first update would copy the params again with init='copy'); resume "
            "from an earlier state with load_state_dict(), or build a new EMA"
        )


def given_step(step: Any) -> int | torch.Tensor:
    """``update(step)``'s step, validated (``_ops.concrete_step``); a CPU tensor copied, so
    that the caller's ``step += 1`` in place after the call does not change the EMA's count
    (it would read as the next step's). A CUDA step is kept as given: a CUDA graph that
    increments its step in place and replays the update reads the EMA's count from it."""
    t = _ops.concrete_step(step)
    if isinstance(t, torch.Tensor) and t.device.type == "cpu":
        return t.detach().clone()
    return t


def same_host_step(a: int | torch.Tensor, b: int | torch.Tensor) -> bool:
    """Whether the host holds both counts and they are equal (device counts are never read)."""
    x, y = _host_int(a), _host_int(b)
    return x is not None and x == y


def _host_int(value: int | torch.Tensor) -> int | None:
    if isinstance(value, int):
        return value
    return int(value) if _ops.is_readable(value) else None


def check_rebind(old: Tracked, new: Tracked, shadow: torch.Tensor) -> None:
    """Raise unless the shadow of ``old`` can follow ``new``, the tensor the module now holds
    under its name: the same shape, and floating (or not) as before.

    Raises:
        ValueError: another shape, or a change between floating and integer.
    """
    if tuple(new.tensor.shape) != tuple(shadow.shape):
        raise ValueError(
            f"the module's tensor {old.name!r} has shape {tuple(new.tensor.shape)} now and "
            f"{tuple(shadow.shape)} when the EMA was built; build a new EMA for a reshaped model"
        )
    if new.kind != old.kind or floating(new.tensor) != floating(old.tensor):
        now, was = (_role(t) for t in (new, old))
        raise ValueError(
            f"the module's tensor {old.name!r} is {now} now and was {was}: an EMA cannot "
            "follow a tensor switched between averaged and copied (floating and integer, or "
            "a parameter and a copied buffer); build a new EMA"
        )


def _role(tracked: Tracked) -> str:
    """How a tracked tensor is handled, for messages: ``'an averaged torch.float32 parameter'``."""
    kind = "an averaged" if tracked.kind == "float" else "a copied"
    return f"{kind} {tracked.tensor.dtype} {'buffer' if tracked.is_buffer else 'parameter'}"


def floating(tensor: torch.Tensor) -> bool:
    """A float or complex tensor (the others are integers and bools, never averaged)."""
    return tensor.is_floating_point() or tensor.is_complex()


def shadow_dtype(config: Config, tracked: Tracked) -> torch.dtype:
    """The shadow dtype of a tracked tensor: its own for copied and complex tensors (but
    complex64 for complex32), else what ``Config.dtype`` says (float32 for bf16/fp16 by
    default)."""
    dtype: torch.dtype = tracked.tensor.dtype
    if tracked.kind != "float":
        return dtype
    name = shadow_dtype_name(config.dtype, str(dtype).removeprefix("torch."))
    return getattr(torch, name)  # type: ignore[no-any-return]


def moves(config: Config, tracked: Tracked) -> bool:
    """Whether an update touches this tensor (integer ones follow ``Config.non_float``).

    Raises:
        TypeError: an integer tensor under ``non_float="error"``.
    """
    integer = not (tracked.tensor.is_floating_point() or tracked.tensor.is_complex())
    if integer and config.non_float == "error":
        raise TypeError(
            f"{tracked.name!r} has dtype {tracked.tensor.dtype} and the config has "
            "non_float='error'; use 'copy', 'freeze' or exclude it"
        )
    return not (integer and config.non_float == "freeze")


def resolve_config(decay: Any, schedule: Any, config: Any, dtype: Any, buffers: Any) -> Config:
    """The one Config of ``EMA(...)`` (``ema_core._arguments.resolve_config``), with a
    ``torch.dtype`` given as ``dtype`` read as its name."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    return _arguments.resolve_config(decay, schedule, config, dtype, buffers)
