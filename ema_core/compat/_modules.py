"""Checks for the torch-module drop-in (MMEditing): the tensors of two modules, or of a module
and a state dict, must pair up by name before the first one is copied. Imports torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def check_module(model: Any, name: str = "model") -> torch.nn.Module:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``module.state_dict(keep_vars=True)`` (not a module's extra state)."""
    state = module.state_dict(keep_vars=True)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_pairs(mine: Mapping[str, Any], theirs: Mapping[str, Any], what: str) -> None:
    """``theirs`` must name exactly the tensors in ``mine``, each a dense tensor with data, of
    the same shape and the same kind of dtype (floating, complex, integer or bool), so that
    ``mine[k].copy_(theirs[k])`` can neither broadcast, truncate nor fail halfway. Entries of
    ``mine`` that are not tensors (a module's extra state) are left to torch."""
    if set(mine) != set(theirs):
        missing, extra = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
        raise ValueError(
            f"{what} does not match the averaged module: missing {missing}, extra {extra}"
        )
    for key, ours in mine.items():
        value, where = theirs[key], f"{what}[{key!r}]"
        if not isinstance(ours, torch.Tensor):
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where} must be a torch.Tensor, got {type(value).__name__}")
        if value.is_meta or value.layout != torch.strided:
            raise ValueError(
                f"{where} must be a dense tensor with data, got layout {value.layout} on "
                f"device {value.device}"
            )
        if tuple(value.shape) != tuple(ours.shape):
            raise ValueError(
                f"{where} has shape {tuple(value.shape)} but the averaged module's has "
                f"{tuple(ours.shape)}; they must be equal"
            )
        if _kind(value.dtype) != _kind(ours.dtype):
            raise TypeError(
                f"{where} has dtype {value.dtype}, the averaged module's {ours.dtype}: "
                f"a {_kind(value.dtype)} tensor cannot be copied into a {_kind(ours.dtype)} one"
            )


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "floating"
    return "bool" if dtype == torch.bool else "integer"
