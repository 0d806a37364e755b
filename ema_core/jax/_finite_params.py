"""``Config(guard_finite=True)`` before a compiled JAX call: the params' float leaves read in one
compiled reduction, on the host, before anything is donated or written."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from ema_core._paths import path_str
from ema_core._tree import flatten
from ema_core._types import Tree

__all__ = ["check_finite_params"]


def check_finite_params(params: Tree) -> None:
    """``Config(guard_finite=True)`` before the jitted call: one compiled reduction, one read.

    Raises:
        ValueError: a float leaf holds NaN or inf (its path named), or the params are traced.
    """
    leaves, paths, _ = flatten(params, "params")
    floats = [
        (x, path)
        for x, path in zip(leaves, paths, strict=True)
        if isinstance(x, (jax.Array, np.ndarray)) and jax.numpy.issubdtype(x.dtype, np.inexact)
    ]
    if any(isinstance(x, jax.core.Tracer) for x, _ in floats):
        raise ValueError(
            "Config(guard_finite=True) reads the params on the host, but they are traced "
            "(make_update called inside jax.jit or another transformation): call it outside, "
            "or wrap the optimizer in optax.apply_if_finite to skip non-finite steps"
        )
    for x, path in floats:  # read by the reduction below: a deleted one sharded on several
        if isinstance(x, jax.Array) and x.is_deleted():  # devices ends the process (SIGSEGV)
            raise ValueError(
                f"{path_str('params', path)} was deleted (donated to an earlier call that "
                "donates it, or deleted by hand): pass the arrays that call returned; nothing "
                "was donated"
            )
    finite = jax.device_get(_all_finite([x for x, _ in floats]))
    for ok, (_, path) in zip(finite, floats, strict=True):
        if not ok:
            raise ValueError(
                f"{path_str('params', path)} holds NaN or infinite values "
                "(guard_finite=True); no shadow was changed"
            )


@jax.jit
def _all_finite(leaves: list[Any]) -> list[Any]:
    return [jax.numpy.all(jax.numpy.isfinite(x)) for x in leaves]
