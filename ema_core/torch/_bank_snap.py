"""``EMABank``'s snapshots: the set due after an update, checked before it
(``ema_core._bank_snapshots.check_set``), and written after it (``write``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ema_core import _bank_snapshots, _banks

if TYPE_CHECKING:
    from ema_core.torch._module import EMA

__all__ = ["check_due", "posthoc", "sigma_rels", "write"]


def sigma_rels(emas: Sequence[EMA], given: Sequence[float | None]) -> list[float]:
    """Each EMA's sigma_rel as the bank was given it (or read from its config).

    Raises:
        ValueError: an EMA is not a power function, naming it.
    """
    found = _banks.snapshot_sigma_rels([ema.config for ema in emas])
    return [f if g is None else g for g, f in zip(given, found, strict=True)]


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
            [dict(zip(ema.names, ema._bound.shadows, strict=True)) for ema, _, _ in due],
            steps=[t for _, _, t in due],
            sigma_rels=[s for _, s, _ in due],
            intervals=[ema.config.interval for ema, _, _ in due],
        )
    return [(ema, s) for ema, s, _ in due]


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
        [ema.average for ema, _ in due],
        steps=[int(ema.step) for ema, _ in due],
        sigma_rels=[s for _, s in due],
        intervals=[ema.config.interval for ema, _ in due],
        dtype=dtype,
        retry=retry,
    )


def posthoc() -> Any:
    """``ema_core.posthoc``'s writer module (ImportError when it is not there)."""
    return _bank_snapshots.posthoc_snapshots()
