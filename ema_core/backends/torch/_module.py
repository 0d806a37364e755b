"""``EMA``: an exponential moving average of a torch model's weights, kept beside the model."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import array_api_compat.torch as xp
import torch

from ema_core import _core
from ema_core._checks import check_decay_value, check_finite
from ema_core._config import Config, power_weight, shadow_dtype_name
from ema_core._types import Step
from ema_core.backends.torch import _dist, _names, _state, _store, _swap
from ema_core.backends.torch._options import checked_step, resolve_config


class EMA:
    """The EMA of a module's parameters and buffers (or of named tensors), updated in place.

    ``shadow_t = shadow_{t-1} + (1 - d_t) * (live_t - shadow_{t-1})``: ``decay`` is the weight
    on the old average (torch's ``lerp_`` and swa_utils take ``1 - decay``). The model is never
    deep-copied: the EMA keeps one shadow tensor per tracked tensor, float32 for bf16/fp16
    params unless ``dtype`` says otherwise. Updates run fused (``torch._foreach_*``) and never
    read a tensor on the host, so ``update`` can be captured in a CUDA graph with a device step.

    Args:
        module_or_named_tensors: an ``nn.Module`` (also DDP-wrapped or ``torch.compile``d: the
            ``module.`` / ``_orig_mod.`` prefixes are dropped), a mapping name -> tensor or an
            iterable of (name, tensor) pairs. Build the EMA after moving the model to its device.
        decay: a constant decay in [0, 1] (default 0.9999). Pass at most one of ``decay``,
            ``schedule`` and ``config``.
        schedule: a ``Schedule`` or callable ``t -> decay``.
        config: a ``Config`` (schedule, init policy, interval, integer leaves, finite guard).
        dtype: the shadow dtype of floating tensors (a ``torch.dtype`` or name, or ``"same"``).
        device: where the shadows live; ``"cpu"`` for a CUDA model keeps them in pinned host
            memory, updated with non-blocking copies.
        buffers: floating buffers are ``"copy"``-ed at every applied update (BatchNorm
            statistics), ``"average"``-d like parameters, or ``"skip"``-ped. ``None`` takes
            ``config.buffers`` when a config is given, else ``"copy"``. Integer buffers are
            copied (they follow ``Config.non_float``).
        include: keep only the names matching a glob, a list of globs or a predicate.
        exclude: drop the names matching a glob, a list of globs or a predicate.

    Raises:
        TypeError: an argument of the wrong type. ValueError: a value out of range, no tensor
            left to track, or two tensors with one name.

    Example:
        >>> import torch
        >>> from ema_core.backends.torch import EMA
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
        self.config = resolve_config(decay, schedule, config, dtype, buffers)
        target = None if device is None else torch.device(device)
        self._fsdp = _dist.fsdp_modules(module_or_named_tensors)
        _dist.reshard(self._fsdp)  # track the sharded params, never all-gathered copies
        _dist.check_sharded(self._fsdp)
        tracked = _names.collect(module_or_named_tensors, self.config.buffers, include, exclude)
        self.names = tuple(t.name for t in tracked)
        self._live = [t.tensor for t in tracked]
        self._kinds = [t.kind for t in tracked]
        zeros = self.config.init == "zeros"
        self._shadow = [
            _store.make_shadow(t.tensor, self._shadow_dtype(t), target, zeros and t.kind == "float")
            for t in tracked
        ]
        moving = [i for i, t in enumerate(tracked) if self._moves(t)]
        self._store = _store.store_for(
            [self._shadow[i] for i in moving],
            [self._live[i] for i in moving],
            [self._kinds[i] for i in moving],
        )
        self._step: int | torch.Tensor = 0
        self._weight: float | torch.Tensor = 0.0 if zeros else 1.0
        self._swapped = False

    @property
    def step(self) -> int | torch.Tensor:
        """The number of updates applied (or the last ``step`` given to ``update``)."""
        return self._step

    def update(self, step: Step | None = None) -> None:
        """Move every shadow toward its live tensor by the decay of update ``step``.

        Args:
            step: t, the optimizer steps taken counting this one: a Python int or a 0-d integer
                tensor (on the device, for CUDA graphs). ``None`` counts updates internally.

        Raises:
            TypeError / ValueError: a bad ``step`` or decay; RuntimeError inside ``swap()``.
        """
        self._refuse_in_swap("update")
        t = self._step + 1 if step is None else checked_step(step)
        decay, rate = self.config.decay_and_rate(t)
        if isinstance(decay, float):
            check_decay_value(decay, f"the decay at step {t}")
        if self.config.guard_finite:
            paths = [(("key", n),) for n in self.names]
            check_finite(xp, self._live, self._kinds, paths)
        with torch.no_grad():
            self._store.apply(xp, decay, rate)
            if self.config.init == "zeros":
                self._weight = self._weight * decay + rate
        self._step = t

    @property
    def average(self) -> dict[str, torch.Tensor]:
        """Name -> the average (bias-corrected with ``init="zeros"``); the shadows themselves
        otherwise, which the EMA keeps updating: copy them to keep a snapshot."""
        self._store.wait()
        return {n: self._read(i) for i, n in enumerate(self.names)}

    @contextlib.contextmanager
    def swap(self) -> Iterator[None]:
        """Inside the block the tracked tensors hold the averages; they are restored on exit,
        also on an exception, bit for bit. Where dtype and device match (and no bias correction
        applies) the live tensor points at the shadow's storage: no copy, no allocation.
        DTensors (FSDP2) get the average copied into their shard instead (see ``_swap``)."""
        self._refuse_in_swap("swap")
        self._store.wait()
        undo: list[Callable[[], None]] = []
        _dist.reshard(self._fsdp)  # the next forward all-gathers the swapped shards
        self._swapped = True
        try:
            for i, live in enumerate(self._live):
                undo.append(_swap.put(live, self._read(i)))
            yield
        finally:
            for restore in reversed(undo):
                restore()
            _dist.reshard(self._fsdp)  # drop unsharded params gathered from the averages
            self._swapped = False

    def copy_to(self, module_or_named_tensors: Any, /) -> None:
        """Write the averages into the tensors of the same names (a module, mapping or pairs).

        Raises:
            ValueError: a tracked name is missing there or has another shape (nothing written).
        """
        found = _names.named_tensors(module_or_named_tensors, "average", "module_or_named_tensors")
        targets = {name: tensor for name, tensor, _ in found}
        for name, shadow in zip(self.names, self._shadow, strict=True):
            if name not in targets or targets[name].shape != shadow.shape:
                got = tuple(targets[name].shape) if name in targets else "no tensor"
                raise ValueError(f"copy_to: {name!r} with shape {tuple(shadow.shape)} has {got}")
        with torch.no_grad():
            for name, average in self.average.items():
                targets[name].copy_(average)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: shadows by name, the counter, the bias-correction weight,
        the config (as text) and the buffer policy; loadable with ``weights_only=True``."""
        self._store.wait()
        return _state.pack(self.names, self._shadow, self._step, self._weight, repr(self.config))

    def load_state_dict(self, state_dict: Mapping[str, Any], /, *, strict: bool = True) -> None:
        """Restore shadows, counter and weight from ``state_dict``; the live model is untouched.

        Everything is checked before anything is written. ``strict`` requires the same names,
        config and buffer policy; shapes and dtypes must always match.
        """
        self._refuse_in_swap("load_state_dict")
        loaded = _state.check(state_dict, self.names, self._shadow, repr(self.config), strict)
        step, weight = _state.unpack_step(state_dict)
        self._store.wait()
        with torch.no_grad():
            for name, shadow in zip(self.names, self._shadow, strict=True):
                if name in loaded:
                    _dist.copy_into(shadow, loaded[name])
        self._step, self._weight = step, weight

    def __repr__(self) -> str:
        return f"EMA({len(self.names)} tensors, step={self._step!r}, config={self.config!r})"

    def _read(self, i: int) -> torch.Tensor:
        """The average of tracked tensor i: the shadow, or ``shadow / weight`` for ``"zeros"``."""
        cfg = self.config
        if self._kinds[i] != "float" or cfg.init != "zeros" or cfg.correction == "none":
            return self._shadow[i]
        weight = self._weight
        if cfg.correction == "power":
            weight = power_weight(cfg.schedule, self._step)  # type: ignore[arg-type]
        return _core.correct(xp, self._shadow[i], weight)  # type: ignore[no-any-return]

    def _shadow_dtype(self, tracked: _names.Tracked) -> torch.dtype:
        dtype: torch.dtype = tracked.tensor.dtype
        if tracked.kind != "float" or dtype.is_complex:
            return dtype
        name = shadow_dtype_name(self.config.dtype, str(dtype).removeprefix("torch."))
        return getattr(torch, name)  # type: ignore[no-any-return]

    def _moves(self, tracked: _names.Tracked) -> bool:
        """Whether an update touches this tensor (integer ones follow ``Config.non_float``)."""
        integer = not (tracked.tensor.is_floating_point() or tracked.tensor.is_complex())
        if integer and self.config.non_float == "error":
            raise TypeError(
                f"{tracked.name!r} has dtype {tracked.tensor.dtype} and the config has "
                "non_float='error'; use 'copy', 'freeze' or exclude it"
            )
        return not (integer and self.config.non_float == "freeze")

    def _refuse_in_swap(self, what: str) -> None:
        if self._swapped:
            raise RuntimeError(f"{what}() inside swap(): leave the swap() block first")
