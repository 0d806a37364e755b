"""TensorFlow's ``tf.train.ExponentialMovingAverage`` (TF2, and the TF1 ``average_name`` /
``variables_to_restore``) on any arrays.

``apply(var_list)`` creates a shadow the first time it sees a variable and updates every shadow
on every call, the first one included; the decay ``min(decay, (1 + n) / (10 + n))`` is formed in
float32 as TF does. Name variables by passing ``(name, array)`` pairs, a dict or a torch module:
``average_name`` and ``variables_to_restore`` then use TF's ``<name>/<ema name>`` naming.
``zero_debias=True`` treats every input as TF treats tensors: zero shadows, read through
``biased / (1 - d ** k)`` after the k-th apply (the biased value itself where ``d`` rounds to 1
in float32, where TF divides by 0). ``state_dict()`` / ``load_state_dict()`` save and resume the
named shadows. numpy, CuPy and torch shadows are updated in place; with JAX arrays (immutable, a
new object every step) name them, so the new values find their shadows, and read
``average(name)`` after each apply. The functional equivalent is ``ema_core.init`` / ``update``
/ ``average`` with ``presets.tensorflow(...)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import array_api_compat as compat

import ema_core
from ema_core._checks import check_fraction
from ema_core._config import power_weight
from ema_core._types import Array
from ema_core.compat._arrays import VarKey, clone, divide, same_memory, var_items
from ema_core.compat._counters import check_counter, check_debias_decay, counter_state, read_count
from ema_core.compat._tf_names import average_name, find_slot, variables_to_restore
from ema_core.compat._tf_state import Slot, check_vars, checked_state
from ema_core.compat._writes import assign
from ema_core.presets._args import check_bool
from ema_core.schedules import constant, in_float32
from ema_core.schedules import num_updates as num_updates_schedule

_Slot = Slot  # the name pickles made before the slots moved to ``_tf_state`` still load by


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
        self._slots: dict[VarKey, Slot] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled or deep-copied (``copy.deepcopy((variables, ema))``): an unnamed
        variable's slot is keyed by the id of the copy it now holds, not by the old one's."""
        self.__dict__.update(state)
        self._slots = {
            (id(slot.var) if slot.name is None else key): slot for key, slot in self._slots.items()
        }

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
        items = var_items(var_list)
        if not items:
            raise ValueError("var_list holds no variables: nothing to average")
        decay = self._current_decay()
        slots = [self._find(i, key, name, var) for i, (key, name, var) in enumerate(items)]
        if len({id(slot) for slot in slots}) < len(slots):
            raise ValueError("var_list holds one array twice, named and not: each is averaged once")
        self._warn_if_renewed(items, slots)
        check_vars(items, slots)  # named as given, like the shadows of earlier applies
        field = "biased" if self._zero_debias else "shadow"
        current = {i: getattr(slot, field) for i, slot in enumerate(slots)}
        new = ema_core.ema_update(
            current, {i: var for i, (_, _, var) in enumerate(items)}, 1, decay=decay
        )
        for i, ((key, name, var), slot) in enumerate(zip(items, slots, strict=True)):
            slot.var, slot.name = var, slot.name if name is None else name
            home = key if slot.name is None else slot.name  # kept by name once it has one
            for old in [k for k, held in self._slots.items() if held is slot and k != home]:
                del self._slots[old]  # an array averaged unnamed, now given its name
            self._slots[home] = slot
            setattr(slot, field, new[i])
            if self._zero_debias:
                slot.local_step += 1  # TF's debias 1 - d ** k: the "power" correction
                weight = power_weight(constant(decay), slot.local_step)
                slot.shadow = assign(slot.shadow, divide(new[i], weight))

    def _find(self, i: int, key: Any, name: str | None, var: Array) -> Slot:
        """The slot of ``var``: by its key, else the slot already averaging this very array (TF
        averages a variable once, passed by name or not), else a new one.

        Raises:
            ValueError: the array is averaged under another name.
        """
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        held = next((s for s in self._slots.values() if s.var is var), None)
        if held is None:
            return self._new_slot(var, name)
        if name is not None and held.name is not None:
            raise ValueError(
                f"var_list[{i}] names {held.name!r}'s array {name!r}: a variable is averaged "
                "under one name"
            )
        return held

    def _warn_if_renewed(self, items: list[Any], slots: list[Slot]) -> None:
        """Warn when an unnamed array gets a new shadow although it is a variable averaged
        before under another object: unnamed arrays are found by identity, so each step would
        start a new average (and keep the old ones) instead of updating one. Told by memory
        for torch, numpy and CuPy (``w.detach()`` or a view: a new object over the averaged
        array's memory), and for JAX by kind (an immutable array is a new object each step,
        so one unnamed JAX array averaged before means the next ones are new ones)."""
        known = {id(slot) for slot in self._slots.values()}
        unnamed = [s.var for s in self._slots.values() if s.name is None]
        for i, ((_, name, var), slot) in enumerate(zip(items, slots, strict=True)):
            if name is not None or id(slot) in known:
                continue
            jax_again = compat.is_jax_array(var) and any(map(compat.is_jax_array, unnamed))
            if jax_again or any(same_memory(old, var) for old in unnamed):
                warnings.warn(
                    f"var_list[{i}] is a new unnamed array over a variable averaged before "
                    "(w.detach(), a view, or a JAX array: a new object each step): unnamed "
                    "arrays are found by identity, so it starts a new average; pass (name, "
                    "array) pairs, a dict or a torch module",
                    stacklevel=3,
                )
                return

    def _new_slot(self, var: Array, name: str | None) -> Slot:
        """A shadow for a variable seen for the first time (kept only once ``apply`` succeeds)."""
        if not self._zero_debias:
            return Slot(var, name, clone(var))
        zeros = compat.array_namespace(var).zeros_like(var)
        return Slot(var, name, zeros, clone(zeros))

    def average(self, var: Any) -> Array | None:
        """The shadow of ``var`` (an array, a name or a pair), or None if it is not averaged."""
        slot = find_slot(self._slots, var)
        return None if slot is None else slot.shadow

    def average_name(self, var: Any) -> str:
        """``"<variable name>/<name>"``: the name the average is saved under."""
        return average_name(self._slots, var, self._name)

    def variables_to_restore(self, moving_avg_variables: Any = None) -> dict[str, Array]:
        """Map restore names to variables: ``average_name(v)`` for the variables in
        ``moving_avg_variables`` (all the named averaged ones by default; arrays or pairs, an
        array named by the named variable holding it, a pair even if not averaged yet, as in
        TF), the own name for the other named variables."""
        return variables_to_restore(self._slots, moving_avg_variables, self._name)

    def _named_slots(self, what: str) -> dict[str, Slot]:
        """The slots by name; a plain array averaged without a name cannot be saved or loaded."""
        if any(not isinstance(key, str) for key in self._slots):
            raise ValueError(
                f"{what} needs named variables, but some averaged arrays have no name: apply "
                "(name, array) pairs, a dict or a torch module"
            )
        return {str(key): slot for key, slot in self._slots.items()}

    def state_dict(self) -> dict[str, Any]:
        """Copies of the shadows by variable name; with ``zero_debias`` also the biased values
        and each variable's apply count (``"biased"``, ``"local_steps"``; else empty); and the
        settings: ``"decay"``, ``"zero_debias"``, ``"num_updates"`` (its value now, or None)."""
        slots = self._named_slots("state_dict")
        biased = {k: s.biased for k, s in slots.items() if s.biased is not None}
        return {
            "shadows": {k: clone(s.shadow) for k, s in slots.items()},
            "biased": {k: clone(v) for k, v in biased.items()},
            "local_steps": {k: slots[k].local_step for k in biased},
            "decay": self._decay,
            "zero_debias": self._zero_debias,
            "num_updates": counter_state(self._num_updates, "num_updates"),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()``: the same decay and ``zero_debias``, ``num_updates`` set
        or not as here (the same int when it is an int; a live counter is the caller's to
        restore). Shadows are named as the ones here (any names before the first apply), of
        the same shapes, dtypes and array types; a loaded shadow is used by the first apply
        that names its variable. All is checked before anything is written."""
        slots = self._named_slots("load_state_dict")
        settings = {"decay": self._decay, "zero_debias": self._zero_debias}
        shadows, biased, steps = checked_state(state_dict, slots, settings, self._num_updates)
        for key, shadow in shadows.items():
            self._load_slot(key, shadow, biased.get(key), steps.get(key, 0))

    def _load_slot(self, name: str, shadow: Array, biased: Array | None, step: int) -> None:
        """Write a checked shadow into its slot, or keep a copy until an apply names it."""
        slot = self._slots.get(name)
        if slot is None:
            copy = None if biased is None else clone(biased)
            self._slots[name] = Slot(None, name, clone(shadow), copy, step)
            return
        slot.shadow = assign(slot.shadow, shadow)
        if slot.biased is not None and biased is not None:
            slot.biased = assign(slot.biased, biased)
        slot.local_step = step
