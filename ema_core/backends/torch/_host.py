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
from typing import Any

import torch

__all__ = ["Bound", "lerp_", "usable"]

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
    """``_numba.usable()``, asked only where numba (hence numpy, which ``_numba`` imports) is
    installed: torch does not need numpy."""
    if not _numba_installed():
        return False
    from ema_core.backends import _numba

    return _numba.usable()


@functools.cache
def _numba_installed() -> bool:
    return importlib.util.find_spec("numba") is not None


class Bound:
    """A group's tensors seen as numpy arrays, with the kernels bound; rebuilt when a tensor's
    storage moves (``param.data = ...``, ``module.to(...)``), found by comparing data pointers.
    The views hold the storage they see, so a replaced one is freed at the next update.
    Leaves under ``least`` elements are left to another path, and ``deferred`` says so."""

    def __init__(
        self, shadows: list[torch.Tensor], params: list[torch.Tensor], least: int = 0
    ) -> None:
        from ema_core.backends import _numba

        fmt: _numba.ParamsFormat = "bfloat16" if params[0].dtype == torch.bfloat16 else "float"
        self.pointers = _pointers(shadows, params)
        self.kernel: Any = None  # one for the group: its pairs share their dtypes
        self.items: list[Any] = []  # in-place jobs (shadow, shadow, params) of numpy views
        self.left: list[int] = []  # the pairs no kernel takes (strided): another path does them
        self.deferred = False
        for i, (s, p) in enumerate(zip(shadows, params, strict=True)):
            small = s.numel() < least
            self.deferred |= small
            if small or not (s.is_contiguous() and p.is_contiguous()):
                self.left.append(i)
                continue
            shadow, source = _view(s), _view(p)
            if self.kernel is None:  # the group's pairs share dtypes: check the first one only
                prepared = _numba.prepare(shadow, source, fmt)
                if prepared is None:
                    self.left.append(i)
                    continue
                self.kernel = prepared.kernel
            if source.dtype == "float16":  # the kernels read float16 as its uint16 bits
                source = source.view("uint16")
            self.items.append((shadow, shadow, source))
        self.shares: dict[int, list[list[Any]]] = {}  # the items dealt per thread count

    def shares_for(self, workers: int) -> list[list[Any]]:
        """The items dealt into runs for ``workers`` threads (computed once per count)."""
        from ema_core.backends import _threads

        if workers not in self.shares:
            self.shares[workers] = _threads.share(
                self.items, workers, least=PARALLEL_MIN // 2, grain=1 << 16
            )
        return self.shares[workers]


def lerp_(
    shadows: list[torch.Tensor],
    params: list[torch.Tensor],
    decay: float,
    rate: float,
    bound: Bound | None = None,
) -> Bound:
    """Blend the pairs a kernel takes, in place; returns the ``Bound`` (reuse it next time),
    whose ``left`` lists the indices of the pairs left for another path. A group's first
    update (no ``bound``) leaves its small leaves too; the next one takes them all."""
    from ema_core.backends import _numba, _threads

    if bound is None:
        bound = Bound(shadows, params, least=FIRST_MIN)
    elif bound.deferred or bound.pointers != _pointers(shadows, params):
        bound = Bound(shadows, params)
    if not bound.items:
        return bound
    kernel = bound.kernel
    factor, low = _numba.weights(decay, rate, bound.items[0][1].dtype)

    def do(item: Any) -> None:
        kernel(item[1], item[2], factor, low)

    _threads.run_shares(bound.shares_for(torch.get_num_threads()), do)
    return bound


def _pointers(shadows: list[torch.Tensor], params: list[torch.Tensor]) -> list[int]:
    return [t.data_ptr() for t in shadows] + [t.data_ptr() for t in params]


def _view(t: torch.Tensor) -> Any:
    """A flat numpy view of a contiguous CPU tensor (bfloat16 as uint16 bits); no copy."""
    if t.requires_grad:
        t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().reshape(-1).view("uint16")
    return t.numpy().reshape(-1)
