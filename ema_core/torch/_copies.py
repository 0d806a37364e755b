"""An ``EMA``'s averages and state copied out and back in: ``copy_to`` a model, checkpoints
(``state_dict`` / ``load_state_dict``), ``copy.deepcopy``, which never copies the model, and
pickling (refused inside ``swap(copy=False)``)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar, cast

import torch

from ema_core._config import Config, divisor
from ema_core._config_text import config_text
from ema_core.torch import _averages, _dtensor, _fsdp, _names, _options, _rules, _state
from ema_core.torch._interrupts import HeldInterrupts
from ema_core.torch._prefixes import keeping, renames
from ema_core.torch._tied_names import tied_aliases


class Copied(Protocol):
    """What copies and checkpoints read and write of an ``EMA``."""

    names: tuple[str, ...]
    config: Config
    _bound: _options.Binding
    _step: int | torch.Tensor
    _weight: float | torch.Tensor

    @property
    def average(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def __getstate__(self) -> dict[str, Any]: ...

    def __setstate__(self, state: dict[str, Any]) -> None: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], /, *, strict: bool = True) -> None: ...

    def _settle(self, follow: bool = False) -> None: ...

    def _refuse_in_swap(self, what: str) -> None: ...

    def _checked_state(self, state_dict: Mapping[str, Any], strict: bool) -> Any: ...


T = TypeVar("T", bound=Copied)


def copy_to(ema: Copied, source: Any) -> None:
    """``EMA.copy_to``: the averages written into the tensors of the same names in ``source``
    (an FSDP2 model resharded first: a forward with ``reshard_after_forward=False`` leaves
    all-gathered copies, which FSDP2 frees at the next reshard without writing them back)."""
    ema._settle(follow=True)
    _fsdp.Shards(source)
    shadows = ema._bound.shadows
    transient = _names.transient_buffers(ema._bound.root, ema.names, ema._bound.prefix)
    frozen = ema.config.non_float == "freeze"  # integers at their value from construction
    held = (n for n, s in zip(ema.names, shadows, strict=True) if not _rules.floating(s))
    skip = frozenset(held) if frozen else frozenset()
    tied = tied_aliases(ema._bound.root, ema._bound.prefix, ema.names, ema._bound.tied_raw())
    _averages.copy_averages(
        ema.names, shadows, lambda: ema.average, source, transient, skip, aliases=tied
    )


def state_dict(ema: Copied) -> dict[str, Any]:
    """``EMA.state_dict``: the checkpoint of the settled shadows (``_state.pack``)."""
    ema._settle(follow=True)
    text = config_text(ema.config)
    return _state.pack(ema.names, ema._bound.shadows, ema._step, ema._weight, text)


def restart(ema: Copied) -> bool:
    """The shadows set in place to the module's tensors as they are now, as ``EMA(module)``
    starts them (zeros under ``init="zeros"``), with step 0 and the starting weight: for an
    EMA that took no update and whose module's weights were set since (the Lightning
    callback's first batch). No second copy of the shadows is made. False, with nothing
    written, when the module's tensors no longer fit the shadows (a tensor gone, reshaped, or
    turned between floating and integer): build a new EMA then."""
    ema._refuse_in_swap("restart")
    try:
        ema._bound.refresh(objects=True)  # follows replaced, converted and moved tensors
    except ValueError:
        return False
    zeros = ema.config.init == "zeros"
    bound = ema._bound
    bound.store.wait()
    with torch.no_grad(), HeldInterrupts():
        for tracked, shadow in zip(bound.tracked, bound.shadows, strict=True):
            mine = _dtensor.local(shadow)  # shard by shard under FSDP2: no collective
            if zeros and tracked.kind == "float":
                mine.zero_()
            else:
                mine.copy_(_dtensor.local(tracked.tensor))
        ema._step, ema._weight, bound.pending = 0, 0.0 if zeros else 1.0, None
    return True


def load_state_dict(ema: Copied, state_dict: Mapping[str, Any], strict: bool) -> None:
    """``EMA.load_state_dict``: everything checked, then shadows, counter and weight written.
    Under ``init="zeros"`` a shadow ``strict=False`` does not load is made readable under the
    loaded weight (``_kept``): its average stays what it was, or starts at its tensor's value
    when the EMA had not updated."""
    loaded = ema._checked_state(state_dict, strict)
    step, weight = _state.unpack_step(state_dict)
    kept = _kept(ema, loaded, step, weight)
    ema._bound.store.wait()
    with torch.no_grad(), HeldInterrupts():
        _averages.load_shadows(ema.names, ema._bound.shadows, loaded)
        kept()
        ema._step, ema._weight, ema._bound.pending = step, weight, None


def checked_state(ema: Copied, state_dict: Mapping[str, Any], strict: bool) -> Any:
    """``EMA._checked_state``: ``_state.check_load``'s loaded shadows, before any write; a
    loose load that would leave the shadows it does not load unreadable (``_kept``) refused."""
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool (True or False), got {strict!r:.80}")
    ema._refuse_in_swap("load_state_dict")
    ema._bound.refresh(objects=True)
    state_dict = _renamed(ema, state_dict)
    loaded = _state.check_load(state_dict, ema.names, ema._bound.shadows, ema.config, strict)
    _kept(ema, loaded, *_state.unpack_step(state_dict))
    return loaded


def _renamed(ema: Copied, state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """``state_dict`` with shadows saved under the names of before 2026-12-06 (every leading
    ``module.`` dropped, also a model's own ``module`` child's) under this EMA's names."""
    shadow = state_dict.get("shadow") if isinstance(state_dict, Mapping) else None
    if not isinstance(shadow, Mapping):
        return state_dict  # check_load says what is wrong
    moved = legacy_renames(ema, [k for k in shadow if isinstance(k, str)])
    if not moved:
        return state_dict
    return {**state_dict, "shadow": {moved.get(k, k): v for k, v in shadow.items()}}


def legacy_renames(ema: Copied, saved: list[str]) -> dict[str, str]:
    """``_prefixes.renames`` of ``saved`` for this EMA: its tracked names, and every tensor of
    its model (or its named tensors) as the model names it now."""
    bound = ema._bound
    if bound.root is None:
        model = [(t.name, t.raw or t.name) for t in bound.tracked]
    else:
        found = _names.named_tensors(bound.root, "average", "module", bound.prefix)
        model = [(name, raw) for name, _, _, raw in found]
    return renames(saved, ema.names, model)


def _kept(ema: Copied, loaded: Mapping[str, Any], step: Any, weight: Any) -> Callable[[], None]:
    """The writes that keep the raw shadows of a zeros-started EMA (``init="zeros"``, read
    through a divisor) that a ``strict=False`` load leaves readable under the loaded step and
    weight: each scaled by the new divisor over the old one; or, when the EMA had not updated
    (old divisor 0: its shadows hold no average yet), each set to its tensor's value times the
    new divisor, so that its average starts at that value (as ``init="copy"`` starts).

    Raises:
        ValueError: the loaded divisor is 0 (a zeros-started state before its first update)
            while the kept shadows hold averages: they could not be read after it.
    """
    config = ema.config
    if config.init != "zeros" or config.correction == "none":
        return _nothing
    bound = ema._bound
    rows = zip(ema.names, bound.shadows, bound.live, bound.kinds, strict=True)
    kept = [(n, s, p) for n, s, p, kind in rows if n not in loaded and kind == "float"]
    if not kept:
        return _nothing
    old = float(divisor(config, ema._weight, ema._step))
    new = float(divisor(config, weight, step))
    if new == 0.0 and old == 0.0:
        return _nothing  # neither has updated: the shadows stay as they are (zeros)
    if new == 0.0:
        raise ValueError(
            f"state_dict was saved before its EMA's first update (weight 0), and strict=False "
            f"would keep {[n for n, _, _ in kept][:5]} ({len(kept)} in all) as they are: their "
            "averages could not be read under its weight; load it with strict=True, or a "
            "state saved after an update"
        )

    def write() -> None:
        for _, shadow, live in kept:
            if old == 0.0:  # the product rounded once into the shadow's dtype
                wide = torch.promote_types(
                    torch.promote_types(shadow.dtype, live.dtype), torch.float32
                )
                shadow.copy_(live.detach().to(wide) * new)
            else:
                shadow.mul_(new / old)

    return write


def _nothing() -> None:
    return None


def deep_copy(ema: Copied, memo: dict[int, Any], make: Callable[..., T]) -> T:
    """``EMA.__deepcopy__``: ``make`` (the ``EMA`` class) over the same model, or over its copy
    in ``memo``, loaded with ``ema``'s ``state_dict()``; recorded in ``memo``."""
    root = ema._bound.root
    source: Any = memo.get(id(root), root)
    if isinstance(source, torch.nn.Module) and "_parameters" not in vars(source):
        # the model is being copied and holds this EMA (model.ema = EMA(model)): its copy is
        # not built yet, so copy as pickling does; the copy rebinds to it at its first look
        shell: Any = object.__new__(type(ema))
        memo[id(ema)] = shell
        shell.__setstate__(copy.deepcopy(ema.__getstate__(), memo))
        return cast(T, shell)
    if root is None:  # named tensors: each one's copy, if this deepcopy made one
        source = {t.name: memo.get(id(t.tensor), t.tensor) for t in ema._bound.tracked}
    names = frozenset(ema.names)
    with keeping(source, ema._bound.prefix):  # the names the copied EMA gave, kept
        new = make(source, config=ema.config, device=ema._bound.target, include=names.__contains__)
    new.load_state_dict(ema.state_dict())
    memo[id(ema)] = new
    return new


def pickled_state(ema: Copied) -> dict[str, Any]:
    """``EMA.__getstate__``: the EMA's attributes, not inside a swap; refused inside
    ``swap(copy=False)`` (see there)."""
    if getattr(ema, "_lending", False):
        raise RuntimeError(
            "an EMA cannot be pickled (torch.save, pickle) inside "
            "swap(copy=False): the model holds the EMA's own shadows there, and the copies "
            "would share them (training the loaded model would write its EMA); save it "
            "outside the block (inside swap(), which copies, a model saved with it holds "
            "the averages as its weights)"
        )
    ema._bound.store.wait()  # host shadows' copies landed (and no CUDA event kept)
    return {**ema.__dict__, "_swapped": False, "_lending": False}


def unpickled(ema: Copied, state: dict[str, Any]) -> None:
    """``EMA.__setstate__``: the attributes back, the store's kept views and the watch's
    addresses forgotten (see there)."""
    ema.__dict__.update(state)
    ema._bound.store.forget()
    ema._bound.watch.forget()
