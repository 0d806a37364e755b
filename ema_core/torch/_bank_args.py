"""The arguments of ``EMABank``, checked before anything is built: the K configs (given, or one
power function per ``sigma_rel``, resolved by ``ema_core._banks`` as every bank does), what
they must share on torch, and the snapshot settings
(``ema_core._snapshot_args.check_snapshots``).

What must agree across a torch bank: the tracked tensors and how they are stored
(``buffers``, ``non_float``, ``dtype``): the K EMAs average the same tensors into shadows of
one dtype, which lets one pass over the params update them all. What may differ: the schedule,
``init``, ``interval`` (a skipped EMA just has decay 1 at that step), ``compensate``,
``correction`` and ``guard_finite`` (the params are checked once when any config asks).

At each update and load: ``checked_step`` (each EMA's step, decay and rate, checked as
``EMA.update`` checks them) and ``parts`` (a bank ``state_dict``'s K parts, copied where they
are the bank's own live shadows, so that loading members in another order loses none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ema_core import _banks, _ops
from ema_core._checks import check_decay_value
from ema_core._config import Config
from ema_core._types import Step, Value
from ema_core.backends.torch._routes import host_values
from ema_core.torch import _rules
from ema_core.torch._dtensor import local

if TYPE_CHECKING:
    from ema_core.torch._module import EMA

__all__ = [
    "check_shared",
    "checked_step",
    "parts",
    "read_once",
    "resolve_configs",
    "sigma_rels_of",
]

#: What a bank's configs must share, and how to make them agree: EMABank's ``buffers=`` and
#: ``dtype=`` replace every config's; it takes no ``non_float=``.
_SHARED = {
    "buffers": "pass buffers= to EMABank to set it for all",
    "non_float": "give each Config the same non_float",
    "dtype": "pass dtype= to EMABank to set it for all",
}


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


def read_once(value: Any) -> Any:
    """``value`` for K ``EMA`` constructors: a one-shot iterator (``model.named_parameters()``,
    a generator of pairs or of ``exclude`` patterns, ``map``, ``filter``) as a list, which each
    reads whole; anything else as it is."""
    return list(value) if isinstance(value, Iterator) else value


def check_shared(configs: Sequence[Config]) -> None:
    """Raise unless the configs agree on ``buffers``, ``non_float`` and ``dtype``.

    Raises:
        ValueError: naming the first config and field that differ.
    """
    first = configs[0]
    for k, config in enumerate(configs[1:], start=1):
        for name, remedy in _SHARED.items():
            if getattr(config, name) != getattr(first, name):
                raise ValueError(
                    f"configs[{k}].{name}={getattr(config, name)!r} but configs[0].{name}="
                    f"{getattr(first, name)!r}: the EMAs of a bank track the same tensors into "
                    f"shadows of one dtype, so {', '.join(_SHARED)} must agree ({remedy})"
                )


def sigma_rels_of(configs: Sequence[Config]) -> list[float | None]:
    """Each config's EDM2 ``sigma_rel`` (its power function's gamma), or None."""
    return [_banks.sigma_rel_of(c) for c in configs]


def checked_step(ema: EMA, step: Step | None) -> tuple[Any, Value, Value]:
    """``ema``'s step, decay and rate for this update, checked as ``EMA.update`` checks them;
    ``step`` is the bank's ``concrete_step`` (already validated) or None."""
    t = _ops.next_step(ema._step, "EMA step") if step is None else step
    if step is not None:
        _rules.check_not_back(t, ema._step)
    decay, rate = host_values(*ema.config._pair_at(t))
    check_decay_value(decay, "the decay", step=t)
    return t, decay, rate


def parts(state: Any, k: int, form: str, version: int) -> list[Any]:
    """The K parts of a bank ``state_dict`` of format ``form``, version ``version``.

    Raises:
        TypeError: not a dict, or ``emas`` not a list. ValueError: another format, version
            or number of EMAs.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
    if state.get("format") != form or state.get("version") != version:
        raise ValueError(
            f"state_dict is format {state.get('format')!r} version {state.get('version')!r}; "
            f"this bank reads {form!r} version {version}"
        )
    found = state.get("emas")
    if not isinstance(found, Sequence) or isinstance(found, str):
        raise TypeError(f"state_dict['emas'] must be a list, got {type(found).__name__}")
    if len(found) != k:
        raise ValueError(f"state_dict['emas'] holds {len(found)} EMAs; this bank has {k}")
    return list(found)


def unaliased(parts: list[Any], emas: Sequence[EMA]) -> list[Any]:
    """``parts`` with every shadow tensor that shares memory with a shadow of ``emas`` copied:
    a bank's own ``state_dict()`` holds its live shadows, and loading member 0 would otherwise
    overwrite what a reordered part 1 still has to load."""
    live = {_address(s) for ema in emas for s in ema._bound.shadows} - {None}
    return [_unaliased(part, live) for part in parts]


def _unaliased(part: Any, live: set[int | None]) -> Any:
    shadows = part.get("shadow") if isinstance(part, Mapping) else None
    if not isinstance(shadows, Mapping) or not any(
        isinstance(v, torch.Tensor) and _address(v) in live for v in shadows.values()
    ):
        return part
    copied = {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in shadows.items()}
    return {**part, "shadow": copied}


def _address(tensor: torch.Tensor) -> int | None:
    """Where a tensor's (local) memory starts, or None for one without memory."""
    found = local(tensor)
    if found.is_meta or found.numel() == 0:
        return None
    return int(found.untyped_storage().data_ptr()) or None
