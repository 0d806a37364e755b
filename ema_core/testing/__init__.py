"""``ema_core.testing``: check your own EMA against ema-core's semantics, on your framework.

``reference`` and ``assert_matches`` need only numpy; the hypothesis strategies (``nests``,
``schedules``, ``configs``, ``trajectories``) and ``assert_ema_properties`` import hypothesis
when first used.

* ``_oracle``: ``reference`` (the float64 oracle, a plain loop) and ``assert_matches``;
  ``_inputs``: its inputs checked once (the config, a ``Trajectory`` whose nests match);
  ``_compare``: what it compares (averages leaf by leaf, inputs left as they were),
  ``_dtypes``: the dtype each average must have, ``_convert``: any framework's arrays as
  float64 numpy.
* ``_properties``: ``assert_ema_properties``, the invariants as a hypothesis check;
  ``_strategies``: the hypothesis strategies.
* ``_args``: the kit's own argument checks, refused by name before anything runs.
"""

from __future__ import annotations

import importlib
from typing import Any

from ema_core.testing._inputs import Trajectory
from ema_core.testing._oracle import Expected, assert_matches, reference

_LAZY = {
    "nests": "_strategies",
    "schedules": "_strategies",
    "configs": "_strategies",
    "trajectories": "_strategies",
    "assert_ema_properties": "_properties",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"ema_core.testing.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ema_core.testing' has no attribute {name!r}")


__all__ = [
    "Expected",
    "Trajectory",
    "assert_ema_properties",
    "assert_matches",
    "configs",
    "nests",
    "reference",
    "schedules",
    "trajectories",
]
