"""The torch backend: fused in-place updates with no host sync, and ``EMA`` for ``nn.Module``s.

How the pieces fit:

* ``_kernels``: the leaf update. Leaves are grouped by (device, dtypes) into a ``Plan``; each
  group is one ``torch._foreach_lerp_`` (or ``_foreach_copy_`` for integer leaves), through
  ``_foreach``, which falls back to per-tensor loops where those private ops are missing. A
  decay is a Python float or a 0-d device tensor that is never read on the host.
* ``_host``: CPU groups with a float32/float64 shadow over bf16/fp16 params, when numba is
  installed: ema-core's compiled one-pass loop over numpy views of the tensors (no copies),
  shared over ``torch.get_num_threads()`` threads; the views are kept between updates.
* ``_mixed`` / ``_triton``: the same one pass without numba (cache-sized blocks on CPU) and on
  CUDA (a Triton kernel).
* ``_names``: which tensors of a module are tracked, under which names; ``_options``: the
  ``EMA`` arguments turned into one ``Config``.
* ``_module``: the ``EMA`` class (update, swap, copy_to, average); ``_store``: where its
  shadows live (beside the params, or pinned host memory for a CUDA model); ``_swap``: putting
  averages into the model and taking them out; ``_state``: checkpoints.
* ``_dtensor``: FSDP2 (DTensor) params get DTensor shadows updated on their local shards with
  no collective. ``_dist``, above ``EMA``: ``full_state_dict`` gathers one plain checkpoint
  (rank 0 by default); ``ddp_ema`` builds an EMA on every DDP rank or on rank 0 only.

Imports point down: each file imports only files before it in ``_foreach``, ``_triton``,
``_host``, ``_mixed``, ``_kernels``, ``_dtensor``, ``_store``, ``_names``, ``_state``, ``_swap``,
``_options``, ``_module``, ``_dist``.

``guard`` and ``update_leaves`` are the backend protocol the core calls (see
``ema_core.backends``); ``ema_update`` on torch tensors lands in ``update_leaves``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from ema_core._types import LeafKind, Namespace, NonFloatPolicy, Value
from ema_core.backends.torch import _kernels
from ema_core.backends.torch._dist import ddp_ema, full_state_dict
from ema_core.backends.torch._module import EMA

__all__ = ["EMA", "ddp_ema", "full_state_dict", "guard", "update_leaves"]


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
) -> list[torch.Tensor]:
    """Blend float leaves and copy exact ones, grouped into fused calls; see the module doc.

    ``writes[i]`` updates ``shadows[i]`` in place and returns it; otherwise a new tensor is
    returned and ``shadows[i]`` is left alone. Integer leaves follow ``non_float``: "copy" takes
    the params on every call, also one whose decay is 1 (a host decay of 1 returns each float
    shadow itself); the others leave them as they are.
    """
    skip = isinstance(decay, float) and decay == 1.0
    move = [non_float == "copy" if kind == "exact" else not skip for kind in kinds]
    out = [s if w or not m else s.clone() for s, w, m in zip(shadows, writes, move, strict=True)]
    if not any(move):
        return out
    plan = _kernels.make_plan(
        [s for s, m in zip(out, move, strict=True) if m],
        [p for p, m in zip(params, move, strict=True) if m],
        [kind for kind, m in zip(kinds, move, strict=True) if m],
    )
    _kernels.apply(xp, plan, decay, rate)
    return out
