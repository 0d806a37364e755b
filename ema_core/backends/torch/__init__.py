"""torch leaf kernels (below the API): fused in-place updates with no host sync.

``guard`` and ``update_leaves`` are the backend protocol the core calls (``ema_core.backends``);
``ema_update`` on tensors lands in ``update_leaves``, the ``EMA`` class (``ema_core.torch``) in
``_routes`` through its store. How the pieces fit:

* ``_plan``: the leaf pairs grouped once into a ``Plan`` (by kind, device, shadow and params
  dtypes; DTensors as their local shards), each group one fused call.
* ``_routes``: one route per group of a plan, picked per update (the route table is in its
  docstring): foreach ``lerp``, the host engine on the CPU, the CUDA blend, the core for the rest.
  ``_prewrite`` holds what a route checks before its first write, and the reads a group keeps.
* ``_foreach``: the fused ops every route uses (per-tensor loops where ``torch._foreach_*`` is
  missing).
* ``_host``: CPU tensors handed to the host engine (``ema_core.backends.host``) as numpy views,
  which ``_memory`` makes from data addresses (and checks that a storage still holds them).
* ``_cuda``: the one-pass blend of a wide shadow over narrow params on CUDA (blocked torch ops,
  or the Triton kernel of ``_triton_kernel``, launched over the ``Launch`` that ``_launch``
  prepares once per group).
* ``_pairs``: whole-list reads of many (shadow, params) pairs (shapes, devices, dtypes, sizes,
  addresses), for the mixed routes' checks, and the ``Key`` of the pairs that the host
  engine's views and the Triton launches are kept under.
* ``_caches``: torch's caches keyed on tensors or modules (autocast's casts,
  ``parametrize.cached()``'s weights), forgotten by every write into a model's own tensors.
* ``_finite``: DTensors told apart without importing torch.distributed, and
  ``finite_stand_ins``, ``guard_finite``'s one answer on every rank of a sharded tensor
  (the backend member the API calls, and the ``EMA`` class's).

``leaf_signature`` / ``same_signature`` tell the stateless call's plan cache
(``ema_core._stateless``) whether tensors it checked before are still laid out as they were;
``update_leaves`` keeps its plan in the ``memo`` that cache hands it.

The user-facing classes sit above the API in ``ema_core.torch``; their old names here
(``ema_core.backends.torch.EMA`` ...) still work and are looked up there on first use
(``__getattr__`` below), never by the kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from operator import attrgetter
from typing import Any, NamedTuple

import torch

from ema_core._paths import Path, path_str
from ema_core._types import LeafKind, Namespace, NonFloatPolicy, Value
from ema_core.backends.torch import _memory, _routes
from ema_core.backends.torch._finite import finite_stand_ins
from ema_core.backends.torch._pairs import PLAIN as _PLAIN

__all__ = [
    "check_storage",
    "finite_stand_ins",
    "guard",
    "leaf_signature",
    "same_signature",
    "update_leaves",
]

#: ``update_leaves`` takes a ``memo`` from the plan cache (``ema_core._stateless``).
PLAN_MEMO = True
#: ``update_leaves`` takes ``names`` (the two roots and the leaves' paths) for its errors.
NAMES_LEAVES = True

#: Names that used to live here and moved above the API to ``ema_core.torch``.
_MOVED = frozenset({"EMA", "ddp_ema", "full_state_dict"})


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """``torch.no_grad``: shadows never join the autograd graph of the params."""
    with torch.no_grad():
        yield


def update_leaves(
    xp: Namespace,
    shadows: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    kinds: Sequence[LeafKind],
    decay: Value,
    rate: Value,
    *,
    non_float: NonFloatPolicy,
    writes: Sequence[bool],
    memo: dict[Any, Any] | None = None,
    names: tuple[str, str, Sequence[Path]] | None = None,
) -> list[torch.Tensor]:
    """Blend float leaves and copy exact ones, grouped into fused calls (``_routes``).

    ``writes[i]`` updates ``shadows[i]`` in place and returns it; otherwise a new tensor is
    returned and ``shadows[i]`` is left alone. Integer leaves follow ``non_float``: "copy" takes
    the params on every call, also one whose decay is 1 (a host decay of 1 returns each float
    shadow itself); the others leave them as they are.

    ``memo`` (from the plan cache, only for leaves it has just found unchanged) keeps the plan
    between calls, made over aliases of the tensors (``detach``: same memory, no reference to
    the caller's objects, whose death then frees the cache entry); kept only where every moved
    shadow is a plain tensor written in place (``copy=True`` makes new tensors each call).

    ``names`` (the shadows' root, the params' root, the leaves' paths) names a refused leaf in
    the caller's terms (``params['z']``); without it a leaf is named by position (``params[1]``).
    """
    _check_meta_decay(decay, shadows)
    decay, rate = _routes.host_values(decay, rate)
    skip = isinstance(decay, float) and decay == 1.0
    plan = None if memo is None else memo.get(skip)
    if plan is not None:
        _routes.apply(xp, plan, decay, rate, kept=True)
        return list(shadows)
    move = [non_float == "copy" if kind == "exact" else not skip for kind in kinds]
    if names is None:
        names = ("shadow", "params", [(("index", i),) for i in range(len(shadows))])
    check_storage(shadows, names[2], names[0], move)
    check_storage(params, names[2], names[1], move)
    out = [s if w or not m else s.clone() for s, w, m in zip(shadows, writes, move, strict=True)]
    if not any(move):
        return out
    moved = [i for i, m in enumerate(move) if m]
    keep = memo is not None and all(writes[i] and type(out[i]) is torch.Tensor for i in moved)
    alias = torch.Tensor.detach if keep else _same
    plan = _routes.make_plan(
        [alias(out[i]) for i in moved], [alias(params[i]) for i in moved], [kinds[i] for i in moved]
    )
    if keep and memo is not None:
        memo[skip] = plan
    _routes.apply(xp, plan, decay, rate)
    return out


def _check_meta_decay(decay: Value, shadows: Sequence[torch.Tensor]) -> None:
    """A meta ``decay`` (no data) blends only meta leaves: with others it is a ``ValueError``
    before any write (torch would raise ``NotImplementedError`` copying it, maybe after a first
    group of leaves was copied)."""
    if isinstance(decay, torch.Tensor) and decay.is_meta:
        real = next((t for t in shadows if not t.is_meta), None)
        if real is not None:
            raise ValueError(
                f"decay is a meta tensor (it holds no value: given as one, or computed from a "
                f"meta step) but the leaves are on {real.device}; pass a Python float or int "
                "step, or a 0-d tensor on the leaves' device"
            )


def check_storage(
    leaves: Sequence[Any], paths: Sequence[Path], name: str, move: Sequence[bool] | None = None
) -> None:
    """``ValueError`` naming (by path) the first plain tensor whose storage was freed or shrunk
    (``untyped_storage().resize_``): copying or blending it would read memory it does not own.
    ``init`` and ``average`` check every leaf; ``update_leaves`` those it moves (``move``), on
    the calls the plan cache did not find (a freed storage moves the data pointer)."""
    for i, (leaf, path) in enumerate(zip(leaves, paths, strict=True)):
        if move is not None and not move[i]:
            continue
        if type(leaf) in _PLAIN and (why := _memory.short_memory(leaf)) is not None:
            raise ValueError(f"{path_str(name, path)}: {why}")


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


_DTYPE = attrgetter("dtype")


class Signature(NamedTuple):
    """What the checks read from a list of tensors: aliases (same storage, offset, sizes and
    strides: ``is_set_to``), data pointers (a storage resized in place keeps its object but
    moves its data, which the host engine's views would still point at), the storages and
    their sizes in bytes (``resize_`` to fewer bytes may keep the address, and the leaf would
    then reach past its storage's end), dtypes, inference flags and whether inference mode
    was on."""

    aliases: list[torch.Tensor]
    pointers: list[int]
    storages: list[torch.UntypedStorage]
    nbytes: list[int]
    dtypes: list[torch.dtype]
    inference: list[bool]
    inference_mode: bool


def leaf_signature(leaves: Sequence[torch.Tensor]) -> Signature | None:
    """The layout of plain (``Tensor`` / ``Parameter``) tensors, or None where it cannot be
    kept: other types (DTensor, fake tensors), meta tensors, tensors without storage (a
    ``torch.func`` transform's), or inside ``torch.compile``."""
    if torch.compiler.is_compiling() or not set(map(type, leaves)) <= _PLAIN:
        return None
    if any(map(attrgetter("is_meta"), leaves)):
        return None
    try:
        pointers = list(map(torch.Tensor.data_ptr, leaves))
    except RuntimeError:  # a torch.func transform's tensors (type Tensor) have no storage
        return None
    storages = list(map(torch.Tensor.untyped_storage, leaves))
    return Signature(
        list(map(torch.Tensor.detach, leaves)),
        pointers,
        storages,
        list(map(torch.UntypedStorage.nbytes, storages)),
        list(map(_DTYPE, leaves)),
        list(map(torch.Tensor.is_inference, leaves)),
        torch.is_inference_mode_enabled(),
    )


def same_signature(kept: Signature, leaves: Sequence[torch.Tensor]) -> bool:
    """Whether ``leaves`` still have the layout ``kept`` recorded: each on the same storage at
    the same offset with the same sizes, strides, dtype and inference flag, that storage still
    as many bytes long (the aliases hold the storages, so a storage's address cannot be reused
    meanwhile). One C call per tensor and property; ``map`` streams each compare, so no tuple
    per tensor is kept."""
    return (
        torch.is_inference_mode_enabled() == kept.inference_mode
        and not torch.compiler.is_compiling()
        and len(leaves) == len(kept.aliases)
        and all(map(torch.Tensor.is_set_to, leaves, kept.aliases))
        and list(map(torch.Tensor.data_ptr, leaves)) == kept.pointers
        and list(map(torch.UntypedStorage.nbytes, kept.storages)) == kept.nbytes
        and list(map(_DTYPE, leaves)) == kept.dtypes
        and list(map(torch.Tensor.is_inference, leaves)) == kept.inference
    )


def __getattr__(name: str) -> Any:
    """The old import path of the user-facing torch names (``ema_core.torch``), kept working."""
    if name in _MOVED:
        import ema_core.torch

        return getattr(ema_core.torch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
