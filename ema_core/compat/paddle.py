"""PaddlePaddle's ``paddle.static.ExponentialMovingAverage`` on any arrays.

The static-graph class averages every parameter of the program; here the parameters are given
(named arrays, a dict, a list of arrays or a torch module). ``update()`` runs
``ema_t = d ema_{t-1} + (1 - d) theta_t`` from ``ema_0 = 0`` with the decay in float32
(``min(decay, (1 + thres) / (10 + thres))`` when ``thres_steps`` is set), and ``apply()`` writes
the bias-corrected ``ema_t / (1 - d ** t)`` into the parameters (the zeros as they are before
any update; the raw average where ``d`` rounds to 1 in float32, where Paddle divides by 0).
``state_dict()`` / ``load_state_dict()`` save and resume a run. ``executor`` is accepted and
ignored: there is no program to run. numpy, CuPy and torch parameters are written in place; for
JAX pass the new values to ``update(parameters=...)`` and use the dict ``apply()`` yields. The
functional equivalent is ``ema_core.init`` / ``update`` / ``average`` with ``presets.paddle(...)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import ema_core
from ema_core._checks import check_fraction
from ema_core._config import power_weight
from ema_core._types import Array
from ema_core.compat._arrays import check_like, clone, divide, named_arrays
from ema_core.compat._counters import (
    check_counter,
    check_counter_state,
    check_debias_decay,
    check_state,
    counter_state,
    read_count,
)
from ema_core.compat._writes import assign_all, check_parameters
from ema_core.presets._args import check_bool, check_count
from ema_core.schedules import constant, in_float32
from ema_core.schedules import num_updates as num_updates_schedule


class ExponentialMovingAverage:
    """A zero-started, bias-corrected EMA of parameters with Paddle's method names.

    Example:
        >>> import numpy as np
        >>> from ema_core.compat.paddle import ExponentialMovingAverage
        >>> w = np.full(2, 4.0, dtype=np.float32)
        >>> ema = ExponentialMovingAverage([("w", w)], decay=0.5)
        >>> ema.update()
        >>> with ema.apply() as averaged:
        ...     averaged["w"]
        array([4., 4.], dtype=float32)
    """

    def __init__(
        self,
        parameters: Any,
        decay: float = 0.999,
        thres_steps: Any = None,
        name: str | None = None,
    ) -> None:
        self._decay = check_fraction("decay", decay)
        check_counter(thres_steps, "thres_steps")
        check_debias_decay(decay, thres_steps, "thres_steps")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be None or a str, got {type(name).__name__}")
        self._thres_steps, self.name = thres_steps, name
        self._parameters = named_arrays(parameters, "parameters", allow_plain=True)
        check_parameters(self._parameters, "parameters")  # one framework, with values
        config = ema_core.Config(init="zeros")
        self._ema: dict[str, Array] = ema_core.init(self._parameters, config).shadow
        self._backups: dict[str, Array] | None = None
        self._stale = False  # update() ran since the pending backup: the params were trained
        self._open = 0  # ``with apply()`` blocks entered and not left
        self._step = 0
        self._last_decay = self._decay

    @property
    def parameters(self) -> dict[str, Array]:
        """The parameters by name (the arrays holding their current values)."""
        return dict(self._parameters)

    def _current_decay(self) -> float:
        if self._thres_steps is None:
            return float(in_float32(self._decay)(0))
        n = read_count(self._thres_steps, "thres_steps")
        return float(in_float32(num_updates_schedule(self._decay))(n))

    def update(self, parameters: Any = None) -> None:
        """One EMA step with the parameters (or their new values, needed for JAX)."""
        new = self._parameters
        if parameters is not None:
            new = named_arrays(parameters, "parameters", allow_plain=True)
            check_like(new, self._parameters, "parameters")
        decay = self._current_decay()
        self._ema = ema_core.ema_update(self._ema, new, 1, decay=decay)
        self._parameters, self._step, self._last_decay = new, self._step + 1, decay
        self._stale = self._backups is not None

    def average(self) -> dict[str, Array]:
        """The bias-corrected averages ``ema / (1 - d ** t)``, as new arrays."""
        if self._step == 0:
            return {k: clone(v) for k, v in self._ema.items()}
        weight = power_weight(constant(self._last_decay), self._step)
        return {k: divide(v, weight) for k, v in self._ema.items()}

    @contextlib.contextmanager
    def apply(self, executor: Any = None, need_restore: bool = True) -> Iterator[dict[str, Array]]:
        """Write the bias-corrected averages into the parameters for the ``with`` block; yield
        the parameters; restore them afterwards (also on error) when ``need_restore``.

        Inside another ``with apply()`` block, or again after ``apply(need_restore=False)``
        with no ``update()`` since, it keeps the backup pending (the parameters hold averages,
        not their own values) and leaves the restore to ``restore()`` or the block that took
        it. A pending backup with an ``update()`` since is stale (the parameters were trained
        on, as Paddle expects after a forgotten ``restore()``): the current values are backed
        up instead, as Paddle does at every ``apply``. An error before the block (a resized
        parameter) changes nothing."""
        check_bool("need_restore", need_restore)
        averages = self.average()
        fresh = self._backups is None or (self._stale and self._open == 0)
        backups = {k: clone(v) for k, v in self._parameters.items()} if fresh else None
        written = dict(assign_all(self._parameters, averages))  # checked before it writes
        if backups is not None:
            self._backups, self._stale = backups, False
        self._open += 1
        try:
            yield written
        finally:
            self._open -= 1
            if need_restore and fresh and self._backups is not None:
                self.restore(executor)

    def restore(self, executor: Any = None) -> dict[str, Array]:
        """Write the values saved by ``apply()`` back into the parameters, once per apply."""
        if self._backups is None:
            raise RuntimeError(
                "restore() needs an earlier apply() that was not restored: nothing was saved"
            )
        restored = dict(assign_all(self._parameters, self._backups))
        self._backups = None
        return restored

    def state_dict(self) -> dict[str, Any]:
        """Copies of the averages (``"ema"``, zero-started), the update count (``"step"``), the
        decay of the last update (``"last_decay"``, read by ``average()``) and the settings:
        ``"decay"`` and ``"thres_steps"`` (its value now, None when not set)."""
        return {
            "ema": {k: clone(v) for k, v in self._ema.items()},
            "step": self._step,
            "last_decay": self._last_decay,
            "decay": self._decay,
            "thres_steps": counter_state(self._thres_steps, "thres_steps"),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()``: the same decay, ``thres_steps`` set or not as here (the
        same int when it is an int; a live counter is the caller's to restore), averages named
        as here with the same shapes, dtypes and array types. All is checked before anything is
        written: on an error nothing has changed."""
        check_state(state_dict, _STATE_KEYS, {"decay": self._decay})
        check_counter_state(state_dict["thres_steps"], self._thres_steps, "thres_steps")
        step = check_count("state_dict['step']", state_dict["step"])
        last_decay = check_fraction("state_dict['last_decay']", state_dict["last_decay"])
        ema = named_arrays(state_dict["ema"], "state_dict['ema']")
        check_like(ema, self._ema, "state_dict['ema']")
        self._ema = assign_all(self._ema, ema, "ema")
        self._step, self._last_decay = step, last_decay


_STATE_KEYS = ("ema", "step", "last_decay", "decay", "thres_steps")
