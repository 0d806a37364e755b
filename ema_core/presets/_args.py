"""Argument checks the presets and the drop-in classes share: flags, dtypes, counters.

Each names the argument as the peer names it, so that a bad ``use_warmup=`` reads as such and
not as the ``Config`` field it ends up in. ``ema_core.compat`` imports these too (presets and
compat both sit above the API, so this file imports nothing from compat).
"""

from __future__ import annotations

from typing import Any

from ema_core._config import _DTYPES

# A float64 counter stops growing by one past 2**53: larger starts cannot follow the peer.
MAX_COUNTER = 2**53


def check_bool(name: str, value: Any) -> bool:
    """``value`` itself if it is a bool; a TypeError naming ``name`` otherwise (also for
    ``"no"``, ``0`` or ``None``: a flag is never read by truthiness)."""
    if not isinstance(value, bool):
        raise TypeError(
            f"{name} must be a bool (True or False), got {type(value).__name__} {value!r:.80}"
        )
    return value


def check_int(name: str, value: Any, *, low: int | None = 0) -> int:
    """A Python int (not bool) >= ``low`` (any int if ``low`` is None)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r:.80}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}")
    return value


def check_step_int(name: str, value: Any, *, low: int | None = 1) -> int:
    """An interval, a step or a step offset of a preset: a Python int >= ``low`` whose size fits
    an int64 step (the gate it feeds compares array steps with it), named as the peer names it
    rather than as the gate's own argument."""
    n = check_int(name, value, low=low)
    if abs(n) > 2**63 - 1:
        shown = n if abs(n) < 2**128 else f"an int of {n.bit_length()} bits"
        span = f"[{low}, 2**63 - 1]" if low is not None else "[-(2**63 - 1), 2**63 - 1]"
        raise ValueError(f"{name} must be an int in {span} (an int64), got {shown}")
    return n


def check_count(name: str, value: Any) -> int:
    """A count: a Python int (not bool) in [0, 2**53]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__} {value!r:.80}")
    if not 0 <= value <= MAX_COUNTER:
        shown = value if abs(value) < 2**64 else f"an int of {value.bit_length()} bits"
        raise ValueError(f"{name} must be an int in [0, 2**53], got {shown}")
    return value


def check_counter_start(name: str, value: Any) -> int | None:
    """None, or a peer counter's value at the first update (a count)."""
    if value is None:
        return None
    return check_count(f"{name} (the counter at the first update)", value)


def dtype_name(name: str, dtype: Any) -> str | None:
    """None, or the dtype name ``Config.dtype`` takes, from a name or a numpy/JAX/torch dtype."""
    if dtype is None:
        return None
    text = _name_of(dtype)
    if text is None:
        raise TypeError(f"{name} must be None, a dtype or a dtype name, got {type(dtype).__name__}")
    allowed = [d for d in _DTYPES if d is not None]
    if text not in allowed:
        raise ValueError(f"{name} must be None or one of {allowed}, got {dtype!r}")
    return text


def _name_of(dtype: Any) -> str | None:
    """The name of a dtype given as a name, a torch dtype or a numpy/JAX dtype or type."""
    if isinstance(dtype, str):
        return dtype.removeprefix("torch.")
    if type(dtype).__module__ == "torch" and type(dtype).__name__ == "dtype":
        return str(dtype).removeprefix("torch.")
    names = [getattr(dtype, attr, None) for attr in ("name", "__name__")]
    return next((n for n in names if isinstance(n, str)), None)
