"""Presets for EMAs that live inside optimizers: optax and Keras."""

from __future__ import annotations

from typing import Any

from ema_core._checks import check_fraction
from ema_core._config import Config
from ema_core.presets._args import check_bool, check_count, dtype_name
from ema_core.schedules import constant, gated, in_float32


def optax(decay: float, debias: bool = True, accumulator_dtype: Any = None) -> Config:
    """optax 0.2 ``optax.ema(decay, debias, accumulator_dtype)``.

    The EMA starts at zero; with ``debias`` the read divides by ``1 - decay ** t`` (equal to
    the exact ``1 - prod(d)`` for this constant decay), else it is the raw zero-started EMA.
    The read is float32 (or wider) also with a bf16/fp16 ``accumulator_dtype``, as optax returns
    it; the state is stored in the accumulator dtype as optax stores it. Over a bf16/fp16
    accumulator the two agree to the accumulator's rounding, not bit for bit: optax rounds
    ``decay * ema`` to the accumulator dtype inside each update and debiases its float32 result
    before rounding it into the state, where ema-core blends in float32 and reads the stored
    state. Deliberate difference: ``accumulator_dtype=None`` keeps a float32 EMA of bf16/fp16
    inputs (optax keeps the inputs' dtype).

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


def keras(ema_momentum: float = 0.99, gradient_accumulation_steps: int | None = None) -> Config:
    """Keras 3 optimizers with ``use_ema=True, ema_momentum=..., gradient_accumulation_steps=...``.

    The first optimizer step copies (Keras multiplies the momentum by ``iterations != 0``),
    later steps use ``ema_momentum`` as the decay, in float32 as Keras forms it for float32
    variables. With ``gradient_accumulation_steps=n`` Keras still blends at every batch, the
    batches that only accumulate gradients included, and its ``iterations`` counts applied
    steps (batches // n): the first n batches copy. This preset does the same, one update per
    batch (``ema_core.update`` each batch); the Keras ``EMACallback`` updates once per applied
    step instead, so with accumulation it does not follow Keras's own average. Keras averages
    the trainable variables only: the non-trainable ones (BatchNorm's moving statistics) stay
    live, so buffers are skipped (``buffers="skip"``).
    ``ema_overwrite_frequency=n`` is a training-loop action, not part of the average: every n
    steps Keras overwrites the model's variables with the average for good (training goes on
    from the averaged weights), and ``fit()`` does so once after its last epoch. Its match is a
    permanent write, ``EMA.copy_to(model)`` (functional: ``params = average(state, config)``),
    not ``swap()``, which gives the live weights back on exit.

    Example:
        >>> from ema_core import presets
        >>> [presets.keras(0.9).decay(t) for t in (1, 2)]
        [0.0, 0.8999999761581421]
        >>> [presets.keras(0.9, gradient_accumulation_steps=2).decay(t) for t in (1, 2, 3)]
        [0.0, 0.0, 0.8999999761581421]
    """
    check_fraction("ema_momentum", ema_momentum)
    steps = 1
    if gradient_accumulation_steps is not None:
        steps = check_count("gradient_accumulation_steps", gradient_accumulation_steps)
        if steps < 2:  # Keras refuses 1 too
            raise ValueError(
                "gradient_accumulation_steps must be None or an int >= 2, as Keras takes it, "
                f"got {gradient_accumulation_steps!r}"
            )
    decay = constant(ema_momentum) if steps == 1 else gated(ema_momentum, copy_through=steps)
    return Config(in_float32(decay), init="copy", buffers="skip")
