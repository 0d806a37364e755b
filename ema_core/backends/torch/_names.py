"""Which tensors an ``EMA`` tracks, under which names, and whether each is averaged or copied.

Names are those of ``module.named_parameters()`` / ``named_buffers()`` with the wrapper
prefixes ``module.`` (DistributedDataParallel) and ``_orig_mod.`` (``torch.compile``) removed
from the front, so a plain, a DDP-wrapped and a compiled model track the same names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch

from ema_core._types import LeafKind

#: Wrapper prefixes removed from the front of every name (repeatedly: DDP inside compile).
PREFIXES = ("module.", "_orig_mod.")
#: What happens to floating buffers: copied, averaged like parameters, or not tracked.
BufferPolicy: TypeAlias = Literal["copy", "average", "skip"]
#: A name filter: a glob pattern, several patterns, or a predicate on the (stripped) name.
NameFilter: TypeAlias = "str | Iterable[str] | Callable[[str], bool] | None"
BUFFER_POLICIES = ("copy", "average", "skip")


@dataclass(frozen=True)
class Tracked:
    """One tracked tensor: its stripped name, the live tensor, and averaged or copied."""

    name: str
    tensor: torch.Tensor
    kind: LeafKind


def strip(name: str) -> str:
    """``name`` without leading ``module.`` / ``_orig_mod.`` prefixes."""
    while name.startswith(PREFIXES):
        name = name.split(".", 1)[1]
    return name


def named_tensors(source: Any, buffers: BufferPolicy, where: str) -> list[tuple[str, Any, bool]]:
    """``(stripped name, tensor, is_buffer)`` of a module, a mapping or an iterable of pairs."""
    found: list[tuple[Any, Any, bool]]
    if isinstance(source, torch.nn.Module):
        found = [(n, t, False) for n, t in source.named_parameters()]
        if buffers != "skip":
            found += [(n, t, True) for n, t in source.named_buffers()]
    elif isinstance(source, Mapping):
        found = [(n, t, False) for n, t in source.items()]
    elif isinstance(source, Iterable) and not isinstance(source, (str, torch.Tensor)):
        found = [(*_pair(item, where), False) for item in source]
    else:
        raise TypeError(
            f"{where} must be an nn.Module, a mapping name -> tensor or an iterable of "
            f"(name, tensor) pairs, got {type(source).__name__}"
        )
    return [(strip(_name(n, where)), _tensor(t, n, where), b) for n, t, b in found]


def collect(
    source: Any, buffers: Any, include: Any, exclude: Any, where: str = "module_or_named_tensors"
) -> list[Tracked]:
    """The tracked tensors of ``source`` after the filters; validated, in a stable order."""
    if buffers not in BUFFER_POLICIES:
        raise ValueError(f"buffers must be one of {list(BUFFER_POLICIES)}, got {buffers!r}")
    keep = _matcher(include, "include", default=True)
    drop = _matcher(exclude, "exclude", default=False)
    tracked: list[Tracked] = []
    seen: set[str] = set()
    for name, tensor, is_buffer in named_tensors(source, buffers, where):
        if name in seen:
            raise ValueError(f"{where} has two tensors named {name!r} (after removing {PREFIXES})")
        seen.add(name)
        if keep(name) and not drop(name):
            tracked.append(Tracked(name, tensor, _kind(tensor, is_buffer, buffers)))
    if not tracked:
        raise ValueError(
            f"{where} has no tensors to track after include={include!r}, "
            f"exclude={exclude!r}, buffers={buffers!r}"
        )
    return tracked


def _kind(tensor: torch.Tensor, is_buffer: bool, buffers: str) -> LeafKind:
    floating = tensor.is_floating_point() or tensor.is_complex()
    if not floating or (is_buffer and buffers == "copy"):
        return "exact"
    return "float"


def _matcher(rule: Any, name: str, default: bool) -> Callable[[str], bool]:
    """A predicate on names from a glob, a list of globs or a callable (``default`` for None)."""
    if rule is None:
        return lambda _: default
    if isinstance(rule, str):
        return lambda n: fnmatch.fnmatchcase(n, rule)
    if callable(rule):
        return lambda n: bool(rule(n))
    if isinstance(rule, Iterable):
        patterns = list(rule)
        if all(isinstance(p, str) for p in patterns):
            return lambda n: any(fnmatch.fnmatchcase(n, p) for p in patterns)
    raise TypeError(
        f"{name} must be None, a glob pattern, a list of patterns or a callable name -> bool, "
        f"got {rule!r}"
    )


def _pair(item: Any, where: str) -> tuple[Any, Any]:
    if not (isinstance(item, tuple) and len(item) == 2):
        raise TypeError(f"{where} must yield (name, tensor) pairs, got {type(item).__name__}")
    return item


def _name(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{where}: names must be str, got {type(name).__name__} {name!r}")
    return name


def _tensor(tensor: Any, name: str, where: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{where}[{name!r}] must be a torch.Tensor, got {type(tensor).__name__}")
    return tensor
