"""Eager validation of the arguments (fractions, counts, choices, the decay) with clear messages;
the leaves are checked in ``_leaf_checks``. Everything here runs before the first write.

Errors follow one rule: ``TypeError`` for a wrong type, ``ValueError`` for a wrong value, and the
message names the argument (or the path of the leaf), the value and what is allowed. Nothing here
runs on values inside traced or compiled code: only shapes, dtypes and host values are read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import array_api_compat as compat

from ema_core._ops import host_float, is_readable
from ema_core._types import EMAState, Namespace


def check_fraction(name: str, value: Any, *, low: float = 0.0, high: float = 1.0) -> float:
    """A Python number in [low, high] (not NaN, not bool), returned as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [{low}, {high}], got {got(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int past the largest float
        raise ValueError(f"{name} must be in [{low}, {high}], got {_shown(value)}") from None
    if math.isnan(number) or not low <= number <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {number}")
    return number


def check_positive(name: str, value: Any, *, integer: bool = False) -> Any:
    """A finite Python number > 0 (an int when ``integer``)."""
    allowed = (int,) if integer else (int, float)
    kind = "an int" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise TypeError(f"{name} must be {kind} > 0, got {got(value)}")
    if integer:  # any int is finite
        finite = True
    else:
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int past the largest float
            raise ValueError(
                f"{name} must be a finite {kind[2:]} > 0, got {_shown(value)}"
            ) from None
    if not finite or value <= 0:
        shown = _shown(value) if isinstance(value, int) and abs(value) >> 128 else repr(value)
        raise ValueError(f"{name} must be {kind} > 0, got {shown}")
    return value


def got(value: Any) -> str:
    """A wrong-typed argument for a message: its type and its repr, cut at 80 characters, and
    for a 0-d array or numpy scalar what to pass instead (a hyperparameter is a Python number,
    so a ``Config`` stays hashable)."""
    text = f"{type(value).__name__} {value!r:.80}"
    if getattr(value, "shape", None) == () and hasattr(value, "dtype"):
        text += " (a 0-d array or numpy scalar: pass float(x) or int(x))"
    return text


def _shown(value: Any) -> str:
    """A huge int, shown by its sign and size (its digits would fill the message)."""
    sign = "a negative" if value < 0 else "an"
    return f"{sign} int of {value.bit_length()} bits"


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """The allowed value equal to ``value`` (a ``str`` subclass such as ``np.str_`` or a
    ``StrEnum`` member given as the plain ``str``); a ``TypeError`` for a value of none of the
    allowed values' types (``3`` among strings, a bool), else a ``ValueError``."""
    kinds = tuple({type(a) for a in allowed})
    typed = isinstance(value, kinds) and not isinstance(value, bool)  # not True for 1
    if typed and value in allowed:
        return allowed[list(allowed).index(value)]
    raise (ValueError if typed else TypeError)(
        f"{name} must be one of {list(allowed)}, got {value!r}"
    )


def check_decay_value(value: Any, name: str = "decay", step: Any = None) -> None:
    """A decay the host can read (a Python float, or a 0-d array that ``is_readable``: numpy,
    a CPU tensor, a concrete CPU JAX array) must lie in [0, 1]; device and traced ones are
    trusted (reading them would sync). ``step``, when given, is named in the message (formatted
    only on error: a device step is never read)."""
    if not isinstance(value, float) and not is_readable(value):
        return
    number = host_float(value)
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        where = name if step is None else f"{name} at step {step}"
        check_fraction(where, number)


def check_decay_arg(decay: Any) -> Any:
    """The ``decay=`` argument: a float in [0, 1] or a 0-d real floating array. A numpy decay
    (scalar or 0-d array) is a host value: it is returned as a Python float (an integer one
    as the int it holds, as ``decay=1`` is taken)."""
    if compat.is_array_api_obj(decay):
        xp = compat.array_namespace(decay)
        host = compat.is_numpy_array(decay) and decay.ndim == 0
        if host and xp.isdtype(decay.dtype, "integral"):  # np.int64(1): an int, as 1 is
            return check_fraction("decay", int(decay))
        if decay.ndim != 0 or not xp.isdtype(decay.dtype, "real floating"):
            raise TypeError(
                f"decay must be a float or a 0-d real floating array, got shape "
                f"{tuple(decay.shape)} dtype {decay.dtype}"
            )
        check_decay_value(decay)
        return float(decay) if compat.is_numpy_array(decay) else decay
    return check_fraction("decay", decay)


def check_decay_namespace(decay: Any, xp: Namespace) -> None:
    """A 0-d decay array must come from the leaves' namespace ``xp``."""
    ns = compat.array_namespace(decay)
    if ns is not xp:
        raise TypeError(
            f"decay is a 0-d array of {ns.__name__} but the leaves are {xp.__name__} arrays; "
            "pass a Python float or a 0-d array of the leaves' namespace"
        )


def check_state(state: Any) -> None:
    """``state`` has the fields of an ``EMAState`` (``update``, ``average``)."""
    if not all(hasattr(state, f) for f in EMAState._fields):
        raise TypeError(
            "state must be an EMAState (step, shadow, weight), "
            f"got {type(state).__name__}{packed_hint(state)}"
        )


def packed_hint(value: Any) -> str:
    """Where an ``EMAState`` is expected, the way out for a packed JAX state (recognised by its
    fields: nothing is imported), or ``""``."""
    if all(hasattr(value, f) for f in ("flats", "loose", "layout")):
        return " (a packed state: ema_core.jax.unpack(state) gives its EMAState)"
    return ""


def check_weight(weight: Any) -> None:
    """``state.weight`` is a Python real number or a 0-d real floating array, as ``init`` makes
    it (a wider array would spread over the shadows, an integer one would round the bias
    correction), checked by ``update`` and by ``average`` where it divides."""
    if isinstance(weight, (int, float)) and not isinstance(weight, bool):
        if isinstance(weight, int) and abs(weight) > 2**1023:  # float(weight) would overflow
            raise ValueError(
                "state.weight must be a float or a 0-d float array, got an int too large for "
                f"a float ({weight.bit_length()} bits)"
            )
        return
    shape = getattr(weight, "shape", None)
    if isinstance(weight, bool) or shape is None or not hasattr(weight, "dtype"):
        raise TypeError(
            f"state.weight must be a float or a 0-d float array, got {type(weight).__name__}"
        )
    if tuple(shape) != ():
        raise ValueError(f"state.weight must be a 0-d float array, got shape {tuple(shape)}")
    if not compat.array_namespace(weight).isdtype(weight.dtype, "real floating"):
        raise TypeError(f"state.weight must be a 0-d float array, got dtype {weight.dtype}")


def name_differences(ours: Sequence[str], saved: Sequence[str]) -> tuple[list[str], list[str]]:
    """The names ``ours`` has that ``saved`` lacks, and those ``saved`` has that ``ours``
    lacks, each in its own order (what a checkpoint's strict load reports)."""
    ours_set, saved_set = set(ours), set(saved)
    return [n for n in ours if n not in saved_set], [n for n in saved if n not in ours_set]
