"""JAX's x64 mode against 64-bit leaves: with ``jax_enable_x64`` off JAX computes a float64,
complex128, int64 or uint64 array in 32 bits and hands it back so, silently. The checks of the
eager JAX update (``_leaf_checks``) and of the compiled updates' states (``ema_core.jax``, where
numpy leaves are converted by ``jax.jit`` too) refuse such a leaf here, by one rule and message.

JAX is looked up in ``sys.modules``, never imported: only code that has JAX leaves calls this.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["check_x64_dtype", "narrowed"]


def narrowed(dtype: Any) -> Any | None:
    """The dtype JAX would compute a ``dtype`` leaf in, where it is narrower (x64 off), else
    None. Read now: ``jax.enable_x64`` may switch the mode at any time."""
    narrow = sys.modules["jax"].dtypes.canonicalize_dtype(dtype)
    return None if narrow == dtype else narrow


def check_x64_dtype(dtype: Any, where: str, fix: str) -> None:
    """Refuse a leaf ``where`` of ``dtype`` that JAX would narrow.

    Raises:
        TypeError: naming ``where``, its dtype, the dtype JAX would use and ``fix`` (the ways
            out, which may name that dtype as ``{narrow}``).
    """
    narrow = narrowed(dtype)
    if narrow is not None:
        raise TypeError(
            f"{where} has dtype {dtype}, but JAX's x64 mode is off (jax_enable_x64), so it "
            f"would be computed and returned as {narrow}: " + fix.format(narrow=narrow)
        )
