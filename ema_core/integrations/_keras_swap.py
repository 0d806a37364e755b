"""The averages in a Keras model for ``evaluate`` / ``predict``, and its live weights back.

``Swap`` is what the Keras ``EMACallback`` uses at the start and end of each evaluation or
prediction: ``put_in`` copies the averages into the model's variables (new arrays: a JAX
evaluation donates its inputs), keeping a copy of each live weight it replaces; ``restore``
writes those copies back, bit for bit. The callback calls ``restore`` before every
``put_in`` and at every end, so at most one set of live weights is ever held.

Several callbacks on one model: the first to put its averages in holds the model until it
restores; the others put nothing in meanwhile (``put_in`` returns False). Keras calls the end
hooks in list order, so a second swap would back up the first one's averages and restore them
last, leaving them in the model for training.
"""

from __future__ import annotations

import weakref
from typing import Any

from ema_core.integrations._keras_weights import Plan, as_weight, snapshot

#: The model whose weights a ``Swap`` holds averages in -> that ``Swap``.
_HOLDERS: weakref.WeakKeyDictionary[Any, Swap] = weakref.WeakKeyDictionary()


class Swap:
    """The live weights taken out of a model while its averages are in (none at first)."""

    def __init__(self) -> None:
        self._backup: list[tuple[Any, Any]] | None = None
        self._model: Any = None

    def put_in(self, plan: Plan, averages: dict[str, Any], model: Any) -> bool:
        """Assign ``averages`` (by the names of ``plan``) to ``model``'s weights; weights
        without an average (skipped ones) stay live. False (nothing put in) while another
        ``Swap`` holds averages in ``model``."""
        if _HOLDERS.get(model, self) is not self:
            return False
        pairs = [
            (w, averages[n]) for n, w in zip(plan.names, plan.weights, strict=True) if n in averages
        ]
        new = [as_weight(a, w) for w, a in pairs]  # every conversion before the first write
        self._backup = [(w, snapshot(w.value)) for w, _ in pairs]
        for (w, _), value in zip(pairs, new, strict=True):
            w.assign(value)
        _HOLDERS[model], self._model = self, model
        return True

    def restore(self) -> None:
        """The live weights back, bit for bit, if averages are in the model."""
        for w, value in self._backup or ():
            w.assign(value)
        self._backup = None
        if self._model is not None and _HOLDERS.get(self._model) is self:
            del _HOLDERS[self._model]
        self._model = None
