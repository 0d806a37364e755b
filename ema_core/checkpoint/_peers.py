"""``load_peer``: continue a running peer library's EMA in an ema-core ``EMA``, mid-run.

The peer's state dict (``_peers_read`` reads each peer's layout) gives the shadows and the
peer's count of updates; the ``EMA`` must have been built with that peer's preset, which this
checks against the hyperparameters (stored in the state, or given as ``args``). The EMA's step
becomes the peer's count, so that update t + 1 uses the decay, gate and copy the peer's would;
the bias-correction weight is 1 (no peer preset starts from zeros). Everything is checked
before the first write, and the write itself is ``EMA.load_state_dict``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, TypeAlias, get_args

import torch

from ema_core import presets
from ema_core._config import Config
from ema_core._config_text import config_differences
from ema_core.checkpoint._peers_read import READERS, PeerState, by_name
from ema_core.presets._args import check_count
from ema_core.torch import _dtensor
from ema_core.torch._bank_snap import aliases, transient
from ema_core.torch._module import EMA
from ema_core.torch._prefixes import namer

__all__ = ["PEERS", "Peer", "load_peer", "preset_of", "same_trajectory"]

Peer: TypeAlias = Literal[
    "torch_ema", "timm", "ema_pytorch", "ema_pytorch_karras", "diffusers", "swa_utils", "mmengine"
]
PEERS: tuple[str, ...] = get_args(Peer)
#: The preset of each peer (mmengine's is ``presets.mmedit``).
PRESETS = {
    "torch_ema": presets.torch_ema,
    "timm": presets.timm,
    "ema_pytorch": presets.ema_pytorch,
    "ema_pytorch_karras": presets.ema_pytorch_karras,
    "diffusers": presets.diffusers,
    "swa_utils": presets.swa_utils,
    "mmengine": presets.mmedit,
}
#: Peers whose state holds their hyperparameters; the others need ``args``.
_SELF_DESCRIBED = ("torch_ema", "diffusers")


def load_peer(
    ema: EMA,
    state_dict: Mapping[str, Any],
    /,
    *,
    peer: Peer,
    args: Mapping[str, Any] | None = None,
    step: int | None = None,
) -> None:
    """Fill ``ema`` with a peer library's running EMA so that it continues as the peer would.

    After ``k`` peer updates, ``ema`` holds the peer's shadows and ``ema.step == k``; its next
    ``update()`` is the peer's update ``k + 1`` (same decay, interval gate and copies).

    Args:
        ema: an ``ema_core.torch.EMA`` built on the model with ``presets.<peer>(**args)``
            (mmengine: ``presets.mmedit``); its shadow dtype and ``guard_finite`` may differ.
        state_dict: what the peer writes: torch_ema / diffusers ``ema.state_dict()``; timm
            ``checkpoint["state_dict_ema"]`` (or ``model_ema.state_dict()``); ema-pytorch
            ``EMA`` / ``KarrasEMA`` ``ema.state_dict()``; ``AveragedModel.state_dict()``;
            mmengine ``ExponentialMovingAverage.state_dict()``.
        peer: ``"torch_ema"``, ``"timm"``, ``"ema_pytorch"``, ``"ema_pytorch_karras"``,
            ``"diffusers"``, ``"swa_utils"`` or ``"mmengine"``.
        args: the preset's arguments (the peer's own names, e.g. timm ``decay``,
            ``use_warmup``). Required where the state does not store them (all but torch_ema
            and diffusers); where it does, they must agree with it.
        step: timm only (it stores no counter): the ``step`` its last ``update(model,
            step=...)`` got. Elsewhere optional, and then equal to the peer's counter.

    Raises:
        TypeError: an argument or state entry of the wrong type. ValueError: an unknown peer,
            a missing key, counter or ``args``, a config that is not the peer's preset, names,
            count, shapes or a narrowing dtype that do not match the EMA. Nothing is written.

    Example:
        >>> import torch
        >>> from ema_core import presets
        >>> from ema_core.checkpoint._peers import load_peer
        >>> from ema_core.torch import EMA
        >>> model = torch.nn.Linear(2, 1)
        >>> peer_state = {"decay": 0.99, "num_updates": 7, "collected_params": None,
        ...               "shadow_params": [torch.ones(1, 2), torch.zeros(1)]}
        >>> ema = EMA(model, config=presets.torch_ema(0.99))
        >>> load_peer(ema, peer_state, peer="torch_ema")
        >>> ema.step, ema.average["weight"]
        (7, tensor([[1., 1.]]))
    """
    _check_arguments(ema, state_dict, peer, args)
    ema._refuse_in_swap("load_peer")  # named as called (it loads through load_state_dict)
    read = READERS[peer](state_dict)
    merged = _merged_args(peer, read, args)
    expected = preset_of(peer, merged)
    if not same_trajectory(ema.config, expected):
        wanted = dataclasses.replace(
            expected, dtype=ema.config.dtype, guard_finite=ema.config.guard_finite
        )
        differences = config_differences(ema.config, wanted, ("in ema", "in the preset"))
        raise ValueError(
            f"ema's config differs from the one the {peer} state continues as, "
            f"presets.{PRESETS[peer].__name__}(**{merged!r}): {differences}; build the EMA "
            "with that preset"
        )
    t = _step_of(peer, read.counter, step)
    current = ema.state_dict()
    # a module-state peer saved ``module.state_dict()``, without the non-persistent buffers:
    # those keep their current shadows (the next update copies or averages them as before)
    shadows = by_name(peer, read.shadows, ema.names, aliases(ema), transient(ema), untracked(ema))
    loaded = {n: _fit(peer, n, v, current["shadow"][n]) for n, v in shadows.items()}
    loaded = {n: loaded.get(n, current["shadow"][n]) for n in ema.names}
    one = torch.tensor(1.0, dtype=torch.float64, device="cpu")
    new = {**current, "step": torch.tensor(t, device="cpu"), "weight": one}
    ema.load_state_dict({**new, "shadow": loaded}, strict=True)


def untracked(ema: EMA) -> frozenset[str]:
    """The module's tensors the EMA leaves out (``include=``/``exclude=``, ``buffers="skip"``),
    as the EMA names them: a by-name peer keeps a copy of the whole model (ema-pytorch also
    of its ``param_or_buffer_names_no_ema`` and ``ignore_names``), whose entries of these are
    not the EMA's to load."""
    root = ema._bound.root
    if root is None:
        return frozenset()
    name_of = namer(root, ema._bound.prefix)
    found = {name_of(k) for k in root.state_dict(keep_vars=True)}
    found.update(name_of(k) for k, _ in root.named_buffers())  # non-persistent ones too
    return frozenset(found.difference(ema.names))


def preset_of(peer: str, args: Mapping[str, Any]) -> Config:
    """``presets.<peer>(**args)``; a refused argument re-raised with the peer named."""
    try:
        return PRESETS[peer](**args)  # type: ignore[operator, no-any-return]
    except (TypeError, ValueError) as err:
        raise type(err)(f"the {peer} hyperparameters {dict(args)!r}: {err}") from err


def same_trajectory(config: Config, expected: Config) -> bool:
    """Whether ``config`` is ``expected`` up to the shadow dtype and the finite guard (storage
    and safety choices that do not change the average's rule)."""
    return config == dataclasses.replace(
        expected, dtype=config.dtype, guard_finite=config.guard_finite
    )


def _check_arguments(ema: Any, state_dict: Any, peer: Any, args: Any) -> None:
    if not isinstance(ema, EMA):
        raise TypeError(f"ema must be an ema_core.torch.EMA, got {type(ema).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    if peer not in PEERS:
        raise ValueError(f"peer must be one of {list(PEERS)}, got {peer!r}")
    if args is not None and not (
        isinstance(args, Mapping) and all(isinstance(k, str) for k in args)
    ):
        raise TypeError(f"args must be None or a dict of str keys, got {args!r:.80}")
    if any(_dtensor.is_dtensor(s) for s in ema.state_dict()["shadow"].values()):
        raise ValueError(
            "ema is sharded (FSDP2 DTensor shadows): load the peer's state into an EMA of the "
            "unsharded model, then shard it, or load that EMA's full_state_dict"
        )


def _merged_args(peer: str, read: PeerState, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The preset arguments: those the state stores, and ``args`` (which must agree)."""
    if args is None and peer not in _SELF_DESCRIBED:
        raise ValueError(
            f"args is None, but a {peer} state does not store its hyperparameters: pass "
            f"args= the arguments of presets.{PRESETS[peer].__name__} the EMA was built with"
        )
    given = dict(args or {})
    clash = {k: (v, given[k]) for k, v in read.args.items() if k in given and _differ(given[k], v)}
    if clash:
        shown = ", ".join(f"{k}: state {s!r}, args {a!r}" for k, (s, a) in clash.items())
        raise ValueError(f"args disagree with the {peer} state: {shown}")
    return {**given, **read.args}


def _differ(given: Any, stored: Any) -> bool:
    """Whether an ``args`` value differs from the stored one; one that does not compare to a
    single bool (an array of several values) differs."""
    try:
        return not bool(given == stored)
    except (TypeError, ValueError, RuntimeError):
        return True


def _step_of(peer: str, counter: int | None, step: Any) -> int:
    """The EMA's step: the peer's counter, or the caller's ``step`` where the peer keeps none."""
    if step is not None:
        step = check_count("step", step)
    if counter is None:
        if step is None and peer == "timm":
            raise ValueError(
                "step is None, but timm stores no counter: pass step= the step your last "
                "model_ema.update(model, step=...) got"
            )
        return 0 if step is None else int(step)
    if step is not None and step != counter:
        raise ValueError(f"step={step} disagrees with the {peer} state's counter {counter}")
    return counter


def _fit(peer: str, name: str, value: Any, ours: torch.Tensor) -> torch.Tensor:
    """The peer's tensor as the EMA's shadow: same shape; same dtype, or a lossless widening
    (a bf16 / fp16 peer shadow into a float32 one); on the shadow's device."""
    where = f"the {peer} state's {name!r}"
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where} must be a tensor, got {type(value).__name__}")
    if value.is_meta:
        raise ValueError(f"{where} is a meta tensor (no data): pass the peer's loaded state")
    if value.shape != ours.shape:
        raise ValueError(
            f"{where} has shape {tuple(value.shape)}; this EMA's has {tuple(ours.shape)}"
        )
    widens = (
        value.dtype.is_floating_point
        and ours.dtype.is_floating_point
        and value.dtype.itemsize > 1  # float8: torch has no promotion (nor arithmetic) in it
        and (torch.promote_types(value.dtype, ours.dtype) == ours.dtype)
    )
    half_complex = value.dtype == torch.complex32 and ours.dtype == torch.complex64
    if value.dtype != ours.dtype and not (widens or half_complex):
        raise ValueError(
            f"{where} has dtype {value.dtype}; this EMA's shadow is {ours.dtype} and only a "
            "lossless widening (same dtype, or a narrower float into a wider one) continues exactly"
        )
    return value.detach().to(device=ours.device, dtype=ours.dtype)
