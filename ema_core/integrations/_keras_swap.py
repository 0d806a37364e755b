"""The averages in a Keras model for ``evaluate`` / ``predict``, and its live weights back.

``Swap`` is what the Keras ``EMACallback`` uses at the start and end of each evaluation or
prediction: ``put_in`` copies the averages into the model's variables (new arrays: a JAX
evaluation donates its inputs), keeping a copy of each live weight it replaces; ``restore``
writes those copies back, bit for bit. The callback calls ``restore`` before every
``put_in`` and at every end, so at most one set of live weights is ever held.
"""

from __future__ import annotations

from typing import Any

from ema_core.integrations._keras_weights import Plan, as_weight, snapshot


class Swap:
    """The live weights taken out of a model while its averages are in (none at first)."""

    def __init__(self) -> None:
        self._backup: list[tuple[Any, Any]] | None = None

    def put_in(self, plan: Plan, averages: dict[str, Any]) -> None:
        """Assign ``averages`` (by the names of ``plan``) to the model's weights; weights
        without an average (skipped ones) stay live."""
        pairs = [
            (w, averages[n]) for n, w in zip(plan.names, plan.weights, strict=True) if n in averages
        ]
        new = [as_weight(a, w) for w, a in pairs]  # every conversion before the first write
        self._backup = [(w, snapshot(w.value)) for w, _ in pairs]
        for (w, _), value in zip(pairs, new, strict=True):
            w.assign(value)

    def restore(self) -> None:
        """The live weights back, bit for bit, if averages are in the model."""
        for w, value in self._backup or ():
            w.assign(value)
        self._backup = None
