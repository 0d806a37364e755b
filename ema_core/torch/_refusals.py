"""The ``EMA`` arguments that other EMA libraries taught users to pass, refused with what
to pass instead: a ``device`` torch cannot put shadows on, and timm's ``update(model, step=t)``
/ torch_ema's ``update(model.parameters())``. The messages never print a whole module or
tensor (a model's repr runs to pages)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ema_core._types import Step

#: What ``update`` says to a module or to tensors given as its step.
PEER_UPDATE = (
    "the EMA already tracks its module: timm's update(model, step=t) is ema.update(t); "
    "torch_ema's update() and diffusers' step(parameters) are ema.update()"
)
_SHORT = 60


def short_repr(value: Any) -> str:
    """``value``'s type and the start of its repr on one line (a module by its type only)."""
    kind = type(value).__name__
    if isinstance(value, torch.nn.Module):
        return f"a {kind}"
    if isinstance(value, (list, tuple, dict)):
        return f"a {kind} of {len(value)} items"
    text = " ".join(repr(value).split())
    return f"{kind} {text if len(text) <= _SHORT else text[: _SHORT - 3] + '...'}"


def device_of(device: Any) -> torch.device | None:
    """``EMA(device=...)`` as a ``torch.device`` (None stays None), checked before anything is
    built.

    Raises:
        TypeError: not a ``torch.device``, a str or None. ValueError: a str torch does not
            parse as a device, the meta device (no values to average), or a CUDA device (or an
            mps, xpu, ... device) this machine does not have.
    """
    if device is None:
        return None
    if not isinstance(device, (torch.device, str)):
        raise TypeError(
            f"device must be a torch.device, a device string such as 'cpu' or 'cuda:0', or "
            f"None (beside each tracked tensor), got {short_repr(device)}"
        )
    try:
        target = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device={device!r} is not a device torch knows: pass a torch.device or a string "
            "such as 'cpu', 'cuda' or 'cuda:1', or None to keep each shadow beside its tensor"
        ) from None
    if target.type == "meta":
        raise ValueError(
            f"device={device!r}: shadows on the meta device hold no values to average or swap "
            "in; pass a device with memory ('cpu', 'cuda', ...) or None"
        )
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (target.index or 0) >= count:
            raise ValueError(
                f"device={device!r}, but this machine has {count} CUDA device(s) torch can "
                "use: pass one it has, or None to keep each shadow beside its tensor"
            )
    elif target.type != "cpu":  # mps, xpu, ...: an empty tensor there shows torch can use it
        try:
            torch.empty(0, device=target)
        except Exception as err:  # torch raises RuntimeError, NotImplementedError, AssertionError
            raise ValueError(
                f"device={device!r}, but torch cannot place a tensor there on this machine "
                f"({_first_sentence(err)}): pass a device it has, or None to keep each shadow "
                "beside its tensor"
            ) from None
    return target


def _first_sentence(err: BaseException) -> str:
    """The first sentence of ``err``'s message (torch's can run to dozens of lines), or its
    type's name."""
    text = " ".join(str(err).split())
    return text.split(". ")[0].rstrip(".")[:160] or type(err).__name__


def step_of(step: Any, named: Mapping[str, Any]) -> Step | None:
    """The ``step`` of ``update(step)`` or ``update(step=...)`` (``named``: the keyword
    arguments), refusing a module or tensors given as the step, as timm and torch_ema take them.

    Raises:
        TypeError: an unknown keyword, ``step`` given twice, a module or an iterable (of
            tensors) as the step.
    """
    if not named and (step is None or type(step) is int):
        return step
    unknown = sorted(set(named) - {"step"})
    if unknown:
        raise TypeError(f"update() takes only step, got the keyword arguments {unknown}")
    if "step" in named:
        check_step(step, named["step"])
        if step is not None:
            raise TypeError(
                f"update() got step twice: {short_repr(step)} and step={short_repr(named['step'])}"
            )
        step = named["step"]
    check_step(step)
    return step


def check_step(step: Any, *more: Any) -> None:
    """Raise for a module or an iterable of tensors as a step (a tensor with dimensions is
    refused by the step check every entry point shares, with its message)."""
    for value in (step, *more):
        if isinstance(value, torch.nn.Module) or _many(value):
            raise TypeError(f"update() got {short_repr(value)} as its step: {PEER_UPDATE}")


def _many(value: Any) -> bool:
    """Whether ``value`` is a collection (a list, a generator of parameters, ...), not one
    number or one array (a numpy array is iterable by type: one with dimensions is refused by
    the step check, with its shape)."""
    array = hasattr(value, "ndim") and hasattr(value, "dtype")
    if isinstance(value, (str, bytes, torch.Tensor)) or array:
        return False
    return isinstance(value, Iterable)
