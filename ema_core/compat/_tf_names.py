"""The variable lookup and TF1 naming of ``ema_core.compat.tensorflow.ExponentialMovingAverage``:
its slot for an array, a name or a pair, ``average_name`` and ``variables_to_restore``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ema_core._types import Array
from ema_core.compat._arrays import VarKey, var_items
from ema_core.compat._tf_state import Slot


def find_slot(slots: Mapping[VarKey, Slot], var: Any) -> Slot | None:
    """The slot of ``var`` (an array, a name or a ``(name, array)`` pair), or None."""
    if isinstance(var, tuple) and len(var) == 2:
        var = var[0]
    if isinstance(var, str):
        return slots.get(var)
    return next((s for s in slots.values() if s.var is var and var is not None), None)


def average_name(slots: Mapping[VarKey, Slot], var: Any, ema_name: str) -> str:
    """``"<variable name>/<ema_name>"``: the name the average of ``var`` is saved under."""
    name = var if isinstance(var, str) else None
    if isinstance(var, tuple) and len(var) == 2 and isinstance(var[0], str):
        name = var[0]
    if name is None:
        slot = find_slot(slots, var)
        name = None if slot is None else slot.name
    if name is None:
        raise ValueError("average_name needs a named variable: pass (name, array) pairs")
    return f"{op_name(name)}/{ema_name}"


def op_name(name: str) -> str:
    """A variable's name as TF saves it: without the output index a TF2 ``var.name`` carries
    (``"dense/kernel:0"`` -> ``"dense/kernel"``, as TF's ``var.op.name``).

    >>> op_name("dense/kernel:0"), op_name("w")
    ('dense/kernel', 'w')
    """
    head, colon, index = name.rpartition(":")
    return head if colon and index.isdigit() else name


def variables_to_restore(
    slots: Mapping[VarKey, Slot], moving_avg_variables: Any, ema_name: str
) -> dict[str, Array]:
    """Restore names to variables: ``average_name`` for ``moving_avg_variables`` (None: all the
    named averaged ones), the own name for the other named variables."""
    held = [s for s in slots.values() if s.var is not None]  # loaded, not applied
    named = {s.name: s.var for s in held if s.name is not None}
    if moving_avg_variables is None:
        averaged = dict(named)
    else:
        items = var_items(moving_avg_variables, "moving_avg_variables", merge=True)
        averaged = dict(
            _restore_name(slots, name, var, f"moving_avg_variables[{i}]")
            for i, (_, name, var) in enumerate(items)
        )
    restore = {average_name(slots, n, ema_name): v for n, v in averaged.items()}
    return restore | {op_name(n): v for n, v in named.items() if n not in averaged}


def _restore_name(
    slots: Mapping[VarKey, Slot], name: str | None, var: Array, where: str
) -> tuple[str, Array]:
    """A variable's name: its own, or that of the named variable holding this array."""
    if name is None:
        names = (s.name for s in slots.values() if s.var is var and s.name is not None)
        name = next(names, None)
    if name is None:
        raise ValueError(
            f"{where} is an array no named variable holds: variables_to_restore needs a "
            "name for it; pass (name, array) pairs"
        )
    return name, var
