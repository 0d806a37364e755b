"""CPU tensors through ema-core's compiled host kernels (``backends._numba``), when numba is here.

A float32/float64 shadow over narrower params (bf16, fp16; float32 under float64) is blended in
one pass that reads the params where they lie: each tensor is seen as a numpy array without a
copy (bfloat16 as its uint16 bits), and the pieces are shared over ``torch.get_num_threads()``
threads (``_threads``). The arithmetic is the generic core's (no FMA), so it may differ from
torch's own ``lerp_`` by one rounding; the tests pin it to the generic path bit for bit.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import TYPE_CHECKING, Any

import torch

from ema_core._settings import settings

if TYPE_CHECKING:  # _numba imports numpy, which torch does not need
    from ema_core.backends._numba import ParamsFormat

__all__ = ["Bound", "bind", "key", "lerp_", "run", "stale", "usable"]

#: Updates smaller than this many elements run on the calling thread.
PARALLEL_MIN = 1 << 21
#: On a group's first update, leaves below this many elements are left to ``_mixed``, which
#: packs them into a few fused calls with the same arithmetic (so the same bits): seeing a
#: tensor as numpy costs microseconds, which pays only when the views are used again. A reused
#: ``Bound`` (the ``EMA`` class's later updates) takes them all.
FIRST_MIN = 1 << 16
_SHADOW_DTYPES = (torch.float32, torch.float64)
_PARAMS_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def usable(shadow: torch.Tensor, params: torch.Tensor) -> bool:
    """Whether a group like this pair takes the host kernels: CPU, plain tensors (no subclass,
    not being traced by torch.compile), a float32 or float64 shadow over params no wider, numba
    installed and not turned off."""
    return (
        shadow.device.type == "cpu"
        and type(shadow) is torch.Tensor
        and type(params) in (torch.Tensor, torch.nn.Parameter)
        and not torch.compiler.is_compiling()  # traced tensors have no memory to view
        and shadow.dtype in _SHADOW_DTYPES
        and params.dtype in _PARAMS_DTYPES
        and params.dtype.itemsize <= shadow.dtype.itemsize
        and _kernels_on()
    )


def _kernels_on() -> bool:
    """``_numba.usable()`` without importing ``_numba`` (hence numpy, which torch does not
    need): numba installed and ``EMA_CORE_NUMBA`` not ``0`` (read once, ``_settings``)."""
    return settings().numba and _numba_installed()


@functools.cache
def _numba_installed() -> bool:
    return importlib.util.find_spec("numba") is not None


class Bound:
    """A group's tensors seen as numpy arrays, with the kernels bound; rebuilt when a tensor's
    storage, shape or dtype changes (``param.data = ...``, ``module.to(...)``), found by
    comparing ``key``. The views hold the storage they see, so a replaced one is freed at the
    next update. Every pair is checked when the views are made: the same shape, and a kernel
    that fits this pair's own views (sizes, dtypes, contiguity), which is the group's kernel;
    the loops index the params by the shadow's size, so an unchecked pair could read past its
    end. Leaves under ``least`` elements are left to another path, and ``deferred`` says so.

    Raises:
        ValueError: a params tensor's shape differs from its shadow's (nothing is written).
    """

    def __init__(
        self, shadows: list[torch.Tensor], params: list[torch.Tensor], least: int = 0
    ) -> None:
        from ema_core.backends import _numba

        self.key = key(shadows, params)
        self.kernel: Any = None  # one for the group: a pair whose kernel differs is left
        self.items: list[Any] = []  # in-place jobs (shadow, shadow, params) of numpy views
        self.left: list[int] = []  # the pairs no kernel takes (strided): another path does them
        self.deferred = False
        for i, (s, p) in enumerate(zip(shadows, params, strict=True)):
            if s.shape != p.shape or s.device != p.device:
                raise ValueError(
                    f"params #{i} of shape {tuple(p.shape)} on {p.device} does not fit its "
                    f"shadow of shape {tuple(s.shape)} on {s.device}"
                )
            small = s.numel() < least
            self.deferred |= small
            prepared = None
            if not small and s.is_contiguous() and p.is_contiguous():
                prepared = _numba.prepare(_view(s), _view(p), _format(p))
            if prepared is None or self.kernel not in (None, prepared.kernel):
                self.left.append(i)
                continue
            self.kernel = prepared.kernel
            self.items.append((prepared.shadow, prepared.shadow, prepared.params))
        self.shares: dict[int, list[list[Any]]] = {}  # the items dealt per thread count

    def shares_for(self, workers: int) -> list[list[Any]]:
        """The items dealt into runs for ``workers`` threads (computed once per count)."""
        from ema_core.backends import _threads

        if workers not in self.shares:
            self.shares[workers] = _threads.share(
                self.items, workers, least=PARALLEL_MIN // 2, grain=1 << 16
            )
        return self.shares[workers]


def key(shadows: list[torch.Tensor], params: list[torch.Tensor]) -> list[Any]:
    """What a ``Bound`` was made for: each tensor's data pointer, and the params' shapes and
    dtypes (which ``param.data = ...`` may change without moving the storage)."""
    return [t.data_ptr() for t in shadows] + [(t.data_ptr(), t.shape, t.dtype) for t in params]


def stale(bound: Bound | None, shadows: list[torch.Tensor], params: list[torch.Tensor]) -> bool:
    """Whether ``bind`` would make new views: none yet, small leaves deferred, or moved."""
    return bound is None or bound.deferred or bound.key != key(shadows, params)


def bind(
    shadows: list[torch.Tensor], params: list[torch.Tensor], bound: Bound | None = None
) -> Bound:
    """``bound`` if it still fits the tensors, else new views: a group's first ones (no
    ``bound``) leave its small leaves to ``_mixed``; the next ones take them all."""
    if bound is None:
        return Bound(shadows, params, least=FIRST_MIN)
    return Bound(shadows, params) if stale(bound, shadows, params) else bound


def run(bound: Bound, decay: float, rate: float) -> None:
    """Blend the pairs ``bound`` took, in place (its ``left`` ones are not touched)."""
    from ema_core.backends import _numba, _threads

    if not bound.items:
        return
    kernel = bound.kernel
    factor, low = _numba.weights(decay, rate, bound.items[0][1].dtype)

    def do(item: Any) -> None:
        kernel(item[1], item[2], factor, low)

    _threads.run_shares(bound.shares_for(torch.get_num_threads()), do)


def lerp_(
    shadows: list[torch.Tensor],
    params: list[torch.Tensor],
    decay: float,
    rate: float,
    bound: Bound | None = None,
) -> Bound:
    """Blend the pairs a kernel takes, in place; returns the ``Bound`` (reuse it next time),
    whose ``left`` lists the indices of the pairs left for another path (``bind``, ``run``).

    Raises:
        ValueError: a params tensor's shape differs from its shadow's (nothing is written).
    """
    bound = bind(shadows, params, bound)
    run(bound, decay, rate)
    return bound


def _format(t: torch.Tensor) -> ParamsFormat:
    """How ``_numba`` reads this tensor's view: bfloat16 as its bits, anything else as is."""
    return "bfloat16" if t.dtype == torch.bfloat16 else "float"


def _view(t: torch.Tensor) -> Any:
    """A flat numpy view of a contiguous CPU tensor (bfloat16 as uint16 bits); no copy."""
    if t.requires_grad:
        t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().reshape(-1).view("uint16")
    return t.numpy().reshape(-1)
