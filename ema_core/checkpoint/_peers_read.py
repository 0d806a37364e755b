"""What each peer library writes for its EMA, read into one form: ``PeerState``.

A reader checks the keys and types of one peer's state dict and returns the shadows (by name,
or as a list in parameter order), the peer's update counter and the hyperparameters the state
holds, under the names of that peer's preset; ``by_name`` matches named shadows to an EMA's
names (a tied tensor may appear under each of its names, with the same bits). Nothing here
writes to an EMA.

| peer | shadows | counter | hyperparameters |
|---|---|---|---|
| torch_ema | ``shadow_params`` (list) | ``num_updates`` or None | ``decay``, ``use_num_updates`` |
| diffusers | ``shadow_params`` (list) | ``optimization_step`` | ``decay`` ... ``power`` |
| timm | the EMA module's tensors (``module.`` optional) | none: the caller's ``step`` | none |
| ema_pytorch(_karras) | ``ema_model.*`` (not ``online_model.*``) | ``step``, ``initted`` | none |
| swa_utils | ``module.*`` | ``n_averaged`` | none |
| mmengine | ``module.*`` | ``steps`` | none |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ema_core.checkpoint._arrays import torch_bytes
from ema_core.presets._args import check_count
from ema_core.torch._prefixes import drop_wrapped

#: diffusers ``EMAModel.state_dict()`` hyperparameters (the names of ``presets.diffusers``).
DIFFUSERS_ARGS = ("decay", "min_decay", "update_after_step", "use_ema_warmup", "inv_gamma", "power")


@dataclass(frozen=True)
class PeerState:
    """One peer state: shadows by name (module peers) or in parameter order (list peers), the
    peer's count of updates (None where it keeps none) and the preset arguments it stores."""

    shadows: dict[str, Any] | list[Any]
    counter: int | None
    args: dict[str, Any] = field(default_factory=dict)


def torch_ema(state: Mapping[str, Any]) -> PeerState:
    """torch-ema's ``state_dict()``: decay, num_updates, shadow_params, collected_params."""
    _require(state, "torch_ema", ("decay", "num_updates", "shadow_params"))
    counter = state["num_updates"]
    if counter is not None:
        counter = check_count("state_dict['num_updates']", counter)
    args = {"decay": state["decay"], "use_num_updates": counter is not None}
    return PeerState(_tensor_list(state, "torch_ema"), counter, args)


def diffusers(state: Mapping[str, Any]) -> PeerState:
    """diffusers ``EMAModel.state_dict()``: hyperparameters, optimization_step, shadow_params."""
    _require(state, "diffusers", ("optimization_step", "shadow_params"))
    counter = check_count("state_dict['optimization_step']", state["optimization_step"])
    args = {k: state[k] for k in DIFFUSERS_ARGS if k in state}
    return PeerState(_tensor_list(state, "diffusers"), counter, args)


def timm(state: Mapping[str, Any]) -> PeerState:
    """timm ``ModelEmaV3``: its module's state dict (``state_dict_ema`` of timm's checkpoints),
    or the ``ModelEmaV3``'s own (names under ``module.``). timm stores no counter."""
    if "state_dict_ema" in state:
        raise ValueError(
            "state_dict is a whole timm checkpoint (it has 'state_dict_ema'): pass "
            "checkpoint['state_dict_ema'], the EMA module's state dict"
        )
    return PeerState(_module_tensors(state, "timm", "", ()), None)


def ema_pytorch(state: Mapping[str, Any]) -> PeerState:
    """ema-pytorch ``EMA`` / ``KarrasEMA``: ``ema_model.*``, ``step``, ``initted`` (and, for
    ``EMA``, the online model under ``online_model.*``, which is not the average)."""
    _require(state, "ema_pytorch", ("step", "initted"))
    counter = _counter(state, "step")
    initted = state["initted"]
    if not (
        isinstance(initted, torch.Tensor) and initted.ndim == 0 and initted.dtype == torch.bool
    ):
        raise TypeError(f"state_dict['initted'] must be a 0-d bool tensor, got {initted!r:.80}")
    if bool(initted) != (counter > 0):
        raise ValueError(
            f"state_dict['initted'] is {bool(initted)} at step {counter}: ema-pytorch copies the "
            "model on its first update, so initted is True exactly when step > 0"
        )
    shadows = _module_tensors(state, "ema_pytorch", "ema_model.", ("step", "initted"))
    return PeerState(shadows, counter)


def swa_utils(state: Mapping[str, Any]) -> PeerState:
    """torch ``AveragedModel``: ``module.*`` and ``n_averaged``."""
    _require(state, "swa_utils", ("n_averaged",))
    shadows = _module_tensors(state, "swa_utils", "module.", ("n_averaged",))
    return PeerState(shadows, _counter(state, "n_averaged"))


def mmengine(state: Mapping[str, Any]) -> PeerState:
    """mmengine ``ExponentialMovingAverage`` / ``MomentumAnnealingEMA``: ``module.*``, ``steps``."""
    _require(state, "mmengine", ("steps",))
    shadows = _module_tensors(state, "mmengine", "module.", ("steps",))
    return PeerState(shadows, _counter(state, "steps"))


def by_name(
    peer: str,
    shadows: dict[str, Any] | list[Any],
    names: tuple[str, ...],
    tied: dict[str, str],
    optional: frozenset[str] = frozenset(),
    untracked: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Shadows by the EMA's names: a list is in parameter order, one entry per tracked name; a
    dict may also hold a tracked tensor under the model's other names of it (``tied``: alias ->
    name, tied weights), which must then hold the same bits. A name in ``optional`` (the
    module's non-persistent buffers, which ``module.state_dict()`` leaves out) may be absent
    from a dict: it is then left out of the result. A dict's entries of ``untracked`` names
    (the module's tensors the EMA leaves out) are skipped."""
    if isinstance(shadows, list):
        if len(shadows) != len(names):
            raise ValueError(
                f"the {peer} state has {len(shadows)} shadow_params; this EMA tracks {len(names)} "
                "tensors: build it on the parameters the peer was given, in the same order (a "
                "peer given model.parameters() keeps a shadow of each, frozen ones included; "
                "one given only the trainable ones: build this EMA with exclude= the frozen "
                "ones)"
            )
        return dict(zip(names, shadows, strict=True))
    shadows = _unwrapped(shadows, names)
    keys = {n: [n] for n in names}
    for alias, name in tied.items():
        keys[name].append(alias)
    found = {n: [k for k in ks if k in shadows] for n, ks in keys.items()}
    missing = [n for n in names if not found[n] and n not in optional]
    unexpected = [k for k in shadows if k not in keys and k not in tied and k not in untracked]
    if missing or unexpected:
        raise ValueError(
            f"the {peer} state does not match this EMA: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]} ({len(missing)} and {len(unexpected)} in all)"
        )
    return {n: _one_of(peer, n, found[n], shadows) for n in names if found[n]}


def _unwrapped(shadows: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``shadows`` with a leading ``module.`` that every key has removed, one at a time, until a
    key is one of ``names`` (the peer averaged a wrapped model; a model's own ``module``
    child keeps its name)."""
    keys, wanted = list(shadows), set(names)
    while keys and not wanted.intersection(keys) and all(k.startswith("module.") for k in keys):
        keys = [k.removeprefix("module.") for k in keys]
    return dict(zip(keys, shadows.values(), strict=True))


def _one_of(peer: str, name: str, keys: list[str], shadows: dict[str, Any]) -> Any:
    """The entry of tracked ``name`` under ``keys`` (its name and the model's other names of
    it), which must all hold the same bits."""
    first = shadows[keys[0]]
    for key in keys[1:]:
        for k in (keys[0], key):
            if not isinstance(shadows[k], torch.Tensor):
                raise TypeError(
                    f"the {peer} state's {k!r} must be a tensor, got {type(shadows[k]).__name__}"
                )
        if not _same_bits(first, shadows[key]):
            raise ValueError(
                f"the {peer} state's {keys[0]!r} and {key!r} differ, but this model ties them "
                f"(one tensor, tracked as {name!r}): the state is not of this model's EMA"
            )
    return first


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors have the same dtype, shape and bits (NaNs included)."""
    if a is b:
        return True
    if a.dtype != b.dtype or a.shape != b.shape or a.is_meta or b.is_meta:
        return False
    return torch.equal(torch_bytes(a), torch_bytes(b.to(a.device)))


READERS: dict[str, Callable[[Mapping[str, Any]], PeerState]] = {
    "torch_ema": torch_ema,
    "timm": timm,
    "ema_pytorch": ema_pytorch,
    "ema_pytorch_karras": ema_pytorch,
    "diffusers": diffusers,
    "swa_utils": swa_utils,
    "mmengine": mmengine,
}


def _require(state: Mapping[str, Any], peer: str, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(
            f"state_dict is missing {missing} for peer={peer!r} (it has {list(state)[:8]})"
        )


def _counter(state: Mapping[str, Any], key: str) -> int:
    """A counter stored as a 0-d integer tensor (or a Python int), as a Python int >= 0."""
    value = state[key]
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise TypeError(
                f"state_dict[{key!r}] must be a 0-d integer tensor, got shape "
                f"{tuple(value.shape)} dtype {value.dtype}"
            )
        value = int(value.item())
    return check_count(f"state_dict[{key!r}]", value)


def _tensor_list(state: Mapping[str, Any], peer: str) -> list[Any]:
    shadows = state["shadow_params"]
    if not isinstance(shadows, (list, tuple)):
        raise TypeError(
            f"state_dict['shadow_params'] of {peer} must be a list of tensors, got "
            f"{type(shadows).__name__}"
        )
    return list(shadows)


def _module_tensors(
    state: Mapping[str, Any], peer: str, prefix: str, counters: tuple[str, ...]
) -> dict[str, Any]:
    """The averaged module's entries: ``prefix`` and ``_orig_mod`` / ``_checkpoint_wrapped_module``
    parts removed (a leading
    ``module.`` of a wrapped model goes in ``by_name``, which knows the EMA's names)."""
    found: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be str, got {type(key).__name__} {key!r:.80}")
        if key in counters or (peer == "ema_pytorch" and key.startswith("online_model.")):
            continue
        if not key.startswith(prefix):
            raise ValueError(
                f"state_dict[{key!r}] is not an entry {peer} writes for its average "
                f"(expected {prefix or 'module names'}*{''.join(', ' + c for c in counters)})"
            )
        name = drop_wrapped(key.removeprefix(prefix))
        if name in found:
            raise ValueError(f"state_dict has two entries named {name!r} after removing prefixes")
        found[name] = value
    return found
