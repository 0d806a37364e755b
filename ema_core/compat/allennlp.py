"""AllenNLP's ``ExponentialMovingAverage`` (``allennlp.training.moving_average``) on any arrays.

Same constructor and methods as AllenNLP 2.10. numpy, CuPy and torch arrays (and a torch
module's parameters) are updated in place, as AllenNLP does. JAX arrays cannot be: pass the new
values to ``apply(num_updates, parameters=...)`` each step, and read the values that
``assign_average_value()`` / ``restore()`` return (or ``.parameters``) instead of the old arrays.
The functional equivalent is ``ema_core.init`` / ``update`` with ``presets.allennlp(...)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ema_core
from ema_core._checks import check_fraction
from ema_core._types import Array
from ema_core.compat._arrays import check_like, clone, named_arrays
from ema_core.compat._counters import read_count
from ema_core.compat._writes import assign_all, check_parameters, check_writable
from ema_core.presets._schedules import counter_cap


class ExponentialMovingAverage:
    """Shadows of named parameters: ``shadow = d * shadow + (1 - d) * param`` on ``apply()``.

    ``d = decay``, or ``min(decay, (numerator + n) / (denominator + n))`` for
    ``apply(num_updates=n)``. Shadows start as copies of the parameters.

    Example:
        >>> import numpy as np
        >>> from ema_core.compat.allennlp import ExponentialMovingAverage
        >>> w = np.zeros(2)
        >>> ema = ExponentialMovingAverage([("w", w)], decay=0.5)
        >>> w += 4.0
        >>> ema.apply()
        >>> ema.assign_average_value()["w"]
        array([2., 2.])
        >>> ema.restore()["w"]
        array([4., 4.])
    """

    def __init__(
        self,
        parameters: Any,
        decay: float = 0.9999,
        numerator: float = 1.0,
        denominator: float = 10.0,
    ) -> None:
        self._decay = check_fraction("decay", decay)
        # a numerator above the denominator: the plain decay (the ratio never wins the min)
        self._schedule = counter_cap(decay, numerator, denominator)
        self._numerator = float(numerator)
        self._parameters = named_arrays(parameters, "parameters")
        check_parameters(self._parameters, "parameters")  # one framework, with values: now
        self._shadows = {k: clone(v) for k, v in self._parameters.items()}
        self._backups = {k: clone(v) for k, v in self._parameters.items()}
        self._assigned = False  # the averages are in the parameters, the backups hold theirs
        self._stale = False  # apply() ran since the pending backup: the params were trained

    @property
    def parameters(self) -> dict[str, Array]:
        """The tracked parameters by name (the arrays holding their current values)."""
        return dict(self._parameters)

    def apply(self, num_updates: int | None = None, parameters: Any = None) -> None:
        """Move every shadow toward its parameter.

        Args:
            num_updates: the update count n for the counter decay, or None for ``decay``.
            parameters: new values of the tracked parameters (named arrays); needed for JAX.
        """
        new = self._parameters
        if parameters is not None:
            new = named_arrays(parameters, "parameters")
            check_like(new, self._parameters, "parameters")
        if num_updates is None:
            shadows = ema_core.ema_update(self._shadows, new, 1, decay=self._decay)
        else:
            n = read_count(num_updates, "num_updates")
            if n < -self._numerator:  # AllenNLP would blend with a negative decay
                raise ValueError(
                    f"num_updates must be >= -numerator = {-self._numerator} for a decay "
                    f"(numerator + n) / (denominator + n) >= 0, got {n}"
                )
            shadows = ema_core.ema_update(self._shadows, new, n, schedule=self._schedule)
        self._shadows, self._parameters = shadows, new
        self._stale = self._assigned

    def assign_average_value(self) -> dict[str, Array]:
        """Back up the parameters and write the averages into them; return the parameters.

        Called again before ``restore()`` with no ``apply()`` since, it keeps the first backup
        (AllenNLP would back up the averages and lose the parameters' own values); with an
        ``apply()`` since, the parameters were trained on and are backed up again.
        """
        check_writable(self._parameters, "parameters")  # before the backups change
        if not self._assigned or self._stale:
            self._backups = assign_all(self._backups, self._parameters, "backups")
        self._assigned, self._stale = True, False
        return dict(assign_all(self._parameters, self._shadows))

    def restore(self) -> dict[str, Array]:
        """Write the values backed up by ``assign_average_value()`` into the parameters; return
        the parameters. Once per ``assign_average_value()`` (or per loaded state saved before a
        ``restore()``): without one (AllenNLP would write the values from construction, or from
        the last assign) it raises RuntimeError."""
        if not self._assigned:
            raise RuntimeError(
                "restore() needs an earlier assign_average_value() that was not restored: "
                "no backup of the parameters is pending"
            )
        restored = dict(assign_all(self._parameters, self._backups))
        self._assigned = False
        return restored

    def state_dict(self) -> dict[str, Any]:
        """Copies of the shadows and backups, by parameter name, and whether the backups are
        pending (``"pending"``: an ``assign_average_value()`` not yet restored) and stale
        (``"stale"``: an ``apply()`` since, so the next assign backs up afresh)."""
        return {
            "shadows": {k: clone(v) for k, v in self._shadows.items()},
            "backups": {k: clone(v) for k, v in self._backups.items()},
            "pending": self._assigned,
            "stale": self._stale,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load shadows, backups and their pending state saved by ``state_dict()``: a state saved
        between ``assign_average_value()`` and ``restore()`` is restored by ``restore()``.

        A state without ``"pending"`` / ``"stale"`` (saved by an earlier ema-core) loads as
        AllenNLP loads its backups: ``restore()`` writes them back, and the next
        ``assign_average_value()`` backs up the parameters afresh. Every entry is checked
        (names, shapes, dtypes, array types, real bools) before any is written: on an error
        nothing has changed.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        if set(state_dict) not in (set(_STATE_KEYS), set(_STATE_KEYS[:2])):
            raise ValueError(
                f"state_dict must have the keys {list(_STATE_KEYS)} (or, saved by an older "
                f"version, 'shadows' and 'backups'), got {list(state_dict)!r:.200}"
            )
        flags = {key: state_dict.get(key, True) for key in _STATE_KEYS[2:]}
        for key, flag in flags.items():
            if not isinstance(flag, bool):
                raise TypeError(f"state_dict[{key!r}] must be a bool, got {flag!r:.80}")
        loaded = {}
        for key, tracked in (("shadows", self._shadows), ("backups", self._backups)):
            loaded[key] = named_arrays(state_dict[key], f"state_dict[{key!r}]")
            check_like(loaded[key], tracked, f"state_dict[{key!r}]")
        self._shadows = assign_all(self._shadows, loaded["shadows"], "shadows")
        self._backups = assign_all(self._backups, loaded["backups"], "backups")
        self._assigned, self._stale = flags["pending"], flags["stale"]


_STATE_KEYS = ("shadows", "backups", "pending", "stale")
