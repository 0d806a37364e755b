"""Whole-list reads of many (shadow, params) pairs, for the checks and launch tables the mixed
routes (``_routes``, ``_cuda``) make at every update.

Each function reads one attribute of every tensor in one C-level pass (``map`` over torch's
own methods) instead of a Python loop over the pairs. The H200 run of 2026-12-04 (d19a8a8)
showed why: the ``EMA`` class took 5.9 us per leaf on 20,000 tiny bf16 params, on the Triton
route, against 0.9 us on fp32 params (one foreach call), and as long queued: host work, where
that route ran three Python loops over the pairs (reading shapes, devices, dtypes, sizes and
addresses). The answers are only
True or False. When one is False, the caller runs its per-pair loop, which names the
offending tensor in its error.

``Key`` is what the kernels' prepared reads of some pairs depend on (the host engine's views,
the Triton kernel's launch): kept with them, and compared (``changed``) or vouched for by the
caller at later updates, so that an unchanged model skips every other read.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from itertools import repeat
from typing import Any, NamedTuple

import torch

__all__ = [
    "PLAIN",
    "Key",
    "addresses",
    "all_contiguous",
    "all_dtype",
    "all_on",
    "all_plain",
    "changed",
    "key",
    "memory_key",
    "same_shapes",
    "sizes",
]

_SHAPE = operator.attrgetter("shape")
_DTYPE = operator.attrgetter("dtype")
_FLAGS = {"cpu": operator.attrgetter("is_cpu"), "cuda": operator.attrgetter("is_cuda")}

Tensors = Sequence[torch.Tensor]
#: Plain tensors (no subclass: a wrapper has no memory of its own), the ones whose storage and
#: data pointer are read directly (the Triton kernel's tables, the watch, the plan cache).
PLAIN = frozenset({torch.Tensor, torch.nn.Parameter})


def same_shapes(shadows: Tensors, params: Tensors) -> bool:
    """Whether each params tensor has its shadow's shape (the lists are of equal length).

    >>> same_shapes([torch.zeros(2, 3)], [torch.ones(2, 3)])
    True
    >>> same_shapes([torch.zeros(2)], [torch.ones(3)])
    False
    """
    return all(map(operator.eq, map(_SHAPE, params), map(_SHAPE, shadows)))


def all_on(tensors: Tensors, device: torch.device) -> bool:
    """Whether every tensor is on ``device``. On the CPU or a CUDA device with an index, read
    as ints (``get_device``, -1 on the CPU) and ``is_cpu`` / ``is_cuda`` flags, which builds no
    ``torch.device`` per tensor.

    >>> all_on([torch.zeros(2), torch.ones(1)], torch.device("cpu"))
    True
    >>> all_on([torch.zeros(2), torch.ones(1, device="meta")], torch.device("cpu"))
    False
    """
    flag = _FLAGS.get(device.type)
    index = -1 if device.type == "cpu" else device.index
    if flag is None or index is None:
        return all(map(operator.eq, (t.device for t in tensors), repeat(device)))
    at = map(operator.eq, map(torch.Tensor.get_device, tensors), repeat(index))
    return all(at) and all(map(flag, tensors))


def all_dtype(tensors: Tensors, dtype: torch.dtype) -> bool:
    """Whether every tensor has ``dtype``.

    >>> all_dtype([torch.zeros(2), torch.ones(1)], torch.float32)
    True
    """
    return all(map(operator.is_, map(_DTYPE, tensors), repeat(dtype)))


def all_plain(tensors: Tensors) -> bool:
    """Whether every tensor is a plain ``torch.Tensor`` or ``Parameter`` (``PLAIN``).

    >>> all_plain([torch.zeros(2), torch.nn.Parameter(torch.ones(1))])
    True
    """
    return set(map(type, tensors)) <= PLAIN


def all_contiguous(tensors: Tensors) -> bool:
    """Whether every tensor is contiguous.

    >>> all_contiguous([torch.zeros(2, 3), torch.zeros(3, 2).t()])
    False
    """
    return all(map(torch.Tensor.is_contiguous, tensors))


def sizes(tensors: Tensors) -> list[int]:
    """Each tensor's number of elements.

    >>> sizes([torch.zeros(2, 3), torch.zeros(0)])
    [6, 0]
    """
    return list(map(torch.Tensor.numel, tensors))


def addresses(tensors: Tensors) -> list[int]:
    """Each tensor's data address (``data_ptr``).

    >>> x = torch.zeros(4)
    >>> addresses([x, x[1:]]) == [x.data_ptr(), x.data_ptr() + 4]
    True
    """
    return list(map(torch.Tensor.data_ptr, tensors))


class Key(NamedTuple):
    """What a kernel's prepared reads of some pairs depend on (the host engine's views,
    ``_host.Bound``; the Triton kernel's launch, ``_launch.Launch``): each tensor's data pointer,
    element count and dtype, whether it is contiguous, and for a non-contiguous one its shape
    and strides, over ``[*shadows, *params]``. Flat lists of ints, bools and dtypes, no object
    per tensor: tens of thousands of new shapes per update survive long enough to wake the
    garbage collector's full passes over every live object, several times the cost of the reads.

    A contiguous tensor given another shape over the same memory (``param.data = p.view(...)``)
    keeps its flat reads valid; the callers above see such a change (the ``EMA`` class by the
    shapes it watches, the stateless call by its cache's signatures) and plan again.
    """

    pointers: list[int]
    counts: list[int]
    dtypes: list[torch.dtype]
    contiguous: list[bool]
    layouts: dict[int, tuple[Any, Any]]  # position -> (shape, strides), non-contiguous only
    #: the negative bit (the memory holds -x: the Triton kernel leaves such a pair); () in a key
    #: pickled before it was kept, which then differs from any key read now
    negative: Sequence[bool] = ()


def key(shadows: Tensors, params: Tensors) -> Key:
    """The ``Key`` of these pairs now.

    >>> x = torch.zeros(2, 3)
    >>> k = key([x], [x.t()])
    >>> k.counts, k.contiguous, k.layouts
    ([6, 6], [True, False], {1: (torch.Size([3, 2]), (1, 3))})
    """
    tensors = [*shadows, *params]
    contiguous = list(map(torch.Tensor.is_contiguous, tensors))
    return Key(
        list(map(torch.Tensor.data_ptr, tensors)),
        list(map(torch.Tensor.numel, tensors)),
        list(map(_DTYPE, tensors)),
        contiguous,
        {i: (t.shape, t.stride()) for i, t in enumerate(tensors) if not contiguous[i]},
        list(map(torch.Tensor.is_neg, tensors)),
    )


def changed(was: Key, shadows: Tensors, params: Tensors) -> bool:
    """Whether the pairs' ``Key`` now differs from ``was``; compared as read, nothing kept.

    >>> s, p = torch.zeros(4), torch.ones(4)
    >>> was = key([s], [p])
    >>> changed(was, [s], [p]), changed(was, [s], [p.clone()])
    (False, True)
    """
    tensors = [*shadows, *params]
    return not (
        list(map(torch.Tensor.data_ptr, tensors)) == was.pointers
        and list(map(torch.Tensor.numel, tensors)) == was.counts
        and list(map(torch.Tensor.is_contiguous, tensors)) == was.contiguous
        and all(map(operator.is_, map(_DTYPE, tensors), was.dtypes))
        and all((tensors[i].shape, tensors[i].stride()) == old for i, old in was.layouts.items())
        and list(map(torch.Tensor.is_neg, tensors)) == was.negative
    )


def memory_key(t: Any) -> tuple[Any, ...] | None:
    """What makes two tensor objects the same elements: type, data pointer, shape, strides,
    dtype and device (``load_state_dict(assign=True)`` gives each name of a tied weight its own
    ``Parameter`` over one memory); None for what has no data pointer to compare."""
    if not isinstance(t, torch.Tensor) or t.is_meta or t.is_quantized or t.is_nested:
        return None
    if t.layout is not torch.strided:
        return None
    try:  # a wrapper subclass (DTensor) or a tensor without storage has no pointer to read
        pointer = t.data_ptr()
        if pointer == 0:
            return None
        return (type(t), pointer, t.shape, t.stride(), t.dtype, t.device, t.is_conj(), t.is_neg())
    except RuntimeError:
        return None
