"""Checkpoints of an ``EMA``: a plain dict of tensors, ints and strings.

It loads with ``torch.load(..., weights_only=True)``: the config is stored as text (its
``repr`` without object addresses, ``_config_text.config_text``) and compared on load, not
unpickled. ``check`` validates a checkpoint completely (header, counter, weight, every shadow's
type, layout, device, shape and dtype) before ``EMA.load_state_dict`` writes anything, and
loading never touches the live model. The counter may be any integer dtype (an EMA stepped with
an int32 or uint8 device tensor saves it as it is) and is read once on load, wherever it lives.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ema_core._checks import name_differences
from ema_core._config import Config
from ema_core._config_text import config_differences, config_text, stable_text
from ema_core._read_checks import check_zeros_read
from ema_core.backends.torch._memory import short_memory
from ema_core.torch import _dtensor

FORMAT = "ema_core.torch.EMA"
VERSION = 1
KEYS = ("format", "version", "step", "weight", "config", "shadow")
#: Unsigned dtypes torch gives few operations (no ``<`` on the CPU): a counter stored in one
#: (a numpy or JAX state's file) is held as a Python int.
_BARE_UNSIGNED = tuple(
    getattr(torch, name) for name in ("uint16", "uint32", "uint64") if hasattr(torch, name)
)
_INTEGERS = tuple(
    getattr(torch, name)
    for name in ("uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64")
    if hasattr(torch, name)
)


def pack(
    names: Sequence[str],
    shadows: Sequence[torch.Tensor],
    step: int | torch.Tensor,
    weight: float | torch.Tensor,
    config: str,
) -> dict[str, Any]:
    """The checkpoint dict; shadow tensors are returned as they are (``torch.save`` copies)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "step": _tensor(step, torch.int64),
        "weight": _tensor(weight, torch.float64),
        "config": config,
        "shadow": dict(zip(names, shadows, strict=True)),
    }


def check(
    state: Any,
    names: Sequence[str],
    shadows: Sequence[torch.Tensor],
    config: str,
    strict: bool,
) -> dict[str, torch.Tensor]:
    """Validate ``state`` against this EMA; return the shadow tensors to load, by name.

    Raises:
        TypeError: ``state`` or one of its entries has the wrong type.
        ValueError: wrong format or version; with ``strict``, different names or config
            (buffer policy included); always, a negative, meta or DTensor counter, a weight
            outside [0, 1] or NaN, a meta or sparse shadow, a DTensor shadow for a plain one,
            a shadow whose storage was freed, a shape or dtype that differs from the shadow's.
    """
    _check_header(state)
    if strict and stable_text(state["config"]) != config:
        where = ("in this EMA", "in state_dict")
        raise ValueError(
            f"state_dict['config'] differs from this EMA's config: "
            f"{config_differences(config, state['config'], where)}; build the EMA with the same "
            f"config, or pass strict=False to keep this EMA's (state_dict['config'] is "
            f"{state['config']!r})"
        )
    saved = state["shadow"]
    if not isinstance(saved, Mapping):
        raise TypeError(f"state_dict['shadow'] must be a dict, got {type(saved).__name__}")
    _check_names(list(saved), names, strict)
    ours = dict(zip(names, shadows, strict=True))
    loaded = {n: t for n, t in saved.items() if n in ours}
    for name, tensor in loaded.items():
        _check_tensor(name, tensor, ours[name])
    return loaded


def check_load(
    state: Mapping[str, Any],
    names: Sequence[str],
    shadows: Sequence[torch.Tensor],
    config: Config,
    strict: bool,
) -> dict[str, torch.Tensor]:
    """``check`` against an EMA of ``config``, and a state made with ``init="zeros"`` (raw
    shadows, weight < 1) refused by an EMA of another init, whose reads would take its shadows
    for averages (``_read_checks.check_zeros_read``, as the stateless ``average`` refuses it)."""
    loaded = check(state, names, shadows, config_text(config), strict)
    weight = float(unpack_step(state)[1])
    check_zeros_read(
        types.SimpleNamespace(weight=weight),
        config,
        "state_dict",
        "load it into an EMA built with that config",
        "state_dict['weight']",
    )
    return loaded


def unpack_step(state: Mapping[str, Any]) -> tuple[int | torch.Tensor, float | torch.Tensor]:
    """The counter and bias-correction weight as the EMA held them: Python numbers when stored
    on the host as int64 (what ``pack`` writes for a Python int), a host counter of another
    integer dtype (an EMA stepped with a uint8 or int32 CPU tensor) as a 0-d tensor of that
    dtype, which keeps stopping at its dtype's largest value, and device ones as tensors."""
    step, weight = state["step"], state["weight"]
    if step.device.type != "cpu":
        return step.clone(), weight.clone()
    if step.dtype != torch.int64 and step.dtype not in _BARE_UNSIGNED:
        return step.clone(), float(weight)
    return int(step), float(weight)  # (uint16/32/64 from another framework's file: an int)


def _tensor(value: int | float | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return torch.tensor(value, dtype=dtype, device="cpu")  # not torch.set_default_device's


def _check_header(state: Any) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise ValueError(f"state_dict is missing {missing}; expected the keys {list(KEYS)}")
    form, version = state["format"], state["version"]
    if not (
        isinstance(form, str) and form == FORMAT and type(version) is int and version == VERSION
    ):
        raise ValueError(
            f"state_dict is format {state['format']!r} version {state['version']!r}; this EMA "
            f"reads {FORMAT!r} version {VERSION}"
        )
    if not isinstance(state["config"], str):
        raise TypeError(f"state_dict['config'] must be a str, got {type(state['config']).__name__}")
    step = _number(state, "step", _INTEGERS, "integer")
    if step < 0:
        raise ValueError(f"state_dict['step'] must be >= 0, got {step}")
    weight = _number(state, "weight", (torch.float32, torch.float64), "float32 or float64")
    if not 0.0 <= weight <= 1.0:  # NaN fails too
        raise ValueError(
            f"state_dict['weight'] (the bias-correction weight) must be in [0, 1], got {weight}"
        )


def _number(state: Mapping[str, Any], key: str, dtypes: Sequence[torch.dtype], what: str) -> Any:
    """The value of the 0-d tensor ``state[key]`` (one read, on any device)."""
    value = state[key]
    if not (isinstance(value, torch.Tensor) and value.ndim == 0 and value.dtype in dtypes):
        got = (
            f"shape {tuple(value.shape)} dtype {value.dtype}"
            if isinstance(value, torch.Tensor)
            else f"{type(value).__name__} {value!r}"
        )
        raise TypeError(f"state_dict[{key!r}] must be a 0-d {what} tensor, got {got}")
    if value.is_meta or _dtensor.is_dtensor(value):
        raise ValueError(f"state_dict[{key!r}] must be a plain tensor with a value, got {value!r}")
    return value.item()


def _check_names(saved: list[str], names: Sequence[str], strict: bool) -> None:
    missing, unexpected = name_differences(names, saved)
    if strict and (missing or unexpected):
        raise ValueError(
            f"state_dict['shadow'] does not match this EMA: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]} ({len(missing)} and {len(unexpected)} in all); pass strict=False "
            "to load the names both have"
        )


def _check_tensor(name: str, tensor: Any, ours: torch.Tensor) -> None:
    where = f"state_dict['shadow'][{name!r}]"
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{where} must be a tensor, got {type(tensor).__name__}")
    if tensor.is_meta or tensor.layout != torch.strided:
        raise ValueError(
            f"{where} must be a dense tensor with data, got layout {tensor.layout} on device "
            f"{tensor.device}"
        )
    if _dtensor.is_dtensor(tensor) and not _dtensor.is_dtensor(ours):
        raise ValueError(
            f"{where} is a DTensor (sharded) and this EMA's shadow a plain tensor: save it "
            "with full_state_dict() to load it here"
        )
    if _dtensor.is_dtensor(tensor):
        _dtensor.check_layout(
            where,
            tensor,
            ours,
            "this EMA's shadow",
            "dcp.load into ema.state_dict() (any sharding), or load a full_state_dict()",
        )
    elif (why := short_memory(tensor)) is not None:
        raise ValueError(f"{where}: {why}")
    # a complex32 shadow (the EMAs of before 2026-12-07 kept one) widens exactly into ours
    legacy = tensor.dtype == torch.complex32 and ours.dtype == torch.complex64
    if tensor.shape != ours.shape or (tensor.dtype != ours.dtype and not legacy):
        raise ValueError(
            f"{where} has shape {tuple(tensor.shape)} dtype {tensor.dtype}; this EMA's shadow "
            f"has shape {tuple(ours.shape)} dtype {ours.dtype}"
        )
