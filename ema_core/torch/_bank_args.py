"""The arguments of ``EMABank``, checked before anything is built: the K configs (given, or one
power function per ``sigma_rel``, resolved by ``ema_core._banks`` as every bank does), what
they must share on torch, and the snapshot settings (``ema_core._banks.check_snapshots``).

What must agree across a torch bank: the tracked tensors and how they are stored
(``buffers``, ``non_float``, ``dtype``): the K EMAs average the same tensors into shadows of
one dtype, which lets one pass over the params update them all. What may differ: the schedule,
``init``, ``interval`` (a skipped EMA just has decay 1 at that step), ``compensate``,
``correction`` and ``guard_finite`` (the params are checked once when any config asks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ema_core import _banks
from ema_core._config import Config

__all__ = ["check_shared", "resolve_configs", "sigma_rels_of"]

_SHARED = ("buffers", "non_float", "dtype")


def resolve_configs(configs: Any, sigma_rels: Any, interval: Any) -> list[Config]:
    """The bank's K configs: ``configs`` as given, or ``_banks.power_configs`` (EDM2's power
    function, ``init="copy"``, ``interval`` compensated) with buffers copied at every update,
    as an ``EMA`` built from a schedule copies them.

    Raises:
        TypeError / ValueError: what ``_banks.bank_configs`` refuses.
    """
    found = _banks.bank_configs("EMABank", configs, sigma_rels, interval)
    if sigma_rels is None:
        return list(found)
    return [dataclasses.replace(c, buffers="copy") for c in found]


def check_shared(configs: Sequence[Config]) -> None:
    """Raise unless the configs agree on ``buffers``, ``non_float`` and ``dtype``.

    Raises:
        ValueError: naming the first config and field that differ.
    """
    first = configs[0]
    for k, config in enumerate(configs[1:], start=1):
        for name in _SHARED:
            if getattr(config, name) != getattr(first, name):
                raise ValueError(
                    f"configs[{k}].{name}={getattr(config, name)!r} but configs[0].{name}="
                    f"{getattr(first, name)!r}: the EMAs of a bank track the same tensors into "
                    f"shadows of one dtype, so {', '.join(_SHARED)} must agree (pass {name}= to "
                    "EMABank to set it for all)"
                )


def sigma_rels_of(configs: Sequence[Config]) -> list[float | None]:
    """Each config's EDM2 ``sigma_rel`` (its power function's gamma), or None."""
    return [_banks.sigma_rel_of(c) for c in configs]
