"""``make_bank_update``: K EMAs of the same params (an EMA bank), updated by one jitted call.

The bank's state is a tuple of K ``EMAState`` s, each laid out as ``make_update``'s state, so
``ema_core.average``, ``state_dict`` and shardings work per EMA. One call traces the K updates
into one XLA computation: one dispatch instead of K, every leaf updated where it lives, no
collective. Trees of more than ``CHUNK`` arrays run in chunks, each chunk one compiled call
for all K EMAs (``_bank_chunks``). ``save_snapshots`` / ``snapshot_every=`` write EDM2 post-hoc
snapshots through ``ema_core.posthoc.save_snapshot``, outside the jit. The arguments are
resolved and checked by ``ema_core._banks``, as every bank's are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ema_core import _banks, _snapshot_args
from ema_core._config import Config
from ema_core.jax._bank_update import BankUpdate

__all__ = ["BankUpdate", "make_bank_update"]


def make_bank_update(
    configs: Sequence[Config] | None = None,
    /,
    *,
    sigma_rels: Sequence[float] | None = None,
    interval: int = 1,
    donate: bool = True,
    snapshot_every: int | None = None,
    snapshot_dir: str | os.PathLike[str] | None = None,
) -> BankUpdate:
    """One jitted update of K EMAs of the same params, each under its own ``Config``.

    For every EMA k: ``shadow_k <- shadow_k + (1 - d_k,t) (params - shadow_k)`` with its own
    ``t = states[k].step + 1``; the result equals K ``make_update(configs[k])`` calls bit for
    bit. Give ``configs``, or ``sigma_rels`` for EDM2's power-function EMAs:
    ``Config(schedule=power_function(sigma_rel=s), init="copy", interval=interval)``.

    Args:
        configs: one ``Config`` per EMA (any mix of schedules, intervals, dtypes). Where one
            has ``guard_finite=True`` the params are checked on the host before the call, as
            by ``make_update``: a NaN or inf refuses the whole call (every EMA).
        sigma_rels: EDM2 relative widths, each in ``(0, 12**-0.5)``, all distinct.
        interval: the update interval of the ``sigma_rels`` EMAs (compensated, EDM2's t_delta).
        donate: donate the states' buffers to the new states (default True).
        snapshot_every: after an update, write the snapshot of each EMA whose step is then a
            multiple of this into ``snapshot_dir`` (``save_snapshots``). The EMAs must then be
            power functions sharing one ``interval`` that divides ``snapshot_every`` (a snapshot
            directory holds one interval; see ``ema_core._snapshot_args``), and the bank must
            be called outside ``jax.jit``. The host counts the steps: a step is read only on
            the first call and after a state the bank did not make (a resume). What the write would
            refuse is refused before the update; a write that fails after it (a full disk)
            raises ``SnapshotWriteError``: the update stands, ``error.states`` holds the new
            states, and ``save_snapshots(snapshot_dir, error.states, which=error.which)``
            writes the step's snapshots again (exactly those that were due).
        snapshot_dir: the directory of those snapshots (required with ``snapshot_every``).

    Returns:
        A ``BankUpdate``: ``states = bank.init(params)``; ``states = bank(states, params)``.

    Raises:
        TypeError: both or neither of ``configs`` / ``sigma_rels``; a config is not a
            ``Config``; ``interval`` not an int, or not 1 with ``configs``; a sigma_rel not a
            number; ``snapshot_every`` not an int; ``snapshot_dir`` not a path; ``donate``
            not a bool.
        ValueError: no EMA (K = 0); a sigma_rel out of range or repeated; ``interval < 1``;
            ``snapshot_every`` < 1, or one of ``snapshot_every`` / ``snapshot_dir`` without
            the other, or with a config whose average is not a power-function EMA
            (``_snapshot_args.check_power_profile``), two configs of one sigma_rel, or EMAs
            whose intervals differ or do not divide ``snapshot_every``.

    Example:
        >>> import jax.numpy as jnp
        >>> from ema_core.jax import make_bank_update
        >>> bank = make_bank_update(sigma_rels=(0.05, 0.10))
        >>> states = bank.init({"w": jnp.zeros(2)})
        >>> states = bank(states, {"w": jnp.ones(2)})  # the first update copies
        >>> [s.shadow["w"].tolist() for s in states], [int(s.step) for s in states]
        ([[1.0, 1.0], [1.0, 1.0]], [1, 1])
    """
    if not isinstance(donate, bool):
        raise TypeError(f"donate must be True or False, got {donate!r}")
    checked = _banks.bank_configs("make_bank_update", configs, sigma_rels, interval)
    _snapshot_args.check_snapshots(snapshot_every, snapshot_dir, checked)
    return BankUpdate(checked, donate, snapshot_every, snapshot_dir)
