"""The arguments of the Lightning ``EMACallback``, checked when it is built (no lightning here).

Everything is read before the callback exists: the decay rule through the torch ``EMA``'s own
reader (``ema_core.torch._rules.resolve_config``), the ``EMA`` keyword options by name and
type, the stages that swap and the end-of-fit mode, and what the callback's ``state_key`` is
made of. The ``EMA`` itself is built later, on the model, once the trainer has moved (and
possibly sharded) it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, NamedTuple, TypeAlias

from ema_core._checks import check_choice
from ema_core._config import Config
from ema_core._config_text import config_text
from ema_core.torch import _refusals, _rules
from ema_core.torch._filters import matcher

Stage: TypeAlias = Literal["validate", "test", "predict"]
FitEnd: TypeAlias = Literal["keep-live", "swap-in"]
STAGES: tuple[Stage, ...] = ("validate", "test", "predict")
FIT_ENDS: tuple[FitEnd, ...] = ("keep-live", "swap-in")
#: The keyword options of ``ema_core.torch.EMA`` besides the decay rule.
EMA_OPTIONS = ("dtype", "device", "buffers", "include", "exclude")


class Arguments(NamedTuple):
    """The callback's arguments, checked: the resolved config, what to pass to ``EMA``, the
    stages that swap, the end-of-fit mode and the parts of the state key (see ``key``)."""

    config: Config
    ema: dict[str, Any]
    swap: frozenset[Stage]
    on_fit_end: FitEnd
    key: dict[str, Any]


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
    resolved = _rules.resolve_config(
        decay, schedule, config, options.get("dtype"), options.get("buffers")
    )
    _refusals.device_of(options.get("device"))  # as EMA(device=...) checks it
    filters = {n: _filter(options[n], n) for n in ("include", "exclude") if n in options}
    ema = {"decay": decay, "schedule": schedule, "config": config, **options, **filters}
    stages, mode = _stages(swap), _fit_end(on_fit_end)
    return Arguments(resolved, ema, stages, mode, key(resolved, filters))


def key(config: Config, filters: Mapping[str, Any]) -> dict[str, Any]:
    """What the state key holds: the config's text, then ``include`` / ``exclude`` only when
    given (a pattern or a list of them as written, a callable by its ``__qualname__``), so a
    callback without filters keeps the key that older checkpoints hold.

    Example:
        >>> from ema_core import Config
        >>> key(Config(), {"include": "encoder.*", "exclude": None})["include"]
        'encoder.*'
    """
    parts: dict[str, Any] = {"config": config_text(config)}
    for name in ("include", "exclude"):
        rule = filters.get(name)
        if callable(rule):
            parts[name] = getattr(rule, "__qualname__", None) or type(rule).__qualname__
        elif rule is not None:
            parts[name] = rule
    return parts


def _filter(rule: Any, name: str) -> str | list[str] | Callable[[str], bool] | None:
    """``rule`` checked, an iterable of patterns read once into a list (a generator would
    be empty when the ``EMA`` reads it).

    Raises:
        TypeError: not None, a glob pattern, an iterable of them or a callable.
    """
    if isinstance(rule, Iterator):
        rule = list(rule)  # read once, here
    patterns = isinstance(rule, Iterable) and not isinstance(rule, str) and not callable(rule)
    if patterns and all(isinstance(p, str) for p in rule):
        return list(rule)
    matcher(rule, name, True)  # raises TypeError on a bad filter
    return rule  # type: ignore[no-any-return]


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
