"""The fused update of an ``EMABank``'s K EMAs: the params read once for all of them.

``Fused`` splits the EMAs' tracked tensors, once per binding, into:

* fused pairs: a CPU tensor whose K shadows all take the host bank kernel
  (``ema_core.backends.host._bank``) compiled by numba: plain contiguous tensors, float32/float64
  shadows of one dtype over params no wider. Mixed-precision pairs (bf16/fp16 params, fp32
  under fp64) use the core's arithmetic, as each EMA's host engine does; same-dtype pairs use
  the arithmetic of torch's CPU ``lerp_`` (which each EMA runs for them: ``foreach-lerp``),
  once ``lerp_form`` has found which one this torch build computes (with or without FMA;
  neither: not fused);
* the rest, per EMA: a store of its own (``_store.store_for``) over the tensors not fused
  (copied buffers, integers, complex, strided, other devices), updated as the EMA would.

Without numba nothing is fused and each EMA updates alone: the host bank's numpy blocks go leaf
by leaf, and on ResNet-50 that Python work cost more than the K engine updates (which batch
small leaves) saved in memory traffic.

So every shadow ends bit-equal to what its EMA's own ``update`` writes. A decay of 0 copies
the fused pairs with ``_foreach.copy_`` (the EMA's ``copy`` route), 1 skips them. The numpy
views are rebuilt (and every pair checked) when a tensor's memory changed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ema_core._types import Namespace
from ema_core.backends.host import _bank as host_bank
from ema_core.backends.host import _numba
from ema_core.backends.host._numba import ParamsFormat
from ema_core.backends.torch._foreach import copy_
from ema_core.backends.torch._memory import view as memory_view
from ema_core.torch import _store
from ema_core.torch._options import Binding

__all__ = ["Fused", "lerp_form"]

_SHADOWS = (torch.float32, torch.float64)
_PARAMS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def lerp_form(dtype: torch.dtype) -> host_bank.Form | None:
    """The form (``host_bank.Form``) whose arithmetic equals torch's CPU ``_foreach_lerp_`` on
    ``dtype`` tensors bit for bit, found once by trying both torch forms on probe data (sizes
    that end vector loops with every tail, weights on both sides of 0.5); None when neither
    matches or numba does not run."""
    return _probe(dtype) if _numba.usable() else None


@functools.cache
def _probe(dtype: torch.dtype) -> host_bank.Form | None:
    rng = np.random.default_rng(0)
    forms: tuple[host_bank.Form, ...] = ("lerp-fma", "lerp-muladd")
    for form in forms:
        if all(_matches(form, dtype, n, w, rng) for n in (1, 7, 31, 1029) for w in _WEIGHTS):
            return form
    return None


_WEIGHTS = (1e-4, 0.3, 0.49999, 0.5, 0.7, 0.9999, 1 / 3)


def _matches(form: host_bank.Form, dtype: torch.dtype, n: int, w: float, rng: Any) -> bool:
    start = torch.from_numpy(rng.standard_normal(n)).to(dtype)
    end = torch.from_numpy(rng.standard_normal(n) * 4).to(dtype)
    want = start.clone()
    torch._foreach_lerp_([want], [end], w)
    got = start.clone()
    work = host_bank.plan([[got.numpy()]], [end.numpy()], form=form)
    host_bank.run(work, [1.0 - w], [w])
    return bool(torch.equal(got.view(torch.uint8), want.view(torch.uint8)))


class Fused:
    """The K bindings' tensors split into fused pairs and, per EMA, a store of the rest.

    Attributes:
        stores: the bindings' stores it was made for (a rebound binding has a new one).
    """

    def __init__(self, bindings: Sequence[Binding]) -> None:
        self.stores = [b.store for b in bindings]
        self.bindings = list(bindings)
        self.compiled = _numba.usable()
        first = bindings[0]
        local = all(isinstance(b.store, _store.Local) for b in bindings)
        self.forms: dict[int, host_bank.Form] = {}
        if self.compiled and local and not torch.compiler.is_compiling():
            for i in first.moving:
                form = _form(i, bindings)
                if form is not None:
                    self.forms[i] = form
        self.shadows = [[b.shadows[i] for i in self.forms] for b in bindings]
        self.params = [first.live[i] for i in self.forms]
        self.rest = [_rest(b, self.forms) for b in bindings]
        self.key: list[Any] = []
        self.plans: list[host_bank.Plan] = []

    def current(self, bindings: Sequence[Binding]) -> bool:
        """Whether this split still fits the bindings (none was rebound) and the settings."""
        return self.compiled == _numba.usable() and all(
            a is b.store for a, b in zip(self.stores, bindings, strict=True)
        )

    def prepare(self) -> bool:
        """(Re)build the host plans when a fused tensor's memory changed; checks every pair.
        False (nothing built) when a fused tensor no longer fuses as it did (made strided in
        place, ``.data`` pointed elsewhere): the caller splits the bindings again.

        Raises:
            ValueError: a params tensor no longer fits its shadows (nothing is written).
        """
        tensors = [*self.params, *(s for group in self.shadows for s in group)]
        key = [
            list(map(torch.Tensor.data_ptr, tensors)),
            list(map(torch.Tensor.numel, tensors)),
            list(map(torch.Tensor.is_contiguous, tensors)),
            [t.dtype for t in tensors],
        ]
        if key == self.key and self.plans:
            return True
        if any(_form(i, self.bindings) != form for i, form in self.forms.items()):
            return False
        workers = torch.get_num_threads()
        self.plans = []
        for form in sorted(set(self.forms.values())):
            picks = [j for j, f in enumerate(self.forms.values()) if f == form]
            views = [[_view(group[j]) for j in picks] for group in self.shadows]
            params = [self.params[j] for j in picks]
            formats: list[ParamsFormat] = [
                "bfloat16" if p.dtype == torch.bfloat16 else "float" for p in params
            ]
            flat = [_view(p) for p in params]
            self.plans.append(host_bank.plan(views, flat, formats, form=form, workers=workers))
        self.key = key
        return True

    def apply(self, xp: Namespace, decays: list[float], rates: list[float]) -> None:
        """Update every EMA's rest, then the fused pairs (decay 0: torch's copy)."""
        with torch.no_grad():
            for store, d, r in zip(self.rest, decays, rates, strict=True):
                store.apply(xp, d, r)
            kernel_decays = list(decays)
            for k, d in enumerate(decays):
                if d == 0.0 and self.params:
                    copy_(self.shadows[k], self.params)
                    kernel_decays[k] = 1.0
            for plan in self.plans:
                host_bank.run(plan, kernel_decays, rates)
            written = [g for g, d in zip(self.shadows, kernel_decays, strict=True) if d != 1.0]
            if self.plans and written:  # through numpy views: tell autograd, as torch's ops do
                torch.autograd.graph.increment_version([s for g in written for s in g])


def _form(i: int, bindings: Sequence[Binding]) -> host_bank.Form | None:
    """How tracked tensor ``i`` is fused across the bindings, or None when it is not."""
    p = bindings[0].live[i]
    shadows = [b.shadows[i] for b in bindings]
    s = shadows[0]
    plain = type(p) in (torch.Tensor, torch.nn.Parameter) and not (p.is_conj() or p.is_neg())
    fits = (
        plain
        and bindings[0].kinds[i] == "float"
        and all(b.live[i] is p and b.kinds[i] == "float" and i in b.moving for b in bindings)
        and p.device.type == "cpu"
        and p.is_contiguous()
        and p.numel() > 0
        and p.dtype in _PARAMS
        and s.dtype in _SHADOWS
        and p.dtype.itemsize <= s.dtype.itemsize
        and all(_shadow_fits(t, s, p) for t in shadows)
    )
    if not fits:
        return None
    return "core" if p.dtype != s.dtype else lerp_form(p.dtype)


def _shadow_fits(t: torch.Tensor, first: torch.Tensor, p: torch.Tensor) -> bool:
    return (
        type(t) is torch.Tensor
        and t.dtype == first.dtype
        and t.device == p.device
        and t.shape == p.shape
        and t.is_contiguous()
        and not (t.is_conj() or t.is_neg())
    )


def _rest(binding: Binding, fused: dict[int, Any]) -> _store.Store:
    """A store over the binding's moving tensors that are not fused."""
    picks = [i for i in binding.moving if i not in fused]
    names = [f"[{binding.tracked[i].name!r}]" for i in picks]
    return _store.store_for(
        [binding.shadows[i] for i in picks],
        [binding.live[i] for i in picks],
        [binding.kinds[i] for i in picks],
        names,
    )


def _view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor's memory (bfloat16 as its uint16 bits); no copy. Made from
    the data address (``_memory.view``), so the storage stays resizable; ``prepare`` rebuilds
    the plans when a data pointer moves."""
    seen = memory_view(t.detach())
    if seen is None:  # a conjugate or negative view: numpy cannot see it without a copy
        raise ValueError("a tensor with its conjugate or negative bit set cannot be fused")
    return seen
