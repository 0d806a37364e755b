"""``EMA``: an exponential moving average of a torch model's weights, kept beside the model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ema_core._config import Config
from ema_core._types import Step, Value
from ema_core.torch import _averages, _copies, _fsdp, _names, _options, _refusals, _steps, _swap
from ema_core.torch._eager import eager
from ema_core.torch._rules import resolve_config


class EMA:
    """The EMA of a module's parameters and buffers (or of named tensors), updated in place.

    ``shadow_t = shadow_{t-1} + (1 - d_t) * (live_t - shadow_{t-1})``: ``decay`` is the weight
    on the old average (torch's ``lerp_`` and swa_utils take ``1 - decay``). The model is never
    deep-copied: the EMA keeps one shadow tensor per tracked tensor, float32 for bf16/fp16
    params unless ``dtype`` says otherwise. Updates run fused (``torch._foreach_*``) and never
    read a tensor on the host, so ``update`` can be captured in a CUDA graph with a device step.

    Args:
        module_or_named_tensors: an ``nn.Module`` (also DDP-wrapped, ``torch.compile``d or
            activation-checkpointed: the wrappers' ``module.`` / ``_orig_mod.`` /
            ``_checkpoint_wrapped_module.`` are dropped), a mapping name -> tensor or an
            iterable of (name, tensor) pairs. Build the EMA after moving the model to its device.
        decay: a constant decay in [0, 1] (default 0.9999). Pass at most one of ``decay``,
            ``schedule`` and ``config``.
        schedule: a ``Schedule`` or callable ``t -> decay``.
        config: a ``Config`` (schedule, init policy, interval, integer leaves, finite guard).
        dtype: the shadow dtype of floating tensors (a ``torch.dtype`` or name, or ``"same"``).
        device: where the shadows live; ``"cpu"`` for a CUDA model keeps them in pinned host
            memory, updated with non-blocking copies.
        buffers: floating buffers are ``"copy"``-ed at every ``update()`` call, also one of
            decay 1 where the averages skip (BatchNorm statistics), ``"average"``-d like
            parameters, or ``"skip"``-ped (every buffer left out, integer ones too). ``None``
            takes ``config.buffers`` when a config is given, else ``"copy"``. Otherwise integer
            buffers follow ``Config.non_float`` (copied alike).
        include: keep only the names matching a glob, a list of globs or a predicate.
        exclude: drop the names matching a glob, a list of globs or a predicate.

    Raises:
        TypeError: an argument of the wrong type. ValueError: a value out of range, no tensor
            left to track, or two tensors with one name.

    Example:
        >>> import torch
        >>> from ema_core.torch import EMA
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> ema = EMA(model, decay=0.75)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(4.0)
        >>> ema.update()
        >>> ema.average["weight"]
        tensor([[1., 1.]])
        >>> with ema.swap():  # the model holds the average inside the block
        ...     print(model.weight.data)
        tensor([[1., 1.]])
        >>> print(model.weight.data)
        tensor([[4., 4.]])
    """

    def __init__(
        self,
        module_or_named_tensors: Any,
        /,
        *,
        decay: float | None = None,
        schedule: Any = None,
        config: Config | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        buffers: _names.BufferPolicy | None = None,
        include: _names.NameFilter = None,
        exclude: _names.NameFilter = None,
    ) -> None:
        target = _refusals.device_of(device)
        self.config = resolve_config(decay, schedule, config, dtype, buffers)
        self._shards = _fsdp.Shards(module_or_named_tensors)  # FSDP2's, resharded
        source = module_or_named_tensors
        tracked = _names.collect(source, self.config.buffers, include, exclude)
        self.names = tuple(t.name for t in tracked)
        root = source if isinstance(source, torch.nn.Module) else None
        self._bound = _options.Binding(self.config, root, tracked, target)
        self._step: int | torch.Tensor = 0
        self._weight: float | torch.Tensor = 0.0 if self.config.init == "zeros" else 1.0
        self._swapped = False
        self._lending = False  # inside swap(copy=False): the model may hold the shadows

    @property
    def step(self) -> int | torch.Tensor:
        """The number of updates applied (or the last ``step`` given to ``update``)."""
        return self._step

    @eager  # inside a compiled function: run eagerly (a graph break)
    def update(self, step: Step | None = None, /, **named: Step | None) -> None:
        """Move every averaged shadow toward its live tensor by the decay of update ``step``;
        copied tensors (buffers, integers) take their live values, also when the decay is 1.

        Ctrl-C waits until an update is complete. An update cut short by another exception
        is completed by the next call without applying its finished groups again (a later
        or device step is then applied after it). Tensors the module replaced or converted
        since (``model.weight = ...``, ``model.to(dtype)``) are followed by name.

        Args:
            step: t, the optimizer steps taken counting this one: a Python int or a 0-d integer
                tensor (on the device, for CUDA graphs). ``None`` counts updates internally (a
                tensor counter stops at its dtype's largest value).

        Raises:
            TypeError / ValueError: a bad ``step`` (a module or its parameters too, as timm and
                torch_ema take them) or decay, a host ``step`` below the EMA's (device steps
                are trusted), a tracked tensor gone, reshaped or on the meta device;
                RuntimeError inside ``swap()``.
        """
        _steps.update(self, step, named)

    @property
    def average(self) -> dict[str, torch.Tensor]:
        """Name -> the average (bias-corrected with ``init="zeros"``, in float32 over a half
        shadow); the shadows themselves otherwise, which the EMA keeps updating: copy them to
        keep a snapshot."""
        self._settle(follow=True)
        return {n: self._read(i) for i, n in enumerate(self.names)}

    @contextlib.contextmanager
    def swap(self, *, copy: bool = True) -> Iterator[None]:
        """Inside the block the tracked tensors hold the averages; on exit, also after an
        exception, they get their live values back bit for bit.

        ``copy=True`` (default) copies the averages into the model's own storage (its live
        values put aside): writes inside the block (a train-mode forward, an optimizer step)
        never reach the EMA. ``copy=False`` points the model at the shadows where dtypes match
        (no copy), for read-only use: a write then changes the EMA, and ``swap`` raises
        ``RuntimeError`` on exit when it sees one (see ``_swap``).

        Raises:
            TypeError: ``copy`` is not a bool. RuntimeError: nested in another ``swap()``, or
                (``copy=False``) an average was written inside the block.
        """
        self._refuse_in_swap("swap")
        if not isinstance(copy, bool):
            raise TypeError(f"swap(copy=...) must be a bool, got {copy!r}")
        self._settle()
        self._shards.put_back()  # the next forward all-gathers the swapped shards
        self._bound.refresh(objects=True)
        if self._bound.store.refusal is not None:  # a param resharded since: as update() says
            raise ValueError(self._bound.store.refusal)
        self._swapped, self._lending = True, not copy
        try:
            bound = self._bound
            with _swap.swapped(self.names, bound.live, self._exposed, copy, bound.watch.owners):
                yield
        finally:
            self._shards.put_back()  # drop unsharded params gathered from the averages
            self._swapped = self._lending = False

    def copy_to(self, module_or_named_tensors: Any, /) -> None:
        """Write the averages into the tensors of the same names (a module, mapping or pairs),
        cast to their dtype.

        Raises:
            ValueError: a tracked name is missing there, has another shape, or its tensor has
                no writable data (meta, sparse, expanded, inference-mode). TypeError: a float
                average into an integer tensor, a complex one into a real tensor, or an integer
                one into another dtype. Nothing is written then.
        """
        _copies.copy_to(self, module_or_named_tensors)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: shadows by name, the counter, the bias-correction weight,
        the config (as text) and the buffer policy; loadable with ``weights_only=True``."""
        return _copies.state_dict(self)

    def load_state_dict(self, state_dict: Mapping[str, Any], /, *, strict: bool = True) -> None:
        """Restore shadows, counter and weight from ``state_dict``; the live model is untouched.

        Everything is checked before anything is written (see ``_state.check_load``). ``strict``
        requires the same names, config and buffer policy; shapes and dtypes must always
        match. An update left unfinished by an exception is dropped.
        """
        _copies.load_state_dict(self, state_dict, strict)

    def _checked_state(self, state_dict: Mapping[str, Any], strict: bool) -> Any:
        """What ``load_state_dict`` checks before its first write (refused inside ``swap``; the
        model's replaced tensors followed first): ``_state.check_load``'s loaded shadows."""
        return _copies.checked_state(self, state_dict, strict)

    def __repr__(self) -> str:
        return f"EMA({len(self.names)} tensors, step={self._step!r}, config={self.config!r})"

    def __deepcopy__(self, memo: dict[int, Any]) -> EMA:
        """``copy.deepcopy``: an independent EMA (its own shadows, step and weight) of the same
        model, never a hidden copy of it; of the model's copy when the same ``deepcopy`` copied
        the model before the EMA (``copy.deepcopy((model, ema))``). Made as a new ``EMA`` that
        loads this one's ``state_dict()``, so it is also usable after a copy made in ``swap()``."""
        return _copies.deep_copy(self, memo, EMA)

    def __copy__(self) -> EMA:
        """``copy.copy``: as ``copy.deepcopy`` (an EMA shares no shadow with its copy)."""
        return self.__deepcopy__({})

    def __getstate__(self) -> dict[str, Any]:
        """Pickling (``torch.save`` of the EMA beside its model): a copy taken inside ``swap()``
        is not inside one (the block that restores the live weights is this object's), and its
        model, pickled with it, holds the averages as its weights (a snapshot, not a checkpoint
        to resume training from).

        Raises:
            RuntimeError: inside ``swap(copy=False)``, where the model's parameters hold the
                shadows' own storage: ``torch.save`` keeps storage shared within a file, so
                the loaded model would write its EMA at every optimizer step
                (``copy.deepcopy`` of the EMA makes a new one from ``state_dict()``: not
                refused; a deepcopy of a model that holds its EMA copies it as pickling does).
        """
        return _copies.pickled_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling: the host engine's views kept are dropped (pickled as copies of the old
        memory) and the watch is made to see a change (it holds the old addresses: a loaded
        tensor at an old address would have passed for unchanged, and the engine then blended
        into those copies), so the next look rebinds to the loaded tensors. The module is not
        read here: an EMA held by its own model (``model.ema = EMA(model)``) is unpickled before
        that model is."""
        _copies.unpickled(self, state)

    def _apply(self, t: int | torch.Tensor, decay: Value, rate: Value) -> None:
        """Update at step t (or finish its pending update) and count the step."""
        _steps.apply(self, t, decay, rate)

    def _settle(self, follow: bool = False) -> None:
        """Complete a pending update and wait for the store's copies (``follow``: first follow
        a ``model.to(dtype)``, ``Binding.follow``, outside ``swap()``): the shadows are final."""
        _steps.settle(self, follow)

    def _exposed(self, i: int) -> tuple[torch.Tensor, bool]:
        """The average of tracked tensor i, and whether it is the shadow itself."""
        average = self._read(i)
        return average, average is self._bound.shadows[i]

    def _read(self, i: int) -> torch.Tensor:
        """The average of tracked tensor i: the shadow, or ``shadow / weight`` for ``"zeros"``."""
        kind, shadow = self._bound.kinds[i], self._bound.shadows[i]
        return _averages.read(self.config, kind, shadow, self._weight, self._step)

    def _refuse_in_swap(self, what: str) -> None:
        if self._swapped:
            raise RuntimeError(f"{what}() inside swap(): leave the swap() block first")
