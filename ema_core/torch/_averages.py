"""What ``EMA`` hands out of its shadows: the average of one tracked tensor (the shadow
itself, or bias-corrected for ``init="zeros"``) and the averages copied into a module's
tensors (``copy_to``, each target checked first: ``check_target``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import array_api_compat.torch as xp
import torch

from ema_core import _core
from ema_core._config import Config, divisor
from ema_core._types import LeafKind
from ema_core.backends.torch._caches import forget_derived
from ema_core.backends.torch._memory import short_memory
from ema_core.torch import _dtensor, _names
from ema_core.torch._interrupts import HeldInterrupts


def read(
    config: Config,
    kind: LeafKind,
    shadow: torch.Tensor,
    weight: float | torch.Tensor,
    step: int | torch.Tensor,
) -> torch.Tensor:
    """The average kept in ``shadow``: the shadow itself, or ``shadow / weight`` for a floating
    tensor under ``init="zeros"`` (``weight``: the EMA's bias-correction weight, or the power
    schedule's at ``step``; 1 without correction)."""
    if kind != "float" or config.init != "zeros":
        return shadow
    weight = divisor(config, weight, step)
    if isinstance(weight, torch.Tensor) and weight.device != shadow.device:
        # a CUDA step over host shadows (``device="cpu"``) leaves the weight on the GPU
        weight = weight.to(shadow.device)
    corrected: torch.Tensor = _core.correct(xp, shadow, weight)
    return corrected


def copy_averages(
    names: Sequence[str],
    shadows: Sequence[torch.Tensor],
    averages: Callable[[], dict[str, torch.Tensor]],
    source: Any,
    optional: frozenset[str] = frozenset(),
    skip: frozenset[str] = frozenset(),
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Write ``averages()`` into the tensors of ``source`` (a module, mapping or pairs) under the
    same names, cast to their dtype; every target is checked against its shadow first
    (``check_target``), so nothing is written when one is refused. The ``optional`` names
    (non-persistent buffers) may be missing from a mapping or pairs (``model.state_dict()``
    leaves them out): skipped there. The ``skip`` names are neither checked nor written
    (integer buffers kept at their value from construction: ``non_float="freeze"``). An
    ``aliases`` name (alias -> tracked name: a tied weight's other name) that ``source`` holds
    as a tensor of its own (a cloned state dict, an untied model) gets its tracked name's
    average too."""
    found = _names.named_tensors(source, "average", "copy_to(module_or_named_tensors)")
    targets = {name: tensor for name, tensor, _, _ in found}
    for _, tensor, _, raw in found:  # a model's own ``module`` child in a mapping's names
        key = raw
        targets.setdefault(key, tensor)
        while key.startswith("module."):
            key = key.removeprefix("module.")
            targets.setdefault(key, tensor)
    lax = optional if not isinstance(source, torch.nn.Module) else frozenset()
    for name, shadow in zip(names, shadows, strict=True):
        if (name not in targets and name in lax) or name in skip:
            continue
        check_target(name, targets.get(name), shadow)
    shadow_of = dict(zip(names, shadows, strict=True))
    extra = [
        (alias, name)
        for alias, name in (aliases or {}).items()
        if alias in targets
        and name in shadow_of
        and name not in skip
        and targets[alias] is not targets.get(name)  # tied in the target too: written once
    ]
    for alias, name in extra:
        check_target(alias, targets[alias], shadow_of[name])
    values = averages()
    with torch.no_grad(), HeldInterrupts():
        for name, average in values.items():
            if name in targets and name not in skip:  # optional ones the source may lack
                _dtensor.copy_into(targets[name], average)
        for alias, name in extra:
            _dtensor.copy_into(targets[alias], values[name])
        forget_derived()  # casts / parametrized weights of the old ones, cached in a region


def load_shadows(
    names: Sequence[str], shadows: Sequence[torch.Tensor], loaded: dict[str, torch.Tensor]
) -> None:
    """Copy each ``loaded`` tensor (checked by ``_state.check``) into the shadow of its name;
    a full tensor fills a DTensor shadow's shard from this rank's copy (no collective)."""
    for name, shadow in zip(names, shadows, strict=True):
        if name in loaded:
            _dtensor.copy_into(shadow, loaded[name])


def check_target(name: str, target: torch.Tensor | None, average: torch.Tensor) -> None:
    """Raise unless ``copy_to`` can write ``average`` into ``target`` whole and exactly
    (checked for every name before the first write).

    Raises:
        ValueError: no target, another shape, or no writable data (meta, sparse, expanded,
            inference-mode outside ``torch.inference_mode``, storage freed).
        TypeError: a float average into an integer target, a complex one into a real target,
            an integer one into another dtype.
    """
    where = f"copy_to: {name!r}"
    if target is None or target.shape != average.shape:
        got = "no tensor" if target is None else f"shape {tuple(target.shape)}"
        raise ValueError(f"{where} with shape {tuple(average.shape)} has {got} there")
    if _dtensor.is_dtensor(average):  # a plain average fills a DTensor's shard (copy_into)
        _dtensor.check_layout(
            f"{where}: the target",
            target,
            average,
            "the average",
            "copy into a model sharded the same way, or gather average[name].full_tensor() "
            "on every rank",
        )
    floating = average.is_floating_point() or average.is_complex()
    exact = target.dtype == average.dtype or (
        floating
        and (target.is_complex() or (target.is_floating_point() and not average.is_complex()))
    )
    if not exact:
        raise TypeError(
            f"{where}: an average of dtype {average.dtype} cannot be written into "
            f"a tensor of dtype {target.dtype} without losing values"
        )
    inference = target.is_inference() and not torch.is_inference_mode_enabled()
    if target.is_meta or target.layout != torch.strided or expanded(target) or inference:
        raise ValueError(
            f"{where} must be a writable dense tensor with data, got layout {target.layout} on "
            f"device {target.device}, stride {target.stride()}, inference={target.is_inference()}"
        )
    plain = type(target) in (torch.Tensor, torch.nn.Parameter)  # a DTensor: its shard's
    if plain and (why := short_memory(target)) is not None:
        raise ValueError(f"{where}: {why}")


def expanded(tensor: torch.Tensor) -> bool:
    """Whether some elements of ``tensor`` share memory (a stride 0 over a dimension of more
    than one element, as ``expand`` makes): torch refuses to write into it."""
    if tensor.layout != torch.strided:
        return False
    return any(st == 0 and n > 1 for st, n in zip(tensor.stride(), tensor.shape, strict=True))
