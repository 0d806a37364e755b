"""What the kernels' prepared reads of some tracked pairs depend on beyond ``Watch``'s pointers,
shapes and dtypes: which pairs have such reads (``prepared``: the host engine's views of CPU
pairs, the Triton kernel's launch of CUDA ones) and their layouts (``Views``)."""

from __future__ import annotations

import itertools
import operator
from typing import Any, TypeGuard

import torch

import ema_core.backends.torch._cuda as _cuda  # noqa: PLR0402 (the module, not its package: patched by tests)
from ema_core.backends.torch._pairs import PLAIN as _PLAIN
from ema_core.backends.torch._pairs import key as views_key
from ema_core.backends.torch._plan import bucket
from ema_core.torch._names import Tracked

__all__ = ["Views", "kept_reads", "prepared"]

_DTYPE = operator.attrgetter("dtype")


def prepared(shadow: torch.Tensor | None, t: Tracked) -> TypeGuard[torch.Tensor]:
    """Whether a kernel keeps prepared reads of the pair that the watch vouches for: a pair of
    plain tensors on one device among ``kept_reads``'s (the host engine's views are a superset
    of ``_host.usable``'s pairs)."""
    if type(shadow) is not torch.Tensor or type(t.tensor) not in _PLAIN:
        return False
    return shadow.device == t.tensor.device and kept_reads(shadow, t)


def kept_reads(shadow: torch.Tensor | None, t: Tracked) -> bool:
    """Whether a kernel may keep prepared reads of the pair between updates, plain tensors or
    not: the host engine's views (a float CPU tensor under a wider shadow, the ``mixed``
    bucket) or the Triton kernel's launch (a float CUDA tensor under a float32 shadow, Triton
    installed: the ``mixed`` bucket, and the ``same`` one of float32 params, routes
    "triton-same" and "triton-ends"). The watch vouches only when ``prepared`` covers every
    such pair: one it cannot look at (a ``Parameter`` subclass, whose ``.data`` the watch
    does not read) leaves the kernels to compare their own."""
    if not isinstance(shadow, torch.Tensor) or t.kind != "float":
        return False
    if _cuda.triton_usable(shadow):  # CUDA (a test's interpreter run may say yes on the CPU)
        return bucket(t.kind, shadow, t.tensor) in ("mixed", "same")
    on_cpu = shadow.device.type == "cpu" and shadow.dtype != t.tensor.dtype
    return on_cpu and bucket(t.kind, shadow, t.tensor) == "mixed"


class Views:
    """The rest of what the kernels' prepared reads of some pairs depend on (``_pairs.Key``),
    beside the pointers, shapes and dtypes ``Watch`` reads: each param's contiguity (and shape
    and strides where it is not contiguous) and its shadow's pointer, size, contiguity, dtype
    (and layout); read in the same pass, from the tensors the module holds now.

    Args:
        pairs: (position among the watched plain tensors, param, shadow).
    """

    def __init__(self, pairs: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
        self.where = [j for j, _, _ in pairs]
        self.params = [p for _, p, _ in pairs]
        self.shadows = [s for _, _, s in pairs]
        self.renew()

    def renew(self) -> None:
        """Take what the views depend on now as the new baseline."""
        key, half = views_key(self.shadows, self.params), len(self.shadows)
        self.pointers, self.counts = key.pointers[:half], key.counts[:half]
        self.dtypes, self.contiguous = key.dtypes[:half], key.contiguous
        self.layouts = key.layouts  # position in [*shadows, *params] -> (shape, strides)
        # the params' negative bits, None when none had it (the shadows, the EMA's own, never
        # do: a negative shadow is in no kernel's bucket): most updates ask any() of them
        flags = list(key.negative[half:])
        self.negative = flags if any(flags) else None

    def pick(self, now: list[Any]) -> list[Any]:
        """The params among ``now`` (the module's plain tensors, in ``Watch`` order)."""
        if len(self.where) == len(now):
            return now  # every one of them (a bf16 or fp16 model)
        return [now[j] for j in self.where]

    def same(self, now: list[Any]) -> bool:
        """Whether the views' other inputs are as they were (pointers, shapes and dtypes of
        the params are compared by the caller)."""
        if not self.where:
            return True
        params, shadows = self.pick(now), self.shadows
        contiguous = map(torch.Tensor.is_contiguous, itertools.chain(shadows, params))
        return (
            list(map(torch.Tensor.data_ptr, shadows)) == self.pointers
            and list(map(torch.Tensor.numel, shadows)) == self.counts
            and all(map(operator.is_, map(_DTYPE, shadows), self.dtypes))
            and list(contiguous) == self.contiguous
            and all(_layout(shadows, params, i) == old for i, old in self.layouts.items())
            and self._negative_as_was(params)
        )

    def _negative_as_was(self, params: list[Any]) -> bool:
        """Whether each param's negative bit is as it was (``_pairs.Key.negative``)."""
        if self.negative is None:
            return not any(map(torch.Tensor.is_neg, params))
        return list(map(torch.Tensor.is_neg, params)) == self.negative

    def held(self, now: list[Any]) -> bool:
        """Whether the module holds the very param objects the views were made from."""
        return all(map(operator.is_, self.pick(now), self.params))


def _layout(shadows: list[torch.Tensor], params: list[Any], i: int) -> tuple[Any, Any]:
    """Shape and strides of tensor ``i`` of ``[*shadows, *params]`` (``_pairs.Key.layouts``)."""
    t = shadows[i] if i < len(shadows) else params[i - len(shadows)]
    return t.shape, t.stride()
