"""The read of an EMA state, shared by ``average`` and optax's ``ema_average``: the
shadow as it is, or divided by the weight the config names (exact, ``1 - d_t ** t`` under
``correction="power"``, or 1), in the backend's kernel."""

from __future__ import annotations

import array_api_compat as compat

from ema_core import _core
from ema_core._checks import check_weight
from ema_core._config import Config, power_weight
from ema_core._leaf_checks import check_leaves
from ema_core._ops import concrete_step, is_host_array
from ema_core._read_checks import foreign_weight
from ema_core._tree import flatten, unflatten
from ema_core._types import EMAState, Tree
from ema_core.backends import check_storage, get_backend

__all__ = ["read_average"]


def read_average(state: EMAState, config: Config) -> Tree:
    """``average`` once ``config``, ``state`` and a zeros read are checked (``ema_average``
    makes the last with its own wording; reading the weight twice would cost a second wait)."""
    check_weight(state.weight)
    if config.init != "zeros":
        return state.shadow
    leaves, paths, treedef = flatten(state.shadow, "state.shadow")
    xp, kinds = check_leaves(leaves, leaves, paths, ("state.shadow", "state.shadow"))
    weight = 1.0 if config.correction == "none" else state.weight
    if config.correction == "power":
        weight = power_weight(
            config.schedule,  # type: ignore[arg-type]
            concrete_step(state.step, "state.step"),
            config.interval,
            config.compensate,
        )
    weight = float(weight) if isinstance(weight, int) or is_host_array(weight) else weight
    if compat.is_array_api_obj(weight) and compat.array_namespace(weight) is not xp:
        weight = foreign_weight(weight, xp)
    backend = get_backend(xp)
    check_storage(backend, leaves, paths, "state.shadow")
    fused = getattr(backend, "correct_leaves", None)  # all leaves in one call (JAX)
    if fused is not None:
        return unflatten(treedef, fused(leaves, kinds, weight))
    with backend.guard():
        out = [
            _core.correct(xp, s, weight) if k == "float" else s
            for s, k in zip(leaves, kinds, strict=True)
        ]
    return unflatten(treedef, out)
