"""The arguments every EMA bank takes, checked once for all frameworks (pure Python, core level).

An EMA bank (``ema_core.torch.EMABank``, ``ema_core.jax.make_bank_update``) tracks K EMAs of
the same params. Both take ``configs`` or EDM2's ``sigma_rels``; this module resolves and
checks those arguments so that both refuse the same input with the same words, before
anything is built:

* ``check_sigma_rel``: the one domain check of a sigma_rel, also ``ema_core.posthoc``'s.
* ``bank_configs`` / ``power_configs``: the K configs, given or one power function per
  sigma_rel; ``sigma_rel_of``: a config's sigma_rel, if it has one.
* ``sequence`` / ``index`` / ``indices``: a list argument as a tuple; an EMA's index in the
  bank; the EMAs a bank's ``save_snapshots(which=)`` names.

The snapshot settings (``snapshot_every``, ``snapshot_dir``) are checked by
``ema_core._snapshot_args``.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence
from typing import Any

from ema_core._checks import check_positive, packed_hint
from ema_core._config import Config
from ema_core._types import EMAState
from ema_core.schedules import (
    MAX_SIGMA_REL,
    PowerFunction,
    gamma_to_sigma_rel,
    power_function,
    sigma_rel_to_gamma,
)

__all__ = [
    "SIGMA_REL_MAX",
    "bank_configs",
    "check_sigma_rel",
    "ema_states",
    "index",
    "indices",
    "power_configs",
    "sequence",
    "sigma_rel_of",
]

#: sigma_rel of gamma = 0 (the uniform average); the post-hoc domain is (0, SIGMA_REL_MAX).
SIGMA_REL_MAX = 12.0**-0.5


def check_sigma_rel(value: Any, name: str = "sigma_rel") -> float:
    """``value`` as a float in (0, 12**-0.5), the domain of EDM2's post-hoc EMA.

    Raises:
        TypeError: ``value`` is not a real number (a bool is not one).
        ValueError: ``value`` is outside (0, 12**-0.5), or NaN; the message says why.

    Example:
        >>> check_sigma_rel(0.05)
        0.05
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        s = float(value)
    except OverflowError:  # an int no float holds
        raise ValueError(
            f"{name} must be in (0, 12**-0.5 = {SIGMA_REL_MAX:.6f}), got an int too large for a "
            "float"
        ) from None
    if not 0.0 < s < SIGMA_REL_MAX:
        raise ValueError(
            f"{name} must be in (0, 12**-0.5 = {SIGMA_REL_MAX:.6f}), got {value!r}: at 12**-0.5 "
            "the power-function profile is the uniform average (gamma = 0), above it gamma < 0 "
            "weights the first steps most (a profile unbounded at tau = 0), and above 0.3003 no "
            "power function has that width"
        )
    return s


def sequence(name: str, value: Any) -> tuple[Any, ...]:
    """``value`` (a list or tuple, not a str, bytes or a lone ``Config``) as a tuple.

    Raises:
        TypeError: anything else, naming ``name``.
    """
    if isinstance(value, (str, bytes, Config)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence (list or tuple), got {type(value).__name__}")
    return tuple(value)


def ema_states(states: Any, count: int) -> tuple[EMAState, ...]:
    """``states`` as a tuple of ``count`` ``EMAState``s (a functional bank's states).

    Raises:
        TypeError: not a list or tuple (a single ``EMAState`` is not one), or an item that
            is not an ``EMAState`` (a packed JAX state named as one). ValueError: not
            ``count`` of them.
    """
    if isinstance(states, EMAState) or packed_hint(states):
        one = "EMAState" if isinstance(states, EMAState) else "packed state"
        raise TypeError(
            f"states must be a tuple of EMAStates, one per EMA of the bank, got one {one}: "
            f"pass (state,) for a bank of one{packed_hint(states)}"
        )
    values = sequence("states", states)
    if len(values) != count:
        raise ValueError(f"states must hold one EMAState per config ({count}), got {len(values)}")
    for i, s in enumerate(values):
        if not isinstance(s, EMAState):
            raise TypeError(
                f"states[{i}] must be an EMAState, got {type(s).__name__}{packed_hint(s)}"
            )
    return values


def _non_empty(name: str, value: Any) -> tuple[Any, ...]:
    values = sequence(name, value)
    if not values:
        raise ValueError(f"{name} is empty: a bank needs at least one EMA (K >= 1)")
    return values


def power_configs(sigma_rels: Any, interval: Any) -> tuple[Config, ...]:
    """EDM2's power-function EMAs: for each sigma_rel s,
    ``Config(schedule=power_function(sigma_rel=s), init="copy", interval=interval)``; the
    interval is compensated, so the decays telescope to ``(1 - interval/t) ** (gamma + 1)``.

    Raises:
        TypeError: ``sigma_rels`` not a sequence, an entry not a real number, ``interval``
            not an int. ValueError: no entry, an entry outside (0, 12**-0.5) or repeated,
            ``interval`` < 1. Every entry is checked before any config is built.

    Example:
        >>> [c.interval for c in power_configs([0.05, 0.10], 4)]
        [4, 4]
    """
    check_positive("interval", interval, integer=True)
    values = _non_empty("sigma_rels", sigma_rels)
    checked = [check_sigma_rel(s, f"sigma_rels[{k}]") for k, s in enumerate(values)]
    for k, s in enumerate(checked):
        if s in checked[:k]:
            first = checked.index(s)
            raise ValueError(
                f"sigma_rels[{k}]={values[k]!r} repeats sigma_rels[{first}]: each EMA of a "
                "bank needs its own sigma_rel"
            )
    schedules = [power_function(sigma_rel=s) for s in checked]
    return tuple(Config(schedule=p, init="copy", interval=interval) for p in schedules)


def bank_configs(owner: str, configs: Any, sigma_rels: Any, interval: Any) -> tuple[Config, ...]:
    """A bank's K configs: ``configs`` as given, or ``power_configs(sigma_rels, interval)``.

    Raises:
        TypeError: both or neither of ``configs`` and ``sigma_rels`` (``owner`` names the
            bank); ``interval`` other than 1 with ``configs`` (set ``Config.interval``);
            ``configs`` not a sequence of ``Config``. ValueError: ``configs`` empty; what
            ``power_configs`` refuses.
    """
    if (configs is None) == (sigma_rels is None):
        raise TypeError(f"{owner} takes exactly one of configs or sigma_rels")
    if sigma_rels is not None:
        return power_configs(sigma_rels, interval)
    if interval != 1:
        raise TypeError(f"interval={interval!r} goes with sigma_rels; set Config.interval instead")
    found = _non_empty("configs", configs)
    for k, config in enumerate(found):
        if not isinstance(config, Config):
            raise TypeError(f"configs[{k}] must be an ema_core.Config, got {type(config).__name__}")
    return found


def sigma_rel_of(config: Config) -> float | None:
    """EDM2's sigma_rel of a power-function config (None for any other schedule): the shortest
    decimal whose gamma is the schedule's (``power_function(sigma_rel=0.05)`` gives 0.05 back).

    Example:
        >>> round(sigma_rel_of(power_configs([0.05], 1)[0]), 6), sigma_rel_of(Config())
        (0.05, None)
    """
    schedule = config.schedule
    if not isinstance(schedule, PowerFunction):
        return None
    found = gamma_to_sigma_rel(schedule.gamma)
    for digits in (15, 16):  # the shortest decimal with the same gamma: 0.05, not 0.05 + 1 ulp
        short = float(f"{found:.{digits}g}")
        if 0.0 < short <= MAX_SIGMA_REL and sigma_rel_to_gamma(short) == schedule.gamma:
            return short
    return found


def index(owner: str, k: Any, size: int) -> int:
    """``k`` as an index of one of ``owner``'s ``size`` EMAs, in ``[0, size)``.

    Raises:
        TypeError: ``k`` is not an int (a bool, float or slice is not one; numpy ints are).
        IndexError: ``k`` outside ``[-size, size)``.

    Example:
        >>> index("bank", -1, 3)
        2
    """
    try:
        i = None if isinstance(k, bool) else operator.index(k)
    except TypeError:
        i = None
    if i is None:
        raise TypeError(f"{owner}[k] takes an int k, got {type(k).__name__} {k!r}")
    if not -size <= i < size:
        raise IndexError(f"{owner}[{i}] is out of range: the bank has {size} EMAs")
    return i % size


def indices(which: Any, size: int) -> tuple[int, ...]:
    """A bank's ``save_snapshots(which=)``: the indices of some of its ``size`` EMAs, each in
    ``[0, size)`` as ``index`` reads it, in the given order; None: all of them.

    Raises:
        TypeError: ``which`` not a list or tuple, or an entry not an int. IndexError: an
            entry out of range. ValueError: ``which`` empty, or an entry repeated.

    Example:
        >>> indices([-1], 3), indices(None, 2)
        ((2,), (0, 1))
    """
    if which is None:
        return tuple(range(size))
    values = sequence("which", which)
    if not values:
        raise ValueError("which=[] names no EMA: give at least one index (None: all EMAs)")
    found: list[int] = []
    for j, k in enumerate(values):
        try:
            i = index("bank", k, size)
        except (TypeError, IndexError) as error:  # the same error, naming which
            raise type(error)(f"which[{j}]: {error}") from error
        if i in found:
            raise ValueError(f"which[{j}]={k!r} repeats EMA {i}: name each EMA once")
        found.append(i)
    return tuple(found)
