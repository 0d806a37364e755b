"""Which tensors an ``EMA`` tracks, under which names, and whether each is averaged or copied.

Names are those of ``module.named_parameters()`` / ``named_buffers()`` without the
wrappers' segments (``_prefixes``: ``module.`` of DistributedDataParallel, every
``_orig_mod.`` of ``torch.compile`` and ``_checkpoint_wrapped_module.`` of activation
checkpointing), so a plain, a DDP-wrapped, a compiled and a checkpointed model track the same
names. ``_watch.Watch`` notices when the module has since replaced a tracked tensor or
moved its data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch

from ema_core._arguments import BUFFERS
from ema_core._types import LeafKind
from ema_core.backends.torch._memory import short_memory
from ema_core.backends.torch._pairs import PLAIN
from ema_core.torch import _dtensor
from ema_core.torch._filters import filter_hint, matcher
from ema_core.torch._prefixes import PREFIXES, namer, strip_all
from ema_core.torch._tied_names import other_names

#: What happens to floating buffers: copied, averaged like parameters, or not tracked.
BufferPolicy: TypeAlias = Literal["copy", "average", "skip"]
#: A name filter: a glob pattern, several patterns (matched against the stripped name and the
#: wrapped model's own), or a predicate on the (stripped) name.
NameFilter: TypeAlias = "str | Iterable[str] | Callable[[str], bool] | None"
BUFFER_POLICIES = BUFFERS


@dataclass(frozen=True)
class Tracked:
    """One tracked tensor: its stripped name, the live tensor, averaged or copied, and where
    the module holds it (``raw``: its unstripped name; ``is_buffer``)."""

    name: str
    tensor: torch.Tensor
    kind: LeafKind
    raw: str = ""
    is_buffer: bool = False


def named_tensors(
    source: Any, buffers: str, where: str, prefix: str | None = None
) -> list[tuple[str, Any, bool, str]]:
    """``(stripped name, tensor, is_buffer, raw name)`` of a module, a mapping or pairs."""
    found: list[tuple[Any, Any, bool]]
    if isinstance(source, torch.nn.Module):
        # the module paths, also under an activation-checkpoint wrapper at the root, whose own
        # named_parameters() drops its part (names no walk from the root can follow)
        wrapper = {c.__name__ for c in type(source).__mro__} & {"ActivationWrapper"}
        listed = torch.nn.Module.named_parameters if wrapper else type(source).named_parameters
        found = [(n, t, False) for n, t in listed(source)]
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
    raw = [_name(n, where) for n, _, _ in found]
    if isinstance(source, torch.nn.Module):
        names = list(map(namer(source, prefix), raw))  # prefix: the one the EMA decided
    else:
        names = strip_all(raw)
    pairs = zip(names, found, strict=True)
    return [(name, _tensor(t, n, where), b, n) for name, (n, t, b) in pairs]


def transient_buffers(
    root: torch.nn.Module | None, names: Iterable[str], prefix: str | None = None
) -> frozenset[str]:
    """The tracked ``names`` that are non-persistent buffers of ``root``
    (``register_buffer(..., persistent=False)``, such as rotary ``inv_freq``): tracked and
    swapped like any buffer, but ``module.state_dict()`` leaves them out, so an export leaves
    them out too and a mapping target may lack them. Empty for an EMA of named tensors."""
    if root is None:
        return frozenset()
    tracked = set(names)
    found = set()
    name_of = namer(root, prefix)
    for path, module in root.named_modules(remove_duplicate=False):
        for local in getattr(module, "_non_persistent_buffers_set", ()):
            name = name_of(f"{path}.{local}" if path else local)
            if name in tracked:
                found.add(name)
    return frozenset(found)


def collect(
    source: Any, buffers: Any, include: Any, exclude: Any, where: str = "module_or_named_tensors"
) -> list[Tracked]:
    """The tracked tensors of ``source`` after the filters; validated, in a stable order.

    Raises:
        ValueError: two tensors with one name, none left, or one on the meta device.
        TypeError: a sparse or quantized tensor.
    """
    if buffers not in BUFFER_POLICIES:
        raise ValueError(f"buffers must be one of {list(BUFFER_POLICIES)}, got {buffers!r}")
    keep = matcher(include, "include", default=True)
    drop = matcher(exclude, "exclude", default=False)
    tracked: list[Tracked] = []
    seen: dict[str, None] = {}
    found = named_tensors(source, buffers, where)
    others = other_names(source, [name for name, *_ in found], include, exclude)
    for name, tensor, is_buffer, raw in found:
        if name in seen:
            raise ValueError(f"{where} has two tensors named {name!r} (after removing {PREFIXES})")
        seen[name] = None
        every = [(name, raw), *others.get(name, ())]
        if any(keep(*n) for n in every) and not any(drop(*n) for n in every):
            check_materialized(name, tensor, where)
            kind = checked_kind(name, tensor, is_buffer, buffers, where)
            tracked.append(Tracked(name, tensor, kind, raw, is_buffer))
    if not tracked:
        raise ValueError(
            f"{where} has no tensors to track after include={include!r}, "
            f"exclude={exclude!r}, buffers={buffers!r}{filter_hint(include, exclude, list(seen))}"
        )
    return tracked


def check_materialized(name: str, tensor: torch.Tensor, where: str) -> None:
    """Raise for a tensor without values: on the meta device, or an empty DTensor shard, or
    a plain tensor whose storage was freed (torch's own fused ops would read unowned memory).
    A sparse or quantized tensor (no dense values to blend or copy) is a ``TypeError``."""
    if torch.nn.parameter.is_lazy(tensor):
        raise ValueError(
            f"{where}[{name!r}] is not materialized yet (a lazy module, such as nn.LazyLinear, "
            "before its first forward): build the EMA after a first forward, or leave it out "
            "with exclude="
        )
    local = _dtensor.local(tensor)
    if local.layout != torch.strided or local.is_quantized:
        raise TypeError(
            f"{where}[{name!r}] is a {local.layout} tensor of dtype {local.dtype}; only dense "
            "(torch.strided) tensors of bool, integer or floating dtypes can be tracked: "
            "convert it (.to_dense(), .dequantize()) or leave it out with exclude="
        )
    if local.is_meta:
        raise ValueError(
            f"{where}[{name!r}] is on the meta device (it has no values to average): build or "
            "update the EMA after materializing the model (module.to_empty(...) and "
            "initialization)"
        )
    if type(tensor) in PLAIN and (why := short_memory(tensor)) is not None:
        raise ValueError(f"{where}[{name!r}]: {why}")


def kind_of(tensor: torch.Tensor, is_buffer: bool, buffers: str) -> LeafKind:
    """``"float"`` (averaged) or ``"exact"`` (copied: integers, bools, copied buffers)."""
    floating = tensor.is_floating_point() or tensor.is_complex()
    if not floating or (is_buffer and buffers == "copy"):
        return "exact"
    return "float"


def checked_kind(
    name: str, tensor: torch.Tensor, is_buffer: bool, buffers: str, where: str
) -> LeafKind:
    """``kind_of``, refusing a 1-byte float (float8) to average: torch has no arithmetic in it,
    so its update would fail after other tensors were written (copied ones are fine).

    Raises:
        TypeError: a float8 tensor that would be averaged, named.
    """
    kind = kind_of(tensor, is_buffer, buffers)
    if kind == "float" and tensor.dtype.itemsize == 1:
        raise TypeError(
            f"{where}[{name!r}] has dtype {tensor.dtype}: a 1-byte float (float8) cannot be "
            "averaged (torch has no arithmetic in it); leave it out with exclude= (a frozen "
            "base needs no EMA) or track a wider copy"
        )
    return kind


def lookup(
    root: torch.nn.Module | None, tracked: list[Tracked], buffers: str, prefix: str | None = None
) -> list[Tracked]:
    """``tracked`` with each tensor as ``root`` holds it now under the same name (the same
    objects for named tensors), its kind recomputed.

    Raises:
        ValueError: a tracked name is gone from the module, or its tensor is on the meta device.
    """
    if root is None:
        now = {t.name: (t.tensor, t.is_buffer, t.raw) for t in tracked}
    else:
        found = named_tensors(root, buffers, "module", prefix)  # the prefix decided at build
        now = {name: (t, b, raw) for name, t, b, raw in found}
    out = []
    for t in tracked:
        if t.name not in now:
            raise ValueError(
                _tied_since(root, t.name, now, prefix)
                or f"the module no longer has the tracked tensor {t.name!r}; build a new EMA "
                "for a module whose tensors were removed"
            )
        tensor, is_buffer, raw = now[t.name]
        check_materialized(t.name, tensor, "the module")
        kind = checked_kind(t.name, tensor, is_buffer, buffers, "the module")
        out.append(Tracked(t.name, tensor, kind, raw, is_buffer))
    return out


def _tied_since(
    root: torch.nn.Module | None, name: str, now: Mapping[str, Any], prefix: str | None
) -> str:
    """The refusal when ``name`` is still in ``root`` as another name of a tensor tracked
    under its first name (weights tied after the EMA was built): '' otherwise."""
    if root is None:
        return ""
    name_of = namer(root, prefix)
    try:  # a module's own state_dict may take no keep_vars, or fail: no note then
        held = {name_of(k): v for k, v in root.state_dict(keep_vars=True).items()}
    except Exception:
        return ""
    if name not in held:
        return ""
    first = next((n for n, (t, _, _) in now.items() if t is held[name]), None)
    if first is None:
        return ""
    return (
        f"the tracked tensor {name!r} is now the tensor of {first!r} (weights tied after the "
        "EMA was built, as model.tie_weights() ties them): build the EMA after tying, which "
        "tracks the tensor once"
    )


def _pair(item: Any, where: str) -> tuple[Any, Any]:
    if not (isinstance(item, tuple) and len(item) == 2):
        into = where.startswith("copy_to")  # a state_dict holds the buffers copy_to writes too
        other = "model.state_dict()" if into else "model.named_parameters()"
        call = "copy_to(model)" if into else "EMA(model)"
        tensor = isinstance(item, torch.Tensor)
        hint = f": pass the module itself ({call}) or {other}" if tensor else ""
        raise TypeError(f"{where} must yield (name, tensor) pairs, got {type(item).__name__}{hint}")
    return item


def _name(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{where}: names must be str, got {type(name).__name__} {name!r}")
    return name


def _tensor(tensor: Any, name: str, where: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{where}[{name!r}] must be a torch.Tensor, got {type(tensor).__name__}")
    return tensor
