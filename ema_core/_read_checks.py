"""The check made before an EMA state is read: ``ema_core.average`` and ``ema_core.jax``'s
``ema_average`` refuse, by one rule, to read an EMA started at zeros with a config that does not
bias-correct it (they would return the raw shadows, pulled toward 0); and ``foreign_weight``
reads a weight of another framework than the shadows as a float.

The state does not record its config; its weight tells: ``init`` makes it 0 for ``"zeros"`` and
1 otherwise, and an update keeps a weight of 1 at 1. Only a weight the host reads without a
device sync or a trace is looked at (a Python number, numpy, array-api-strict, a CPU torch
tensor, a concrete JAX array on CPU); on a GPU or inside ``jax.jit`` the read is trusted.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat as compat

from ema_core._config import Config
from ema_core._ops import host_float, is_readable

__all__ = ["check_live_weight", "check_zeros_read", "foreign_weight"]

#: Below this a weight is not 1 rounded: float32 sums of ``d + (1 - d)`` stay within it.
_BELOW_ONE = 1.0 - 1e-5


def check_zeros_read(
    state: Any,
    config: Config,
    what: str = "state",
    fix: str = "pass the Config it was made with: average(state, config)",
    weight_name: str = "state.weight",
) -> None:
    """Refuse to read ``state`` (named ``what``) with ``config`` when ``config.init`` is not
    ``"zeros"`` but the state's readable weight is below 1: it was made with ``init="zeros"``;
    first refuse a state whose JAX weight (``weight_name``) was deleted (``check_live_weight``):
    the read returns the shadows as they are, so nothing else would name them.

    Raises:
        ValueError: naming the config's ``init``, the weight and ``fix``; or the deleted weight.
    """
    if config.init == "zeros":  # the read checks every shadow leaf, a deleted one by name
        return
    weight = getattr(state, "weight", None)
    check_live_weight(weight, weight_name)
    value = _host_weight(weight)
    if value is not None and value < _BELOW_ONE:
        raise ValueError(
            f"config has init={config.init!r}, but {what} has weight {value:.6g}: it was made "
            f"with init='zeros' and must be bias-corrected; {fix}"
        )


def check_live_weight(weight: Any, name: str) -> None:
    """Refuse a concrete JAX ``weight`` that was deleted: its state was donated to a jitted call
    (``donate_argnums``, ``make_update``), which deleted every array of it. One 0-d array is
    asked (``is_deleted``, no sync): donation deletes the shadows with it.

    Raises:
        ValueError: naming ``name`` and the state to read instead.
    """
    jax = sys.modules.get("jax")
    if jax is None or not isinstance(weight, jax.Array) or isinstance(weight, jax.core.Tracer):
        return
    if weight.is_deleted():
        raise ValueError(
            f"{name} was deleted: its state was donated to a jitted call (donate_argnums, "
            "make_update), which deletes the arrays it is given; read the state that call "
            "returned instead"
        )


def _host_weight(weight: Any) -> float | None:
    """The weight as a float when the host reads it at no cost, else None (a device or traced
    array, or a value ``average`` refuses elsewhere: a bool, a non-float array, not 0-d)."""
    if isinstance(weight, (int, float)) and not isinstance(weight, bool):
        return float(weight)
    if not is_readable(weight) or getattr(weight, "ndim", None) != 0:
        return None
    if not compat.array_namespace(weight).isdtype(weight.dtype, "real floating"):
        return None
    return float(weight)


def foreign_weight(weight: Any, xp: Any) -> float:
    """A weight of another framework than the shadows (a torch state's shadows turned into
    numpy, its step and weight left as tensors): read as a float where the host reads it.

    Raises:
        TypeError: a device or traced weight of another framework (it cannot divide these
            shadows without a transfer).

    Example:
        >>> import numpy as np, torch
        >>> foreign_weight(torch.tensor(0.5, dtype=torch.float64), np)
        0.5
    """
    if is_readable(weight):
        return host_float(weight)
    raise TypeError(
        f"state.weight is a {type(weight).__module__}.{type(weight).__name__} on "
        f"{compat.device(weight)} but state.shadow holds {xp.__name__} arrays: give the "
        "weight as a float or as an array of the shadows' framework"
    )
