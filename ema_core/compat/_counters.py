"""The seeds' counters and saved settings checked: a counter (TensorFlow's ``num_updates``,
Paddle's ``thres_steps``, AllenNLP's ``num_updates``) given as an int, a 0-d integer array or a
callable; a zero-started average's decay; a drop-in class's state dict against the instance's
settings. Frameworks are found from the arrays; nothing here imports one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import array_api_compat as compat

from ema_core._ops import check_count_array
from ema_core.presets._args import check_count
from ema_core.schedules import in_float32


def read_count(value: Any, name: str) -> int:
    """The current value of a counter given as an int, a 0-d integer array or a callable."""
    current = value() if callable(value) else value
    if compat.is_array_api_obj(current):
        check_count_array(current, name)  # the step's check; the range is the peer's
        current = int(current)
    return check_count(name, current)


def check_counter(value: Any, name: str) -> None:
    """A counter argument: None, an int >= 0, a 0-d integer array or a zero-argument callable."""
    if value is None or callable(value):
        return
    read_count(value, name)


def check_debias_decay(decay: float, counter: Any, counter_name: str) -> None:
    """A zero-started average read through ``1 / (1 - d ** t)`` needs a float32 decay below 1
    when no counter lowers it: at 1 the average never leaves zero and the correction is 0 / 0."""
    if counter is None and in_float32(decay)(0) == 1.0:
        raise ValueError(
            f"decay must round to < 1 in float32 for a zero-started, bias-corrected average "
            f"without {counter_name} (1 - decay**t would be 0), got {decay!r}"
        )


def check_state(state_dict: Any, keys: tuple[str, ...], settings: Mapping[str, Any]) -> None:
    """A drop-in class's state dict: a mapping with exactly ``keys``, saved under the same
    ``settings`` (compared by kind and value: the decay is a float, and a float subclass such
    as numpy's float64 holds one; a bool is a bool, not 0 or 1)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    if set(state_dict) != set(keys):
        raise ValueError(
            f"state_dict must have the keys {list(keys)}, got {list(state_dict)!r:.200}"
        )
    for key, mine in settings.items():
        saved = state_dict[key]
        kind = float if type(mine) is float else type(mine)
        same_kind = isinstance(saved, float) if kind is float else type(saved) is kind
        if not same_kind or saved != mine:
            types = "" if same_kind else f" (type {type(saved).__name__}, not {kind.__name__})"
            raise ValueError(
                f"state_dict[{key!r}] is {saved!r:.80}{types} but this instance's {key} is "
                f"{mine!r}: load a state into an instance made with the same settings"
            )


def counter_state(counter: Any, name: str) -> int | None:
    """A counter argument's value now, for a state dict: None when it is not set."""
    return None if counter is None else read_count(counter, name)


def check_counter_state(saved: Any, counter: Any, name: str) -> None:
    """A saved counter against this instance's: both None, or both set, the same int when this
    one is a fixed int. A live counter (array, callable) is the caller's to restore."""
    where = f"state_dict[{name!r}]"
    if saved is not None:
        check_count(where, saved)
    fixed = isinstance(counter, int) and saved != counter
    if (saved is None) != (counter is None) or fixed:
        mine = "None" if counter is None else "set" if not isinstance(counter, int) else counter
        raise ValueError(f"{where} is {saved!r} but this instance's {name} is {mine}")
