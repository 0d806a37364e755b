"""Putting the averages into the model for ``EMA.swap()``, and the live weights back exactly.

By default (``copy=True``) each average is copied into the live tensor's own storage after a
copy of the live values is put aside: the model keeps its tensor objects and data pointers
(optimizers, CUDA graphs and compiled graphs still see the same memory), a write inside the
block (a train-mode BatchNorm forward, an optimizer step) lands in the model's storage only,
and the exit copies the saved values back bit for bit. The shadows are never reachable from the
model, so no write can change an average. Cost: one temporary the size of the tracked tensors
and three copies of them per ``swap()``.

``copy=False`` points each parameter at its shadow's storage (``param.data = shadow``: no
copy, no allocation) where dtype and device match and no bias correction applies; the live
storage is kept aside untouched. A write inside the block then writes the shadow itself: it is
detected on exit through the parameter's version counter (in-place ops on it or its views,
``optimizer.step()`` of the for-loop and foreach optimizers), and ``swap`` raises once the
live weights are restored. Writes that bypass that counter are not seen: ``param.data.add_()``,
numpy views, and torch's fused optimizers (``Adam(fused=True)``, ``AdamW``/``SGD`` likewise:
their kernels leave the counter as it was, torch 2.13). ``copy=False`` is for read-only
evaluation. Buffers and named tensors that are not ``nn.Parameter``s are copied in
either way: BatchNorm's native kernels update their statistics without moving the counter.
DTensors (FSDP2) keep their storage behind the wrapper, where ``.data`` does not reach, and are
copied too (one shard-sized copy per rank).

A conversion inside the block (``model.half()`` then ``.float()``) replaces buffer objects in
their modules' dicts (parameters too under torch's ``set_overwrite_module_params_on_conversion``):
the exit puts the live values into what the owning modules hold then, cast to its dtype; a
submodule the user replaced keeps what the user put there. Under ``copy=False`` a conversion
points a parameter's ``.data`` off the lent shadow: the exit gives it the live values in the
converted dtype and layout, so both ways keep a conversion made inside the block.

A copying swap nested in another EMA's ``swap(copy=False)`` tells it the writes it undid
(``_restored``). ``eager`` keeps an update out of ``torch.compile``'s traces. Ctrl-C is held
while tensors are put in or taken out (``_interrupts.HeldInterrupts``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ema_core.backends.torch._caches import forget_derived
from ema_core.torch import _restored
from ema_core.torch._averages import expanded
from ema_core.torch._eager import eager
from ema_core.torch._interrupts import HeldInterrupts


class Put:
    """One live tensor holding an average; ``restore()`` puts the live values back and says
    whether the shadow it exposed (``copy=False`` only) was written meanwhile."""

    def __init__(self, live: torch.Tensor, average: torch.Tensor, copy: bool, shadow: bool) -> None:
        self.live = live
        self.version: int | None = None
        self.inference = live.is_inference()  # no version counter: copied, in inference mode
        if by_copy(live, copy):
            target = live.detach()
            self.by_data = False
            self.version = None if self.inference else live._version  # for _restored
            # another EMA's lent shadow: restored where written, if a conversion moves live
            self.wrote = target if _restored.lent(live) else None
            with torch.inference_mode(self.inference or torch.is_inference_mode_enabled()):
                self.saved = target.clone()
                target.copy_(average)
            return
        if average.dtype != live.dtype or average.device != live.device:
            average, shadow = average.to(dtype=live.dtype, device=live.device), False
        self.saved, self.by_data = live.data, True
        live.data = average
        self.lent = average.data_ptr()
        if shadow:
            self.version = live._version
            _restored.lend(live)

    def restore(self) -> bool:
        """Put the live values back; returns whether the exposed shadow was written. A
        parameter converted off the shadow's storage (its version counter then is another
        tensor's) counts as not written: what it did before the conversion cannot be told."""
        live = self.live
        on_shadow = self.by_data and live.data_ptr() == self.lent
        moved = self.version is not None and live._version != self.version
        written = on_shadow and moved and not _restored.undone(live)
        if self.by_data:
            if self.version is not None:
                _restored.close(live)
            live.data = self._converted(live.data) if not on_shadow else self.saved
            return written
        wrote = self.wrote
        with torch.inference_mode(self.inference or torch.is_inference_mode_enabled()):
            live.detach().copy_(self.saved)
            if wrote is not None and wrote.data_ptr() != live.data_ptr():
                wrote.copy_(self.saved)
        if self.version is not None:  # its values of before, bit for bit: an outer swap's shadow
            _restored.record(live, self.version, live._version)
        return written

    def _converted(self, now: torch.Tensor) -> torch.Tensor:
        """The live values in the dtype, device and layout of ``now``, what a conversion inside
        the block (``model.double()``, ``.to(memory_format=...)``) pointed the parameter at
        instead of the lent shadow: a new tensor like it (never ``now`` itself, which may be
        shared), so that the conversion is kept as ``swap()`` keeps it; the saved storage
        itself where ``now`` has another shape or holds no values."""
        saved = self.saved
        if now.shape != saved.shape or now.is_meta or expanded(now):
            return saved
        if (now.dtype, now.device, now.stride()) == (saved.dtype, saved.device, saved.stride()):
            return saved  # nothing converted that the saved storage lacks
        return torch.empty_like(now).copy_(saved)

    def put_into(self, now: Any) -> None:
        """After ``restore()``: the live values also into ``now``, the tensor the module holds
        now under this name, where a conversion inside the block replaced the tensor
        (``.half()`` makes new buffers; parameters too under torch's overwrite conversion
        flag), cast to its dtype. One still on the lent shadow's storage is pointed back at
        the live storage (a copy into it would write the EMA); one that cannot hold values
        (expanded) or refuses the copy is left as it is: every other tensor is restored."""
        live = self.live
        if now is None or now is live or not _plain_pair(now, live, self.saved.shape):
            return
        if self.by_data and now.data_ptr() == self.lent:
            now.data = self.saved
            return
        if expanded(now):
            return
        mode = torch.inference_mode(now.is_inference() or torch.is_inference_mode_enabled())
        with contextlib.suppress(RuntimeError), mode:  # a tensor the copy refuses: left as is
            now.detach().copy_(self.saved)


def _plain_pair(now: Any, live: torch.Tensor, shape: torch.Size) -> bool:
    """Whether ``now`` replaced ``live`` as a conversion does: both plain tensors of one shape
    (FSDP2 swaps its own sharded and unsharded parameters in and out: its ``put_back`` owns
    those)."""
    plain = type(now.detach()) is torch.Tensor and type(live.detach()) is torch.Tensor
    return plain and now.shape == shape


def _plain_parameter(live: torch.Tensor) -> bool:
    """An ``nn.Parameter`` over a plain tensor: ``.data`` can point it at a shadow."""
    return type(live) is torch.nn.Parameter and type(live.detach()) is torch.Tensor


@contextlib.contextmanager
def swapped(
    names: Sequence[str],
    live: Sequence[torch.Tensor],
    average: Callable[[int], tuple[torch.Tensor, bool]],
    copy: bool,
    current: Callable[[], Sequence[Any]] | None = None,
) -> Iterator[None]:
    """Inside the block ``live[i]`` holds ``average(i)[0]`` (``average(i)[1]``: it is the
    shadow itself); restored on exit, also on an exception (``Put.restore``), and copied as
    well into the tensors ``current()`` finds under the names then where a conversion
    replaced them (``Put.put_into``: best effort, one that cannot take them is left as it
    is). Ctrl-C is held while tensors are being put in or taken out, so the model is never
    left half swapped.

    Raises:
        RuntimeError: with ``copy=False``, a shadow was written inside the block (after the
            live weights are restored; a ``KeyboardInterrupt`` or other non-``Exception`` from
            the block is let through instead).
    """
    for name, tensor in zip(names, live, strict=True):  # checked before the first write
        if by_copy(tensor, copy) and expanded(tensor):
            raise ValueError(
                f"swap(): {name!r} is an expanded tensor (stride {tensor.stride()}): its "
                "elements share memory, so no average can be written into it; give the model "
                "its own copy (.contiguous()), or swap(copy=False) for a plain Parameter"
            )
    puts: list[Put] = []
    failed: BaseException | None = None
    try:
        _put_all(puts, live, average, copy)
        yield
    except BaseException as error:
        failed = error
        raise
    finally:
        now = current() if puts and current is not None else None
        written = _restore_all(puts, names, now)
        if written and (failed is None or isinstance(failed, Exception)):
            raise RuntimeError(
                f"swap(copy=False): {sorted(written)[:5]} ({len(written)} in all) were written "
                "inside the block while the model held the EMA's own shadows, so those averages "
                "now hold the writes; the live weights are restored. Use swap() (the default "
                "copies) around code that writes the weights: a train-mode forward (BatchNorm "
                "statistics), an optimizer step, in-place ops"
            ) from failed


@eager  # traced, ``live.data = ...`` and the version reads go wrong (a swap(copy=False) in a
def _put_all(  # compiled function left the model on the shadows, or saw a false write)
    puts: list[Put],
    live: Sequence[torch.Tensor],
    average: Callable[[int], tuple[torch.Tensor, bool]],
    copy: bool,
) -> None:
    """Put ``average(i)`` into ``live[i]``, each ``Put`` appended to ``puts`` as it is made (so
    that an error part way leaves the ones made to be restored), with Ctrl-C held."""
    with HeldInterrupts():
        for i, tensor in enumerate(live):
            value, is_shadow = average(i)
            puts.append(Put(tensor, value, copy, is_shadow))
        forget_derived()  # autocast and parametrize.cached() key their values on the tensor
        # objects the swap keeps: values made before it would stand for the averages


@eager
def _restore_all(puts: list[Put], names: Sequence[str], now: Sequence[Any] | None) -> list[str]:
    """Restore every put, last first, then into the tensors a conversion put in their place;
    return the names whose exposed shadow was written."""
    with HeldInterrupts():
        written = [names[i] for i, put in reversed(list(enumerate(puts))) if put.restore()]
        for put, held in zip(puts, now or (), strict=False):  # conversions' new tensors
            put.put_into(held)
        forget_derived()  # and values of the averages for the live weights
    return written


def by_copy(live: torch.Tensor, copy: bool) -> bool:
    """Whether ``Put`` writes the average into ``live``'s memory (``copy=True``, an inference
    tensor, anything but a plain Parameter) rather than pointing its ``.data`` at it."""
    return copy or live.is_inference() or not _plain_parameter(live)
