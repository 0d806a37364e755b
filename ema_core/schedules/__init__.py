"""Decay schedules: pure functions of the update count t -> decay.

Each takes a Python int (and returns a Python float computed in float64) or a 0-d integer array,
traced or on a device (and returns a 0-d float array there). ``decay`` is always the weight on
the old average; ``schedule.rate(t)`` is ``1 - decay``, computed without cancellation.

* ``_base``: the interface, ``Schedule`` (``t -> (decay, rate)``), and ``FromCallable`` for a
  plain ``t -> decay`` callable, whose every return value ``_values`` checks.
* ``_decays``: the closed forms (``constant``, ``num_updates``, ``warmup``, ``half_life``,
  ``annealing``) and ``as_schedule``.
* ``_power``: EDM2's power function; ``_gamma``: its sigma_rel <-> gamma relation in float64,
  shared with ``ema_core.posthoc``.
* ``_every``: ``every`` (an update every n steps) and ``CopyAt`` (the first-update copy);
  ``_window_logs``: a compensated window's decay and rate in float32, from the rates' logs.
* ``_gates``: the peers' roundings (``in_float32``, ``ramped_half_life``, ``momentum``);
  ``_gated``: ``gated``, the peers' bookkeeping (start, phase, first copies, shifted count,
  floor).
"""

from ema_core.schedules._base import FromCallable, Schedule
from ema_core.schedules._decays import (
    Annealing,
    Constant,
    NumUpdates,
    Warmup,
    annealing,
    as_schedule,
    constant,
    half_life,
    num_updates,
    warmup,
)
from ema_core.schedules._every import CopyAt, Every, every
from ema_core.schedules._gamma import MAX_SIGMA_REL
from ema_core.schedules._gated import Gated, gated
from ema_core.schedules._gates import (
    InFloat32,
    Momentum,
    RampedHalfLife,
    in_float32,
    momentum,
    ramped_half_life,
)
from ema_core.schedules._power import (
    PowerFunction,
    gamma_to_sigma_rel,
    power_function,
    sigma_rel_to_gamma,
)

__all__ = [
    "MAX_SIGMA_REL",
    "Annealing",
    "Constant",
    "CopyAt",
    "Every",
    "FromCallable",
    "Gated",
    "InFloat32",
    "Momentum",
    "NumUpdates",
    "PowerFunction",
    "RampedHalfLife",
    "Schedule",
    "Warmup",
    "annealing",
    "as_schedule",
    "constant",
    "every",
    "gamma_to_sigma_rel",
    "gated",
    "half_life",
    "in_float32",
    "momentum",
    "num_updates",
    "power_function",
    "ramped_half_life",
    "sigma_rel_to_gamma",
    "warmup",
]
