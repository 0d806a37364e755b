"""The check made before an EMA state is read: ``ema_core.average`` and ``ema_core.jax``'s
``ema_average`` refuse, by one rule, to read an EMA started at zeros with a config that does not
bias-correct it (they would return the raw shadows, pulled toward 0).

The state does not record its config; its weight tells: ``init`` makes it 0 for ``"zeros"`` and
1 otherwise, and an update keeps a weight of 1 at 1. Only a weight the host reads without a
device sync or a trace is looked at (a Python number, numpy, array-api-strict, a CPU torch
tensor, a concrete JAX array on CPU); on a GPU or inside ``jax.jit`` the read is trusted.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as compat

from ema_core._config import Config
from ema_core._ops import is_readable

__all__ = ["check_zeros_read"]

#: Below this a weight is not 1 rounded: float32 sums of ``d + (1 - d)`` stay within it.
_BELOW_ONE = 1.0 - 1e-5


def check_zeros_read(
    state: Any,
    config: Config,
    what: str = "state",
    fix: str = "pass the Config it was made with: average(state, config)",
) -> None:
    """Refuse to read ``state`` (named ``what``) with ``config`` when ``config.init`` is not
    ``"zeros"`` but the state's readable weight is below 1: it was made with ``init="zeros"``.

    Raises:
        ValueError: naming the config's ``init``, the weight and ``fix``.
    """
    if config.init == "zeros":
        return
    value = _host_weight(getattr(state, "weight", None))
    if value is not None and value < _BELOW_ONE:
        raise ValueError(
            f"config has init={config.init!r}, but {what} has weight {value:.6g}: it was made "
            f"with init='zeros' and must be bias-corrected; {fix}"
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
