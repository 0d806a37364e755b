"""The arguments every entry point takes, read in one place.

``ema_update``, ``init`` / ``update`` / ``average``, the torch ``EMA``, JAX's ``make_update`` and
``with_ema`` and the drop-in classes all name the decay the same way: at most one of ``decay``
(a constant), ``schedule`` (a ``Schedule`` or ``t -> decay``) and ``config`` (a ``Config``). This
module turns them into one rule, with one set of errors:

* ``checked_config``: the ``Config``, ``Config()`` for None; ``TypeError`` otherwise.
* ``resolve_rule``: what the stateless ``ema_update`` needs (the effective schedule, or a 0-d
  decay array given as ``decay=``; the integer-leaf policy; the finite guard).
* ``resolve_config``: one ``Config`` (the torch ``EMA``), with its ``dtype`` / ``buffers``.
* ``decay_array``: a 0-d ``decay=`` array in the wide float, on the leaves' device.
* ``shadow_dtype``: the dtype ``Config.dtype`` gives a floating leaf's shadow in a namespace.

The step is checked by ``ema_core._ops.concrete_step`` (or ``ops_for``) everywhere, and the
``"power"`` correction ``1 - d_t ** t`` is ``ema_core._config.power_weight``. This module sits in
the core, below the API and the backends: it imports neither.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import array_api_compat as compat

from ema_core import _core
from ema_core._checks import check_choice, check_decay_arg, check_fraction, got
from ema_core._config import Config, shadow_dtype_name
from ema_core._ops import is_host_array, wide_float
from ema_core._types import Array, NonFloatPolicy
from ema_core.schedules import Schedule, as_schedule

#: ``Config()``: frozen, so one object serves every call that passes no config.
DEFAULT = Config()
#: What ``buffers=`` takes, in the order its error lists them.
BUFFERS = ("copy", "average", "skip")


class Rule(NamedTuple):
    """The decay rule of one ``ema_update`` call."""

    # the effective schedule (the config itself where a subclass overrides decay_and_rate),
    # or a 0-d decay array given as decay=
    decay: Schedule | Config | Array
    non_float: NonFloatPolicy
    guard_finite: bool


def checked_config(config: Any) -> Config:
    """``config``, or ``Config()`` for None.

    Raises:
        TypeError: anything else (a dict, a float, ...).

    Example:
        >>> checked_config(None) == Config()
        True
    """
    if config is None:
        return DEFAULT
    if not isinstance(config, Config):
        raise TypeError(
            f"config must be an ema_core.Config, got {type(config).__name__}{config_hint(config)}"
        )
    return config


def config_hint(value: Any) -> str:
    """How to make a ``Config`` of a decay (or a schedule) given where one belongs, else "".

    Example:
        >>> config_hint(0.99)
        ': use ema_core.Config(0.99)'
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f": use ema_core.Config({value!r})"
    if callable(value) and not isinstance(value, type):
        return ": use ema_core.Config(schedule=...) for a Schedule or a callable t -> decay"
    return ""


def check_one_rule(decay: Any, schedule: Any, config: Any) -> None:
    """At most one of ``decay``, ``schedule`` and ``config`` is given (not None).

    Raises:
        TypeError: two or three are given.
    """
    pairs = (("decay", decay), ("schedule", schedule), ("config", config))
    given = [name for name, value in pairs if value is not None]
    if len(given) > 1:
        raise TypeError(f"pass at most one of decay, schedule or config; got {', '.join(given)}")


def decay_schedule(decay: Any, schedule: Any, *, arrays: bool = False) -> Schedule | Array:
    """The schedule of ``schedule=`` or ``decay=`` (the default decay for neither); with
    ``arrays``, a 0-d float array ``decay`` is returned as it is (a numpy one as a constant).

    Raises:
        TypeError / ValueError: ``decay`` is not a float in [0, 1] (nor, with ``arrays``, a 0-d
            real floating array), or ``schedule`` is not a schedule, a float or a callable.
    """
    if schedule is not None:
        return as_schedule(schedule, "schedule")
    if decay is None:
        return DEFAULT.effective_schedule
    if callable(decay):  # a Schedule or a t -> decay callable, given as decay=
        raise TypeError(
            f"decay must be a float in [0.0, 1.0], got {got(decay)}: pass a "
            "Schedule or a callable t -> decay as schedule="
        )
    checked = check_decay_arg(decay) if arrays else check_fraction("decay", decay)
    return checked if compat.is_array_api_obj(checked) else as_schedule(checked)


def resolve_rule(decay: Any, schedule: Any, config: Any) -> Rule:
    """The rule of ``ema_update(..., decay=, schedule=, config=)``.

    Example:
        >>> resolve_rule(0.5, None, None).decay(3)
        0.5
    """
    check_one_rule(decay, schedule, config)
    if config is not None:
        cfg = checked_config(config)
        own = type(cfg).decay_and_rate is not Config.decay_and_rate  # a subclass's own decays
        return Rule(cfg if own else cfg.effective_schedule, cfg.non_float, cfg.guard_finite)
    return Rule(decay_schedule(decay, schedule, arrays=True), "copy", False)


def resolve_config(
    decay: Any, schedule: Any, config: Any, dtype: Any = None, buffers: Any = None
) -> Config:
    """One ``Config`` from ``config``, or built from ``decay`` / ``schedule`` (then with
    ``buffers="copy"``); ``dtype`` (a name) and ``buffers`` replace its fields when given.

    Raises:
        TypeError / ValueError: as ``check_one_rule``, ``checked_config``, ``decay_schedule``;
            ``buffers`` not in ``BUFFERS``; a ``dtype`` that ``Config`` refuses.

    Example:
        >>> resolve_config(0.5, None, None, "float32").buffers
        'copy'
    """
    check_one_rule(decay, schedule, config)
    if buffers is not None:
        check_choice("buffers", buffers, BUFFERS)
    changes: dict[str, Any] = {}
    if config is None:
        config = Config(schedule=decay_schedule(decay, schedule))
        changes["buffers"] = "copy"
    config = checked_config(config)
    if buffers is not None:
        changes["buffers"] = buffers
    if dtype is not None:
        changes["dtype"] = dtype
    resolved: Config = dataclasses.replace(config, **changes) if changes else config
    return resolved


def decay_array(xp: Any, decay: Array, leaf: Array) -> Array:
    """A 0-d decay in the widest float of its device; an array-api-strict one is moved to the
    leaves' device (as the torch backend moves a tensor), before anything is written."""
    if not is_host_array(decay):
        return xp.astype(decay, wide_float(xp, compat.device(decay)))
    device = compat.device(leaf)
    return compat.to_device(xp.astype(decay, wide_float(xp, device)), device)


def shadow_dtype(xp: Any, param: Array, config: Config) -> Any:
    """The shadow dtype of a floating leaf; a ``Config.dtype`` the namespace lacks (bfloat16
    in numpy, float16 in array-api-strict) is a ``TypeError``, not the params' dtype. A complex
    leaf keeps its own dtype (``shadow_dtype_name``), as the torch classes keep it, but for
    torch's half complex (complex64, as a half leaf's float32)."""
    param_name = _core.dtype_name(xp, param.dtype)
    if param_name.startswith("complex"):  # whatever Config.dtype says (also one xp lacks)
        return getattr(xp, shadow_dtype_name(config.dtype, param_name))
    name = shadow_dtype_name(config.dtype, param_name)
    dtype = getattr(xp, name, None)
    if dtype is None and config.dtype not in (None, "same"):
        raise TypeError(
            f"Config.dtype is {config.dtype!r} but {xp.__name__} has no {name}; pass "
            "dtype=None (float32 for half params, else the params' dtype), 'same' or a dtype "
            "it has"
        )
    if name == "float64" and dtype is not None and dtype != param.dtype:
        device = compat.device(param)
        if wide_float(xp, device) != dtype:  # Apple MPS, array-api-strict's no_float64
            raise ValueError(
                f"Config.dtype is {config.dtype!r} but the params' device {device} has no "
                "float64; pass dtype=None (float32 for half params, else the params' dtype) or "
                "'float32'"
            )
    return param.dtype if dtype is None else dtype
