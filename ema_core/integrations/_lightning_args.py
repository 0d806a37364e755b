"""The arguments of the Lightning ``EMACallback``, checked when it is built (no lightning here).

Everything is read before the callback exists: the decay rule through the torch ``EMA``'s own
reader (``_options.resolve_config``), the ``EMA`` keyword options by name and type, the stages
that swap and the end-of-fit mode. The ``EMA`` itself is built later, on the model, once the
trainer has moved (and possibly sharded) it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple, TypeAlias

import torch

from ema_core._checks import check_choice
from ema_core._config import Config
from ema_core.torch import _names, _options

Stage: TypeAlias = Literal["validate", "test", "predict"]
FitEnd: TypeAlias = Literal["keep-live", "swap-in"]
STAGES: tuple[Stage, ...] = ("validate", "test", "predict")
FIT_ENDS: tuple[FitEnd, ...] = ("keep-live", "swap-in")
#: The keyword options of ``ema_core.torch.EMA`` besides the decay rule.
EMA_OPTIONS = ("dtype", "device", "buffers", "include", "exclude")


class Arguments(NamedTuple):
    """The callback's arguments, checked: the resolved config (for the state key), what to
    pass to ``EMA``, the stages that swap and the end-of-fit mode."""

    config: Config
    ema: dict[str, Any]
    swap: frozenset[Stage]
    on_fit_end: FitEnd


def read(
    config: Any, decay: Any, schedule: Any, swap: Any, on_fit_end: Any, options: Mapping[str, Any]
) -> Arguments:
    """Check every argument of ``EMACallback``; return them ready to use.

    Raises:
        TypeError: an unknown keyword, or an argument of the wrong type. ValueError: a value
            out of range (a decay outside [0, 1], an unknown stage or mode, a bad device).
    """
    unknown = sorted(set(options) - set(EMA_OPTIONS))
    if unknown:
        raise TypeError(
            f"EMACallback() got unexpected keyword arguments {unknown}; besides config, decay, "
            f"schedule, swap and on_fit_end it takes the EMA options {list(EMA_OPTIONS)}"
        )
    resolved = _options.resolve_config(
        decay, schedule, config, options.get("dtype"), options.get("buffers")
    )
    _check_device(options.get("device"))
    for name in ("include", "exclude"):
        _names._matcher(options.get(name), name, True)  # raises TypeError on a bad filter
    ema = {"decay": decay, "schedule": schedule, "config": config, **options}
    return Arguments(resolved, ema, _stages(swap), _fit_end(on_fit_end))


def _check_device(device: Any) -> None:
    if device is None or isinstance(device, torch.device):
        return
    if not isinstance(device, str):
        raise TypeError(f"device must be None, a str or a torch.device, got {device!r}")
    try:
        torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must name a torch device, got {device!r}") from err


def _stages(swap: Any) -> frozenset[Stage]:
    """The stages named by ``swap``: one name or an iterable of them (possibly empty)."""
    names = (swap,) if isinstance(swap, str) else swap
    if not isinstance(names, Iterable) or isinstance(names, Mapping | bytes):
        raise TypeError(
            f"swap must be a stage name or an iterable of them (from {list(STAGES)}), got {swap!r}"
        )
    stages = tuple(names)
    for stage in stages:
        if not isinstance(stage, str):
            raise TypeError(f"swap must hold stage names (str), got {stage!r} in {swap!r}")
        check_choice("swap", stage, STAGES)
    return frozenset(stages)


def _fit_end(mode: Any) -> FitEnd:
    if not isinstance(mode, str):
        raise TypeError(f"on_fit_end must be one of {list(FIT_ENDS)}, got {mode!r}")
    check_choice("on_fit_end", mode, FIT_ENDS)
    return mode  # type: ignore[return-value]
