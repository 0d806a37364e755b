"""``EMABank``'s snapshots: the set due after an update, checked before it
(``ema_core._bank_snapshots.check_set``), and written after it (``write``); and what a snapshot
of one torch ``EMA`` records (``snapshot_source``, for ``posthoc.save_snapshot(dir, ema)``):
each tensor's policy (``"copy"`` for what the EMA copies: BatchNorm statistics under
``buffers="copy"``, integers) and the model's other names of its tensors (``aliases``)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ema_core import _bank_snapshots, _banks, _snapshot_args
from ema_core._paths import escape_key
from ema_core.torch._dtensor import is_dtensor
from ema_core.torch._module import EMA
from ema_core.torch._names import transient_buffers
from ema_core.torch._tied_names import tied_aliases

__all__ = [
    "aliases",
    "check_at_build",
    "check_due",
    "check_no_gap",
    "check_whole",
    "is_ema",
    "policies",
    "posthoc",
    "sigma_rels",
    "snapshot_source",
    "write",
]


def sigma_rels(emas: Sequence[EMA], given: Sequence[float | None]) -> list[float]:
    """Each EMA's sigma_rel as the bank was given it (or read from its config).

    Raises:
        ValueError: an EMA is not a power function, naming it.
    """
    found = _snapshot_args.snapshot_sigma_rels([ema.config for ema in emas])
    return [f if g is None else g for g, f in zip(given, found, strict=True)]


def check_whole(ema: EMA) -> None:
    """Refuse snapshots of an EMA of sharded tensors (FSDP2: DTensor shadows), by name: a
    rank holds a shard of each, and a snapshot is a whole array.

    Raises:
        ValueError: naming the first sharded tensor and the way out.
    """
    for name, shadow in _shadows(ema).items():
        if is_dtensor(shadow):
            raise ValueError(
                f"snapshot_every: {name!r} is sharded (a DTensor: FSDP2 or tensor parallel), "
                "and a snapshot holds whole tensors; leave snapshot_every out and write "
                "snapshots of ema_core.torch.full_state_dict(bank[k]) on one rank"
            )


def check_at_build(
    emas: Sequence[EMA], given: Sequence[float | None], every: int, folder: Any
) -> None:
    """Refuse, when the bank is built, the snapshots every due step would refuse: sharded
    tensors (``check_whole``), and what the writer refuses (a complex tensor, a name
    ``__metadata__``, a folder in the way: ``_bank_snapshots.check_at_start``)."""
    check_whole(emas[0])
    _bank_snapshots.check_at_start(
        folder,
        [_kept(ema, _shadows(ema)) for ema in emas],
        every=every,
        sigma_rels=sigma_rels(emas, given),
        intervals=[ema.config.interval for ema in emas],
        policies=[policies(ema) for ema in emas],
        aliases=[snapshot_aliases(ema) for ema in emas],
    )


def check_due(
    emas: Sequence[EMA],
    given: Sequence[float | None],
    every: int | None,
    folder: str | os.PathLike[str] | None,
    steps: Sequence[Any],
) -> list[tuple[EMA, float]]:
    """The EMAs (sigma_rels ``given``) that write a snapshot into ``folder`` after an update to
    ``steps`` (every ``every`` steps), their set checked as the writer will check it; nothing
    is written (a device step is read: a sync).

    Raises:
        What ``_bank_snapshots.check_set`` raises.
    """
    if every is None or folder is None:
        return []
    found = zip(emas, sigma_rels(emas, given), steps, strict=True)
    due = [(ema, s, int(t)) for ema, s, t in found if int(t) % every == 0 and int(t) > 0]
    if due:
        _bank_snapshots.check_set(
            folder,
            [_kept(ema, _shadows(ema)) for ema, _, _ in due],
            steps=[t for _, _, t in due],
            sigma_rels=[s for _, s, _ in due],
            intervals=[ema.config.interval for ema, _, _ in due],
            policies=[policies(ema) for ema, _, _ in due],
            aliases=[snapshot_aliases(ema) for ema, _, _ in due],
        )
    return [(ema, s) for ema, s, _ in due]


def check_no_gap(emas: Sequence[EMA], every: int | None, folder: Any, steps: Sequence[Any]) -> None:
    """Refuse, in a bank that writes snapshots, a given step that leaves out an update its
    interval makes due (``update(8)`` after ``update(4)`` at interval 1): the EMA would take one
    decay where it takes several, an average of another width than its sigma_rel's, and its
    snapshots would carry the wrong label. Nothing is written (a device step is read: a sync).

    Raises:
        ValueError: naming the step, the one left out and the two ways out.
    """
    if every is None or folder is None:
        return
    for k, (ema, t) in enumerate(zip(emas, steps, strict=True)):
        before, now, n = int(ema._step), int(t), ema.config.interval
        if (now - 1) // n > before // n:  # a multiple of n in (before, now): a due update
            raise ValueError(
                f"step={now} leaves out step {(before // n + 1) * n} of bank[{k}] (at step "
                f"{before}, interval {n}): a bank that writes snapshots takes every due update, "
                "else its averages are not the power functions their sigma_rels name; call "
                "update at every step, or without a step (each EMA counts its own)"
            )


def write(
    due: Sequence[tuple[EMA, float]],
    folder: str | os.PathLike[str],
    dtype: str | None,
    retry: str | None,
) -> list[Path]:
    """The snapshots of ``due`` at their EMAs' steps, as one set (``write_set``: after an
    update, ``retry`` names the call that writes them again)."""
    return _bank_snapshots.write_set(
        folder,
        [_kept(ema, ema.average) for ema, _ in due],
        steps=[int(ema.step) for ema, _ in due],
        sigma_rels=[s for _, s in due],
        intervals=[ema.config.interval for ema, _ in due],
        dtype=dtype,
        retry=retry,
        policies=[policies(ema) for ema, _ in due],
        aliases=[snapshot_aliases(ema) for ema, _ in due],
    )


def posthoc() -> Any:
    """``ema_core.posthoc``'s writer module (ImportError when it is not there)."""
    return _bank_snapshots.posthoc_snapshots()


def snapshot_aliases(ema: EMA) -> dict[str, str]:
    """``aliases(ema)`` as a snapshot names them (``escape_key``: ``/`` is ``~1``)."""
    return {escape_key(k): escape_key(v) for k, v in aliases(ema).items()}


def aliases(ema: EMA) -> dict[str, str]:
    """The other names the EMA's module gives a tracked tensor (tied weights:
    ``out.weight = emb.weight`` is tracked once, as ``emb.weight``): alias -> tracked name, in
    ``module.state_dict()`` order, as the EMA names them (``ema.names``); {} for an EMA of
    named tensors."""
    return tied_aliases(ema._bound.root, ema._bound.prefix, ema.names, ema._bound.tied_raw())


def transient(ema: EMA) -> frozenset[str]:
    """The tracked names that are non-persistent buffers of the EMA's module (not in
    ``module.state_dict()``, so not in an export)."""
    return transient_buffers(ema._bound.root, ema.names, ema._bound.prefix)


def policies(ema: EMA) -> dict[str, str]:
    """Each snapshot name's policy: ``"average"`` or ``"copy"`` (copied buffers, integers), by
    the name the snapshot gives the tensor (``escape_key``: a module named ``enc/dec`` has
    ``enc~1dec.weight``)."""
    kinds = ema._bound.kinds
    names = zip(ema.names, kinds, strict=True)
    kept = _kept(ema, {n: "average" if k == "float" else "copy" for n, k in names})
    return {escape_key(n): policy for n, policy in kept.items()}


def _shadows(ema: EMA) -> dict[str, Any]:
    return dict(zip(ema.names, ema._bound.shadows, strict=True))


def _kept(ema: EMA, by_name: dict[str, Any]) -> dict[str, Any]:
    """``by_name`` without the EMA's non-persistent buffers: a snapshot holds what
    ``module.state_dict()`` holds (as an export does), so that ``reconstruct(...,
    like=model.state_dict())`` and a strict load of the CLI's files match the model."""
    skip = transient(ema)
    return {n: v for n, v in by_name.items() if n not in skip} if skip else by_name


def is_ema(value: Any) -> bool:
    """Whether ``value`` is a torch ``EMA``."""
    return isinstance(value, EMA)


def snapshot_source(
    ema: EMA, step: int | None, sigma_rel: float | None, interval: int | None
) -> tuple[dict[str, Any], int, float, int, dict[str, str], dict[str, str]]:
    """A snapshot of ``ema``: its averages, step, sigma_rel, interval, policies and aliases.
    ``step``, ``sigma_rel`` and ``interval`` (checked values or None) must agree with it.

    Raises:
        ValueError: ``ema`` is not a power function, or its average is not that power
            function's EMA (``check_power_profile``), or an argument disagrees with it.
    """
    found = _banks.sigma_rel_of(ema.config)
    if found is None:
        raise ValueError(
            f"averages is an EMA whose schedule {ema.config.schedule!r} is not a power function: "
            "post-hoc reconstruction needs power-function EMAs (an EMABank, or "
            "EMA(model, config=Config(schedule=schedules.power_function(sigma_rel=...))))"
        )
    _snapshot_args.check_power_profile(ema.config, "averages (an EMA)")
    if sigma_rel is not None and not math.isclose(sigma_rel, found, rel_tol=1e-9):
        raise ValueError(
            f"sigma_rel={sigma_rel!r}, but the EMA's schedule is a power function of sigma_rel "
            f"{found!r}: pass sigma_rel={found!r} or leave it out"
        )
    own, every = int(ema.step), ema.config.interval
    if own < 1:
        raise ValueError(f"averages is an EMA at step {own}: snapshot it after an update")
    for name, given, value in (("step", step, own), ("interval", interval, every)):
        if given is not None and given != value:
            raise ValueError(f"{name}={given}, but the EMA's is {value}: leave {name} out")
    sigma = found if sigma_rel is None else sigma_rel
    return _kept(ema, ema.average), own, sigma, every, policies(ema), snapshot_aliases(ema)
