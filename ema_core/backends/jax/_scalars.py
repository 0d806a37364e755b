"""The scalars of one update of a JAX state (``t``, the decay, the rate and the new weight),
computed by one compiled call per config.

Called eagerly, ``ema_core.update`` would compute the schedule with a dozen or more small JAX
operations (each ``full``, ``minimum``, ``pow``, ``where`` is its own dispatch, about 0.1 ms on
a CPU): milliseconds per update for a tree of two arrays, more than the leaves' own compiled
update. Here the schedule, the step's increment and the weight's recursion are one ``jax.jit``
per config (configs are frozen and hashed by value: one rebuilt for every call finds the same
entry), made at its first eager update; the last ``SIZE`` configs are kept.
``make_update``'s compiled head and the bank's call the same ``scalars``, so an eager update and
a compiled one give the same bits (``tests/test_jax_compiled.py``).

Only ``Config`` objects (not a subclass's) whose schedule is built of ema-core's own schedules
are compiled: a user's callable (or ``Schedule`` subclass) may branch in Python on the step's
value or read a setting that changes between calls, which an eager update honours at every call
and a traced one would not.
Inside a trace (``jax.jit``, ``grad``, ``vmap``), for a state whose step or weight is not a JAX
array, or for such a config (or one that is not hashable), ``update_scalars`` returns ``None``
and the caller computes the scalars eagerly as before.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ema_core import _core
from ema_core._config import Config
from ema_core._ops import check_step, next_step
from ema_core._types import Array
from ema_core.backends.jax._leaves import check_beside, leaf_decay
from ema_core.schedules import Constant, Momentum, Schedule
from ema_core.schedules._base import FromCallable

#: Configs whose compiled scalars are kept (several EMAs of one model use a few in turn).
SIZE = 8

Scalars = tuple[Array, Array, Array, Array]
_HEADS: OrderedDict[Any, Callable[[Array, Array], Scalars] | None] = OrderedDict()
_PAIRS: OrderedDict[Any, Callable[[Array], Any]] = OrderedDict()  # pair_scalars' heads
_LOCK = threading.Lock()


def scalars(config: Any, step: Array, weight: Array) -> Scalars:
    """``(t, leaf decay, rate, new weight)`` of the update after ``step`` (traced or eager):
    ``t = step + 1`` saturating, the schedule's decay at ``t`` as the leaves see it
    (``leaf_decay``) and its rate in the wide float, and ``_core.next_weight``."""
    t = next_step(step)
    d, r = config._pair_at(t)
    wide = jnp.result_type(float)
    new_weight = _core.next_weight(jnp, weight, d, r)
    return t, leaf_decay(d, r, wide), jnp.asarray(r, dtype=wide), new_weight


def update_scalars(config: Any, step: Any, weight: Any, shadow: Array) -> Scalars | None:
    """The scalars of an eager update from one compiled call, or ``None`` where the caller
    computes them itself (see the module docstring). The step is checked first as the eager
    path checks it (its value read where the host can read it: a concrete CPU array), and a
    step or weight committed to other devices than the (committed) ``shadow`` is named."""
    if not (isinstance(step, jax.Array) and isinstance(weight, jax.Array)):
        return None
    if isinstance(step, jax.core.Tracer) or isinstance(weight, jax.core.Tracer):
        return None
    check_beside("state.step", step, shadow)
    check_beside("state.weight", weight, shadow)
    if type(config) is not Config:
        return None  # a subclass may compute its decay its own way, from a changing setting
    try:
        head = _head(config)
    except TypeError:  # a config holding an unhashable value
        return None
    if head is None:
        return None
    check_step(step, "state.step")
    return head(step, weight)


def pair_scalars(rule: Any, t: Any) -> tuple[Array, Array] | None:
    """The decay and rate of ``rule`` (a ``Config`` or a ``Schedule``) at a concrete JAX step
    ``t`` from one compiled call, as a traced ``ema_update`` computes them (XLA rewrites some
    operations, such as a division by a constant, that eager ones keep); ``None`` where the
    caller computes them itself (a traced step, a user's schedule, an unhashable rule, a
    constant decay: ``decay=`` with a new float per call would compile at every call).
    The stateless ``ema_update``'s eager head, as ``update_scalars`` is ``update``'s."""
    if not isinstance(t, jax.Array) or isinstance(t, jax.core.Tracer):
        return None
    schedule = rule.schedule if type(rule) is Config else rule
    if isinstance(schedule, (Constant, Momentum)):
        return None  # its decay is a value, alike eager and traced: no compile per new decay
    if type(rule) is Config:
        own = _own(rule.effective_schedule)
    else:
        own = isinstance(rule, Schedule) and _own(rule)
    if not own:
        return None
    try:
        with _LOCK:
            head = _PAIRS.pop(rule, None) or jax.jit(rule._pair_at)
            _PAIRS[rule] = head
            while len(_PAIRS) > SIZE:
                _PAIRS.popitem(last=False)
    except TypeError:  # a rule holding an unhashable value
        return None
    return head(t)  # type: ignore[no-any-return]


def _head(config: Any) -> Callable[[Array, Array], Scalars] | None:
    """The compiled scalars of ``config``, made on its first eager update; None when its
    schedule is not all ema-core's own (decided once per config: a config is frozen)."""
    with _LOCK:
        if config in _HEADS:
            _HEADS.move_to_end(config)
            return _HEADS[config]
        own = _own(config.effective_schedule)
        head = _HEADS[config] = jax.jit(lambda s, w: scalars(config, s, w)) if own else None
        while len(_HEADS) > SIZE:
            _HEADS.popitem(last=False)
        return head


def _own(schedule: Any) -> bool:
    """``schedule`` is one of ``ema_core.schedules``' classes, and so is every schedule it
    wraps (``every``, the ``init="copy"`` step...), none of them a user's callable."""
    if not isinstance(schedule, Schedule) or isinstance(schedule, FromCallable):
        return False
    if not type(schedule).__module__.startswith("ema_core.schedules."):
        return False
    inner = (getattr(schedule, f.name) for f in dataclasses.fields(schedule))  # type: ignore[arg-type]
    return all(_own(value) for value in inner if isinstance(value, Schedule) or callable(value))
