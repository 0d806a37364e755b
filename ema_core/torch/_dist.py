"""``EMA`` under torch.distributed, above the ``EMA`` class: DDP replicas and full exports.

``full_state_dict`` gathers the DTensor (FSDP2) shadows of an ``EMA`` into plain CPU tensors for
one file on rank 0; ``ddp_ema`` builds an EMA on every DDP rank or on rank 0 only. How sharded
shadows are built and updated without a collective is ``_dtensor``.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch

from ema_core.torch import _names, _refusals, _rules
from ema_core.torch._dtensor import is_dtensor
from ema_core.torch._module import EMA

KeepOn = Literal["all", "rank0"]


def full_state_dict(ema: EMA, /, *, keep_on: KeepOn = "rank0") -> dict[str, Any]:
    """``ema.state_dict()`` with every DTensor shadow gathered into a plain CPU tensor.

    Every rank must call it (the gathers are collectives). The result loads into an EMA of
    the unsharded model, or of a model sharded any other way (``load_state_dict``).

    Args:
        ema: an ``EMA`` of an FSDP2 (or any) model.
        keep_on: ``"rank0"`` (default) returns the dict on global rank 0 and ``{}`` elsewhere;
            ``"all"`` returns it on every rank.

    Returns:
        The checkpoint dict of ``EMA.state_dict`` with CPU tensors, or ``{}`` on a rank that
        does not keep it.

    Raises:
        TypeError: ``ema`` is not an ``EMA`` (a module, or a state dict already taken).
        ValueError: ``keep_on`` is not ``"rank0"`` or ``"all"``; ``"rank0"`` without an
            initialised process group.

    Example:
        >>> import torch
        >>> from ema_core.torch import EMA, full_state_dict
        >>> ema = EMA(torch.nn.Linear(2, 1), decay=0.9)
        >>> sorted(full_state_dict(ema, keep_on="all")["shadow"])  # "rank0" in a process group
        ['bias', 'weight']
    """
    if not isinstance(ema, EMA):
        raise TypeError(
            f"full_state_dict(ema) takes an ema_core.torch.EMA, got {type(ema).__name__}: pass "
            "the EMA itself (not its module or its state_dict()), on every rank"
        )
    keep = _keeps(keep_on)
    state = ema.state_dict()
    shadows = {}
    for name, shadow in state["shadow"].items():
        whole = shadow.full_tensor() if is_dtensor(shadow) else shadow  # every rank gathers
        if keep:
            shadows[name] = whole.detach().to("cpu", copy=True)
    return {**state, "shadow": shadows} if keep else {}


def is_sharded(ema: EMA) -> bool:
    """Whether any shadow of ``ema`` is a DTensor (FSDP2): gathering it is a collective.

    >>> is_sharded(EMA(torch.nn.Linear(2, 1), decay=0.9))
    False
    """
    return any(is_dtensor(shadow) for shadow in ema._bound.shadows)


def ddp_ema(module: torch.nn.Module, /, *, keep_on: KeepOn = "all", **kwargs: Any) -> EMA | None:
    """An ``EMA`` of a DDP-replicated model, on every rank or on global rank 0 only.

    The EMA stays outside the DDP-wrapped module (DDP broadcasts module buffers from rank 0 at
    each forward, which would overwrite shadows stored there). Replicas hold equal params, so
    ``keep_on="all"`` keeps equal EMAs with no communication; ``"rank0"`` saves the memory on
    the other ranks, which get ``None``.

    Args:
        module: the model (DDP-wrapped or not).
        keep_on: ``"all"`` (default) or ``"rank0"``.
        **kwargs: the ``EMA`` options (``decay``, ``config``, ...).

    Returns:
        An ``EMA`` of ``module``, or ``None`` on a rank that keeps none.

    Raises:
        ValueError: ``keep_on`` is not ``"all"`` or ``"rank0"``; ``"rank0"`` without an
            initialised process group. TypeError / ValueError: what ``EMA`` raises for these
            options and this module, on every rank (also those that keep none).

    Example:
        >>> import torch
        >>> from ema_core.torch import ddp_ema
        >>> model = torch.nn.Linear(2, 1)  # DistributedDataParallel(model) in a process group
        >>> ema = ddp_ema(model, decay=0.9)  # keep_on="rank0": None on the other ranks
        >>> if ema is not None:
        ...     ema.update()
        >>> ema.step
        1
    """
    keeps = _keeps(keep_on)
    if not keeps:
        _check_options(module, kwargs)  # a refusal comes on every rank, not on rank 0 only
    return EMA(module, **kwargs) if keeps else None


def _check_options(module: torch.nn.Module, kwargs: dict[str, Any]) -> None:
    """Raise what ``EMA(module, **kwargs)`` would raise for its options and names, without
    making a shadow (on the ranks that keep no EMA).

    Raises:
        TypeError / ValueError: as ``EMA``: an unknown option, a bad value, no tensor left.
    """
    try:
        arguments = inspect.signature(EMA).bind(module, **kwargs).arguments
    except TypeError as error:  # worded as EMA(...) words it on the rank that builds one
        raise TypeError(f"EMA.__init__() {error}") from None
    get = arguments.get
    _refusals.device_of(get("device"))  # in EMA's order: the device first
    config = _rules.resolve_config(
        get("decay"), get("schedule"), get("config"), get("dtype"), get("buffers")
    )
    for tracked in _names.collect(module, config.buffers, get("include"), get("exclude")):
        _rules.moves(config, tracked)
        _rules.shadow_dtype(config, tracked)


def _keeps(keep_on: Any) -> bool:
    """Whether this rank keeps the result under ``keep_on`` (validated)."""
    if keep_on not in ("all", "rank0"):
        raise ValueError(f"keep_on must be 'all' or 'rank0', got {keep_on!r}")
    if keep_on == "all":
        return True
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("keep_on='rank0' needs an initialised torch.distributed process group")
    return dist.get_rank() == 0
