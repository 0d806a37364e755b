"""TensorFlow's ``tf.train.ExponentialMovingAverage`` (TF2, and the TF1 ``average_name`` /
``variables_to_restore``) on any arrays.

``apply(var_list)`` creates a shadow the first time it sees a variable and updates every shadow
on every call, the first one included; the decay ``min(decay, (1 + n) / (10 + n))`` is formed in
float32 as TF does. Name variables by passing ``(name, array)`` pairs, a dict or a torch module:
``average_name`` and ``variables_to_restore`` then use TF's ``<name>/<ema name>`` naming.
``zero_debias=True`` treats every input as TF treats tensors: zero shadows, read through
``biased / (1 - d ** k)`` after the k-th apply. numpy, CuPy and torch shadows are updated in
place; with JAX arrays (immutable, a new object every step) name them, so the new values find
their shadows, and read ``average(name)`` after each apply. The functional equivalent is
``ema_core.init`` / ``update`` / ``average`` with ``presets.tensorflow(...)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import array_api_compat as compat

import ema_core
from ema_core._checks import check_fraction
from ema_core._config import power_weight
from ema_core._types import Array
from ema_core.compat._arrays import (
    assign,
    check_array,
    check_counter,
    check_debias_decay,
    check_like,
    clone,
    divide,
    is_module,
    read_count,
)
from ema_core.presets._args import check_bool
from ema_core.schedules import constant, in_float32
from ema_core.schedules import num_updates as num_updates_schedule

Key = str | int


@dataclass
class _Slot:
    var: Array
    name: str | None
    shadow: Array
    biased: Array | None = None
    local_step: int = 0


class ExponentialMovingAverage:
    """Moving averages of variables: ``shadow -= (1 - decay) * (shadow - variable)``.

    Example:
        >>> import numpy as np
        >>> from ema_core.compat.tensorflow import ExponentialMovingAverage
        >>> w = np.ones(2, dtype=np.float32)
        >>> ema = ExponentialMovingAverage(decay=0.5)
        >>> ema.apply([("dense/kernel", w)])
        >>> w += 2.0
        >>> ema.apply([("dense/kernel", w)])
        >>> ema.average("dense/kernel"), ema.average_name("dense/kernel")
        (array([2., 2.], dtype=float32), 'dense/kernel/ExponentialMovingAverage')
    """

    def __init__(
        self,
        decay: float,
        num_updates: Any = None,
        zero_debias: bool = False,
        name: str = "ExponentialMovingAverage",
    ) -> None:
        self._decay = check_fraction("decay", decay)
        check_counter(num_updates, "num_updates")
        check_bool("zero_debias", zero_debias)
        if zero_debias:
            check_debias_decay(decay, num_updates, "num_updates")
        if not isinstance(name, str):
            raise TypeError(f"name must be a non-empty str, got {type(name).__name__}")
        if not name:
            raise ValueError("name must be a non-empty str, got ''")
        self._num_updates, self._zero_debias, self._name = num_updates, zero_debias, name
        self._slots: dict[Key, _Slot] = {}

    @property
    def name(self) -> str:
        return self._name

    def _current_decay(self) -> float:
        if self._num_updates is None:
            return float(in_float32(self._decay)(0))
        n = read_count(self._num_updates, "num_updates")
        return float(in_float32(num_updates_schedule(self._decay))(n))

    def apply(self, var_list: Any = None) -> None:
        """Create shadows for new variables, then update every shadow in ``var_list``.

        Everything is checked and the new shadows are made before any is written or kept: on
        an error no shadow, variable or step count has changed.
        """
        items = _items(var_list)
        if not items:
            raise ValueError("var_list holds no variables: nothing to average")
        decay = self._current_decay()
        slots = [self._slots.get(key) or self._new_slot(var, name) for key, name, var in items]
        shadows = {key: slot.shadow for (key, _, _), slot in zip(items, slots, strict=True)}
        check_like({key: var for key, _, var in items}, shadows, "var_list")  # as applied before
        field = "biased" if self._zero_debias else "shadow"
        current = {i: getattr(slot, field) for i, slot in enumerate(slots)}
        new = ema_core.ema_update(
            current, {i: var for i, (_, _, var) in enumerate(items)}, 1, decay=decay
        )
        for i, ((key, _, var), slot) in enumerate(zip(items, slots, strict=True)):
            self._slots[key] = slot
            slot.var = var
            setattr(slot, field, new[i])
            if self._zero_debias:
                slot.local_step += 1  # TF's debias 1 - d ** k: the "power" correction
                weight = power_weight(constant(decay), slot.local_step)
                slot.shadow = assign(slot.shadow, divide(new[i], weight))

    def _new_slot(self, var: Array, name: str | None) -> _Slot:
        """A shadow for a variable seen for the first time (kept only once ``apply`` succeeds)."""
        if not self._zero_debias:
            return _Slot(var, name, clone(var))
        zeros = compat.array_namespace(var).zeros_like(var)
        return _Slot(var, name, zeros, clone(zeros))

    def _slot(self, var: Any) -> _Slot | None:
        if isinstance(var, tuple) and len(var) == 2:
            var = var[0]
        if isinstance(var, str):
            return self._slots.get(var)
        return next((s for s in self._slots.values() if s.var is var), None)

    def average(self, var: Any) -> Array | None:
        """The shadow of ``var`` (an array, a name or a pair), or None if it is not averaged."""
        slot = self._slot(var)
        return None if slot is None else slot.shadow

    def average_name(self, var: Any) -> str:
        """``"<variable name>/<name>"``: the name the average is saved under."""
        name = var if isinstance(var, str) else None
        if isinstance(var, tuple) and len(var) == 2 and isinstance(var[0], str):
            name = var[0]
        if name is None:
            slot = self._slot(var)
            name = None if slot is None else slot.name
        if name is None:
            raise ValueError("average_name needs a named variable: pass (name, array) pairs")
        return f"{name}/{self._name}"

    def variables_to_restore(self, moving_avg_variables: Any = None) -> dict[str, Array]:
        """Map restore names to variables: ``average_name(v)`` for the variables in
        ``moving_avg_variables`` (all the named averaged ones by default; arrays or pairs, an
        array named by the named variable holding it, a pair even if not averaged yet, as in
        TF), the own name for the other named variables."""
        named = {s.name: s.var for s in self._slots.values() if s.name is not None}
        if moving_avg_variables is None:
            averaged = dict(named)
        else:
            averaged = dict(
                self._restore_name(name, var, f"moving_avg_variables[{i}]")
                for i, (_, name, var) in enumerate(_items(moving_avg_variables))
            )
        restore = {self.average_name(n): v for n, v in averaged.items()}
        return restore | {n: v for n, v in named.items() if n not in averaged}

    def _restore_name(self, name: str | None, var: Array, where: str) -> tuple[str, Array]:
        """A variable's name: its own, or that of the named variable holding this array."""
        if name is None:
            names = (s.name for s in self._slots.values() if s.var is var and s.name is not None)
            name = next(names, None)
        if name is None:
            raise ValueError(
                f"{where} is an array no named variable holds: variables_to_restore needs a "
                "name for it; pass (name, array) pairs"
            )
        return name, var


def _items(var_list: Any) -> list[tuple[Key, str | None, Array]]:
    """``(key, name, array)`` per variable: named ones are keyed by name, plain arrays by id."""
    if var_list is None:
        raise ValueError("var_list must list the variables to average, got None")
    if is_module(var_list):
        var_list = list(var_list.named_parameters())
    elif isinstance(var_list, Mapping):
        var_list = list(var_list.items())
    elif compat.is_array_api_obj(var_list):
        var_list = [var_list]
    elif isinstance(var_list, str) or not isinstance(var_list, Iterable):
        raise TypeError(
            f"var_list must be arrays or (name, array) pairs, got {type(var_list).__name__}"
        )
    out: dict[Key, tuple[Key, str | None, Array]] = {}
    for i, item in enumerate(var_list):
        name, var = _name_and_array(item, f"var_list[{i}]")
        key: Key = id(var) if name is None else name
        if key in out:
            what = "the same array" if name is None else f"the name {name!r}"
            raise ValueError(f"var_list[{i}] repeats {what}: each variable is averaged once")
        out[key] = (key, name, var)
    return list(out.values())


def _name_and_array(item: Any, where: str) -> tuple[str | None, Array]:
    """A variable given as an array or a ``(name, array)`` pair; floating arrays only."""
    name, var = None, item
    if isinstance(item, tuple) and len(item) == 2:
        if not isinstance(item[0], str):
            raise TypeError(
                f"{where} must be an array or a (name, array) pair with a str name, "
                f"got a pair starting with {type(item[0]).__name__}"
            )
        name, var = item
    check_array(var, where)
    if not compat.array_namespace(var).isdtype(var.dtype, "real floating"):
        raise TypeError(f"{where} must be bfloat16/float16/float32/float64, got {var.dtype}")
    return name, var
