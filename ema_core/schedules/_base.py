"""The schedule interface: a pure function of the update count t giving (decay, rate).

``rate`` is ``1 - decay``, computed by each schedule in its own accurate form, so that a decay
close to 1 keeps its full precision even where the widest float is float32 (JAX without x64):
``1 - float32(0.99999)`` is off by 0.2%, ``float32(1e-5)`` is not.
"""

from __future__ import annotations

import abc
import itertools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ema_core._checks import _shown
from ema_core._ops import MAX_STEP, ArrayOps, Ops, ScalarOps, ops_for
from ema_core._step_forms import as_given
from ema_core._types import Step, Value
from ema_core.schedules._values import checked_value, note_for


class Schedule(abc.ABC):
    """A decay schedule: ``schedule(t)`` is the decay of the t-th update (t = 1, 2, ...).

    Call it with a Python int to get a Python float, or with a 0-d integer array (traced, on a
    device) to get a 0-d float array in the same namespace on the same device.
    """

    @property
    def first_update(self) -> int:
        """The first t at which this schedule updates (1 unless it is gated by an interval)."""
        return 1

    @property
    def skips(self) -> bool:
        """True for a schedule that skips steps after its first update (``every``, ``gated``,
        and wrappers of them): a wrapper's first update must then be looked for, not derived
        from it. A plain schedule moves at every step from its first update."""
        return False

    @property
    def runs_user_code(self) -> bool:
        """True for a callable and a ``Schedule`` subclass defined outside ema-core (wrappers:
        their inner schedule's): never called ahead of its steps, so a wrapper looks for its
        first update over ``stand_in()``."""
        return not type(self).__module__.startswith("ema_core.")

    def stand_in(self) -> Schedule:
        """This schedule with user code replaced by a decay that moves at every step (0.5):
        the gates' structure alone, which a wrapper's first update is looked for over."""
        return Moving() if self.runs_user_code else self

    @property
    def elementwise(self) -> bool:
        """True when ``pair`` computes elementwise, so that it also takes a count array of any
        shape (``every`` then evaluates its n steps at once); False for callables and subclasses
        that do not say so (``every`` then evaluates them one step at a time). A subclass says
        so with a class attribute ``elementwise = True``."""
        return False

    def __call__(self, t: Step, /) -> Value:
        return self.decay_and_rate(t)[0]

    def rate(self, t: Step, /) -> Value:
        """``1 - decay(t)``, computed without cancellation."""
        return self.decay_and_rate(t)[1]

    def decay_and_rate(self, t: Step, /) -> tuple[Value, Value]:
        """Validate t, then return ``(decay, 1 - decay)``."""
        ops = ops_for(t)
        decay, rate = self.pair(ops)
        return as_given(ops, decay), as_given(ops, rate)

    def _pair_at(self, t: Step, /) -> tuple[Value, Value]:
        """``decay_and_rate(t)``, but at a CPU torch tensor step the Python floats it is
        computed in (the update paths read them as floats; no tensors are made). A subclass
        that overrides ``decay_and_rate`` is asked through it."""
        if type(self).decay_and_rate is not Schedule.decay_and_rate:
            return self.decay_and_rate(t)
        return self.pair(ops_for(t))

    @abc.abstractmethod
    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        """``(decay, rate)`` at ``ops.t`` (already validated), with ``ops``' arithmetic."""


@dataclass(frozen=True)
class FromCallable(Schedule):
    """Any ``t -> decay`` callable as a schedule; its rate is ``1 - decay`` in the wide float.

    What it returns is checked at every call (``_values.checked_value``); an exception it
    raises passes through as it is, with a note naming the schedule and the step.
    """

    fn: Callable[[Step], Value]

    @property
    def runs_user_code(self) -> bool:
        return True

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        try:
            value = self.fn(getattr(ops, "given", ops.raw))  # the step as given
        except Exception as error:
            if sys.version_info >= (3, 11):  # 3.10 has no notes: the traceback shows the call
                error.add_note(note_for(self.fn, ops))
            raise
        decay = ops.const(checked_value(self.fn, value, ops))
        return decay, 1.0 - decay


@dataclass(frozen=True)
class Moving(Schedule):
    """Decay 0.5 at every step: user code's stand-in (``Schedule.stand_in``)."""

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        return ops.const(0.5), ops.const(0.5)


def first_moving(schedule: Schedule, candidates: Iterator[int], budget: int = 1000) -> int | None:
    """The first of ``candidates`` (increasing steps) at which ``schedule``'s decay is not 1,
    looked for among at most ``budget`` of them (None when none is found there, or when the
    schedule raises at one: a callable written for another step form)."""
    try:
        for t in itertools.islice(candidates, budget):
            if schedule.pair(ScalarOps(t))[0] != 1.0:
                return t
    except Exception:  # the caller falls back to its closed form
        return None
    return None


def ops_at(ops: Ops, t: Any) -> Ops:
    """The arithmetic of ``ops`` at another count ``t`` (an int >= 0, or an integer array >= 0
    of any shape in ``ops``' namespace, derived from a validated count: not checked again)."""
    return ScalarOps(t) if isinstance(ops, ScalarOps) else ArrayOps(t)


def check_at_most_max_step(name: str, value: int, low: str = "0") -> None:
    """A gate integer (already checked to be an int >= ``low``) must fit an int64 step, which
    an array step is compared with."""
    if abs(value) > MAX_STEP:
        shown = shown_int(value)
        raise ValueError(f"{name} must be an int in [{low}, 2**63 - 1] (an int64), got {shown}")


def shown_int(value: int) -> str:
    """An int for a message: its digits, or past 128 bits its size and sign (as ``_shown``)."""
    if value.bit_length() < 128:
        return str(value)
    return _shown(value)
