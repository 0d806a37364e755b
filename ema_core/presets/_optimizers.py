"""Presets for EMAs that live inside optimizers: optax and Keras."""

from __future__ import annotations

from typing import Any

from ema_core._checks import check_fraction
from ema_core._config import Config
from ema_core.presets._args import check_bool, dtype_name
from ema_core.schedules import constant, in_float32


def optax(decay: float, debias: bool = True, accumulator_dtype: Any = None) -> Config:
    """optax 0.2 ``optax.ema(decay, debias, accumulator_dtype)``.

    The EMA starts at zero; with ``debias`` the read divides by ``1 - decay ** t`` (equal to
    the exact ``1 - prod(d)`` for this constant decay), else it is the raw zero-started EMA.
    Deliberate difference: ``accumulator_dtype=None`` keeps a float32 EMA of bf16/fp16 inputs
    (optax keeps the inputs' dtype).

    Example:
        >>> from ema_core import presets
        >>> cfg = presets.optax(0.9)
        >>> cfg.init, cfg.correction
        ('zeros', 'exact')
    """
    check_fraction("decay", decay)
    check_bool("debias", debias)
    dtype = dtype_name("accumulator_dtype", accumulator_dtype)
    return Config(
        constant(decay), init="zeros", correction="exact" if debias else "none", dtype=dtype
    )


def keras(ema_momentum: float = 0.99) -> Config:
    """Keras 3 optimizers with ``use_ema=True, ema_momentum=...``.

    The first optimizer step copies (Keras multiplies the momentum by ``iterations != 0``),
    later steps use ``ema_momentum`` as the decay, in float32 as Keras forms it for float32
    variables. ``ema_overwrite_frequency`` is a training-loop action (write the average into
    the model every n steps), not part of the average: do it with the swap of your adapter.

    Example:
        >>> from ema_core import presets
        >>> [presets.keras(0.9).decay(t) for t in (1, 2)]
        [0.0, 0.8999999761581421]
    """
    check_fraction("ema_momentum", ema_momentum)
    return Config(in_float32(constant(ema_momentum)), init="copy")
