"""What a callable schedule may return, checked each time it is called (``FromCallable``).

A ``t -> decay`` callable returns a real number (an int or float, not a bool or a str) or a
0-d real floating array: numpy (a scalar too), or one of the step's namespace. Anything else
is a ``TypeError`` naming ``schedule(t)``, the callable, the step and the type. A value the
host reads without a sync (a Python number, numpy, a CPU tensor, a concrete CPU JAX array) is
range-checked here, where the callable produced it, so a value that a wrapper would hide (the
floor of ``gated``, the product of ``every``) is still refused; device and traced arrays are
trusted, never read (except a device array returned for a Python-int step, which the host
schedule arithmetic reads as a float, as before). The common path, a Python float, costs one
``isinstance`` and one range comparison; messages are built only on error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import array_api_compat as compat

from ema_core._checks import check_fraction
from ema_core._ops import Ops, ScalarOps, host_float, is_readable

#: What a callable schedule may return, as the messages say it.
ALLOWED = (
    "a real number (an int or float, not a bool or str) or a 0-d real floating array "
    "(numpy, or of the step's namespace)"
)


def checked_value(fn: Callable[..., Any], value: Any, ops: Ops) -> Any:
    """``value``, returned by ``fn(ops.raw)``, checked: a Python float for a number or a host
    array, else the array itself (of the step's namespace).

    Raises:
        TypeError: a value of another type, shape, dtype or namespace; a traced array for a
            Python-int step.
        ValueError: a value the host reads outside [0, 1] or NaN.
    """
    if type(value) is float and 0.0 <= value <= 1.0:  # the common case: no call more
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _in_range(value, ops)
    if isinstance(value, bool) or not compat.is_array_api_obj(value):
        raise TypeError(_wrong(fn, ops, f"{type(value).__name__} {value!r:.80}"))
    xp = compat.array_namespace(value)
    if value.ndim != 0 or not xp.isdtype(value.dtype, "real floating"):
        what = f"{type(value).__name__} of shape {tuple(value.shape)} dtype {value.dtype}"
        raise TypeError(_wrong(fn, ops, what))
    if compat.is_numpy_array(value):  # a host value: used as a Python float
        return _in_range(float(value), ops)
    if compat.is_torch_array(value) and value.is_meta:  # no value to read or blend with
        raise ValueError(_wrong(fn, ops, "a meta tensor (it holds no value)"))
    if isinstance(ops, ScalarOps):  # a host step: the schedule is computed on the host
        given = getattr(ops, "given", ops.raw)  # a CPU torch tensor step, read as an int
        if given is not ops.raw and compat.array_namespace(given) is not xp:
            what = f"a {_short(xp)} array for a {_short(compat.array_namespace(given))} step"
            raise TypeError(_wrong(fn, ops, what))
        if _is_traced(value):
            raise TypeError(
                _wrong(fn, ops, "a traced array for a Python-int step")
                + "; under jax.jit pass the step as an array"
            )
        return _in_range(host_float(value), ops)  # a device value is read here (one sync)
    if xp is not ops.xp:
        what = f"a {_short(xp)} array for a {_short(ops.xp)} step"
        raise TypeError(_wrong(fn, ops, what))
    if is_readable(value):  # a CPU tensor, a concrete CPU JAX array: no sync
        _in_range(host_float(value), ops)
    return value


def note_for(fn: Callable[..., Any], ops: Ops) -> str:
    """The note added to an exception ``fn`` raised: which schedule, at which step."""
    return f"raised by schedule(t) ({_name(fn)}) at {_at(ops)}"


def _in_range(value: float, ops: Ops) -> float:
    """``value`` as a float in [0, 1]; the message (and the step in it) made only on error."""
    if 0.0 <= value <= 1.0:  # False for NaN
        return float(value)
    step = _step(ops)
    where = "schedule(t): the decay" if step is None else f"schedule(t): the decay at step {step}"
    return check_fraction(where, value)


def _wrong(fn: Callable[..., Any], ops: Ops, what: str) -> str:
    return f"schedule(t) ({_name(fn)}) returned {what} at {_at(ops)}; it must return {ALLOWED}"


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


def _at(ops: Ops) -> str:
    step = _step(ops)
    return "a traced or device step" if step is None else f"t={step}"


def _step(ops: Ops) -> int | None:
    """The step, where the host reads it without a sync (only formatted on an error)."""
    t = ops.raw
    if isinstance(t, int):
        return t
    return int(t) if getattr(t, "ndim", None) == 0 and is_readable(t) else None


def _short(xp: Any) -> str:
    return str(xp.__name__).removeprefix("array_api_compat.")


def _is_traced(value: Any) -> bool:
    return compat.is_jax_array(value) and isinstance(value, sys.modules["jax"].core.Tracer)
