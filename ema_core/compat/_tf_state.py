"""The state of ``ema_core.compat.tensorflow.ExponentialMovingAverage``: its slots (one per
averaged variable), the checks of ``apply``'s variables against them and of a ``state_dict``
before ``load_state_dict`` writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ema_core._types import Array
from ema_core.compat._arrays import VarKey, check_like, floating_item, named_arrays
from ema_core.compat._counters import check_counter_state, check_state
from ema_core.compat._writes import check_parameters
from ema_core.presets._args import check_count

STATE_KEYS = ("shadows", "biased", "local_steps", "decay", "zero_debias", "num_updates")


@dataclass
class Slot:
    """One averaged variable: its shadow, and with ``zero_debias`` the biased value and the
    variable's own apply count."""

    var: Array | None  # None for a shadow loaded by name, until an apply names its variable
    name: str | None
    shadow: Array
    biased: Array | None = None
    local_step: int = 0


def check_vars(items: Sequence[tuple[VarKey, str | None, Array]], slots: Sequence[Slot]) -> None:
    """``apply``'s variables (``var_items``) against their slots, each named as the caller gave
    it: ``var_list['w']`` by name, ``var_list[0]`` by position for an unnamed array. They must
    be arrays of one framework, dense and with values (not meta), each like the shadow it
    updates (shape, dtype, array type): ``TypeError`` / ``ValueError`` otherwise."""
    keys: list[VarKey] = [i if name is None else name for i, (_, name, _) in enumerate(items)]
    arrays = {key: var for key, (_, _, var) in zip(keys, items, strict=True)}
    check_parameters(arrays, "var_list")
    shadows = {key: slot.shadow for key, slot in zip(keys, slots, strict=True)}
    check_like(arrays, shadows, "var_list")


def checked_state(
    state_dict: Mapping[str, Any],
    slots: Mapping[str, Slot],
    settings: Mapping[str, Any],
    num_updates: Any,
) -> tuple[dict[str, Array], dict[str, Array], Mapping[str, int]]:
    """The shadows, biased values and apply counts of ``state_dict`` (by name), each checked
    against ``slots`` (the named slots here; any names when empty) and ``settings`` (decay,
    zero_debias), ``num_updates`` set or not as here: ``ValueError`` / ``TypeError`` otherwise."""
    check_state(state_dict, STATE_KEYS, settings)
    check_counter_state(state_dict["num_updates"], num_updates, "num_updates")
    shadows, biased = (
        named_arrays(state_dict[k], f"state_dict[{k!r}]", allow_empty=True)
        for k in ("shadows", "biased")
    )
    for key, value in shadows.items():
        floating_item(value, f"state_dict['shadows'][{key!r}]")
    if slots:
        check_like(shadows, {k: s.shadow for k, s in slots.items()}, "state_dict['shadows']")
    check_like(biased, shadows if settings["zero_debias"] else {}, "state_dict['biased']")
    steps = state_dict["local_steps"]
    if not isinstance(steps, Mapping) or set(steps) != set(biased):
        raise ValueError(
            f"state_dict['local_steps'] must map the names in state_dict['biased'] to "
            f"counts, got {steps!r:.120}"
        )
    for key, count in steps.items():
        check_count(f"state_dict['local_steps'][{key!r}]", count)
    return shadows, biased, steps
