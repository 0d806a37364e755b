"""What ``save_snapshot`` takes a snapshot of: the averages (a nest of arrays), or a torch
``EMA`` (its averages, step, sigma_rel, interval, policies and aliases); an ``EMAState`` (raw
shadows, not averages) and an EMA bank (which has its own ``save_snapshots``) are refused.

A torch ``EMA`` is recognised through ``sys.modules`` (``ema_core.torch._bank_snap`` reads it),
so no framework is imported here.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

from ema_core._types import EMAState
from ema_core.posthoc._math import check_posthoc_sigma_rel
from ema_core.posthoc._records import check_count

__all__ = ["Source", "source_of"]

_TORCH_EMA = "ema_core.torch._bank_snap"


class Source(NamedTuple):
    """One snapshot's arrays and records, its arguments checked."""

    averages: Any
    step: int
    sigma_rel: float
    interval: int
    policies: Mapping[str, str] | None
    aliases: Mapping[str, str]


def source_of(averages: Any, step: Any, sigma_rel: Any, interval: Any) -> Source:
    """The snapshot ``save_snapshot`` writes: the given arguments (``interval`` 1 where None),
    or, for a torch ``EMA``, what it says (the arguments given must agree with it).

    Raises:
        TypeError: an ``EMAState``; an argument of the wrong type. ValueError: an EMA that is not
            a power function, or arguments that disagree with it.
    """
    if isinstance(averages, EMAState):
        raise TypeError(
            "averages is an EMAState (its raw shadow, step and bias-correction weight, not the "
            "average): pass ema_core.average(state, config), the averages"
        )
    if callable(getattr(averages, "save_snapshots", None)):
        raise TypeError(
            f"averages is an EMA bank ({type(averages).__name__}), which holds several EMAs: "
            "call its save_snapshots(directory), which writes one snapshot per EMA as one set, "
            "or pass one of its EMAs (bank[k] of a torch EMABank)"
        )
    step = None if step is None else check_count(step, "step")
    interval = None if interval is None else check_count(interval, "interval")
    sigma = None if sigma_rel is None else check_posthoc_sigma_rel(sigma_rel)
    torch_ema = sys.modules.get(_TORCH_EMA)
    if torch_ema is not None and torch_ema.is_ema(averages):
        return Source(*torch_ema.snapshot_source(averages, step, sigma, interval))
    if step is None:
        raise TypeError("step must be an int (the step of the EMA's last update), got None")
    if sigma is None:
        raise TypeError("sigma_rel must be a float (the EMA's sigma_rel), got None")
    return Source(averages, step, sigma, 1 if interval is None else interval, None, {})
