"""Presets for the torch EMA libraries: timm, torch_ema, ema-pytorch, diffusers and swa_utils
(EDM2, ema-pytorch's KarrasEMA and torchtitan are in ``_profiles``)."""

from __future__ import annotations

from typing import Any

from ema_core._checks import check_fraction, check_positive
from ema_core._config import Config
from ema_core.presets._args import check_bool, check_step_int, dtype_name
from ema_core.presets._schedules import after_step
from ema_core.schedules import (
    Schedule,
    constant,
    in_float32,
    num_updates,
    warmup,
)


def timm(
    decay: float = 0.9999,
    min_decay: float = 0.0,
    update_after_step: int = 0,
    use_warmup: bool = False,
    warmup_gamma: float = 1.0,
    warmup_power: float = 2 / 3,
    dtype: Any = None,
    exclude_buffers: bool = False,
) -> Config:
    """timm 1.0 ``ModelEmaV3``, updated with ``step=t`` as timm's ``train.py`` passes it.

    Calls with ``t <= update_after_step + 1`` copy; later ones use ``decay`` or, with
    ``use_warmup``, ``max(min(1 - (1 + u / warmup_gamma) ** -warmup_power, decay), min_decay)``
    at ``u = t - update_after_step - 1`` (a ``min_decay`` above ``decay`` wins, as in timm). A
    negative ``update_after_step`` copies nothing: the shadow starts as the params. Buffers are
    averaged (integers copied), or copied with ``exclude_buffers``. Deliberate difference:
    ``dtype=None`` keeps a float32 shadow for bf16/fp16 weights (timm keeps bf16 and rounds
    stochastically). timm called without ``step`` uses ``decay`` on every call from the start,
    no copy and no ``min_decay``: that is ``Config(decay, dtype=...)``, with ``buffers="copy"``
    for ``exclude_buffers=True``.

    Example:
        >>> from ema_core import presets
        >>> [round(presets.timm(0.9, use_warmup=True).decay(t), 5) for t in (1, 2)]
        [0.0, 0.37004]
        >>> presets.timm(0.99, min_decay=0.995, use_warmup=True).decay(2)  # min_decay wins
        0.995
    """
    check_fraction("decay", decay)
    check_fraction("min_decay", min_decay)
    check_positive("warmup_gamma", warmup_gamma)
    check_positive("warmup_power", warmup_power)
    shadow_dtype = dtype_name("dtype", dtype)
    check_bool("exclude_buffers", exclude_buffers)
    inner: Schedule | float = decay
    floor = 0.0
    if check_bool("use_warmup", use_warmup):
        # timm's max(min(w, decay), min_decay): the floor is applied after the cap
        inner = warmup(decay, warmup_gamma, warmup_power, min(min_decay, decay))
        floor = min_decay if min_decay > decay else 0.0
    schedule, init = after_step(inner, update_after_step, floor=floor)
    return Config(
        schedule,
        init=init,
        dtype=shadow_dtype,
        buffers="copy" if exclude_buffers else "average",
    )


def torch_ema(decay: float, use_num_updates: bool = True) -> Config:
    """torch-ema 0.3 ``ExponentialMovingAverage(parameters, decay, use_num_updates)``.

    ``d_t = min(decay, (1 + t) / (10 + t))`` (or ``decay``); shadows start as the parameters;
    parameters only, no buffers.

    Example:
        >>> from ema_core import presets
        >>> round(presets.torch_ema(0.999).decay(1), 5)
        0.18182
    """
    check_fraction("decay", decay)
    use = check_bool("use_num_updates", use_num_updates)
    schedule = num_updates(decay) if use else constant(decay)
    return Config(schedule, init="params", buffers="skip")


def ema_pytorch(
    beta: float = 0.9999,
    update_after_step: int = 100,
    update_every: int = 10,
    inv_gamma: float = 1.0,
    power: float = 2 / 3,
    min_value: float = 0.0,
) -> Config:
    """ema-pytorch 0.8 ``EMA``.

    Call 1 copies; call t updates only when ``(t - 1) % update_every == 0``: a copy while
    ``t <= update_after_step + 1``, then the warm-up decay at ``u = t - update_after_step - 1``,
    clamped to ``[min_value, beta]`` as torch's ``clamp`` does it (a ``min_value`` above
    ``beta`` gives ``beta``) and rounded to float32 as ema-pytorch computes it (no compensation
    for the skipped calls). Floating buffers are averaged, integer ones frozen. ``beta=1``
    freezes the average after the copies, as ema-pytorch does.

    Example:
        >>> from ema_core import presets
        >>> [presets.ema_pytorch().decay(t) for t in (1, 2, 11)]  # copy, skip, copy
        [0.0, 1.0, 0.0]
        >>> presets.ema_pytorch(0.5, 0, 1, min_value=0.75).decay(2)  # clamped to beta
        0.5
    """
    check_fraction("beta", beta)
    check_fraction("min_value", min_value)
    check_positive("update_every", update_every, integer=True)
    check_step_int("update_every", update_every)
    # torch's clamp(min=min_value, max=beta) gives beta when min_value > beta
    ramp = in_float32(warmup(beta, inv_gamma, power, min(min_value, beta)))  # checks them
    inner = constant(1.0) if beta == 1.0 else ramp
    schedule, init = after_step(
        inner, update_after_step, every=update_every, phase=1, copy_first=True
    )
    return Config(schedule, init=init, non_float="freeze")


def diffusers(
    decay: float = 0.9999,
    min_decay: float = 0.0,
    update_after_step: int = 0,
    use_ema_warmup: bool = False,
    inv_gamma: float = 1.0,
    power: float = 2 / 3,
) -> Config:
    """diffusers 0.42 ``training_utils.EMAModel``.

    ``optimization_step`` is t; steps ``t <= update_after_step + 1`` copy (none for a negative
    ``update_after_step``), later ones use the warm-up decay (``use_ema_warmup``) or ``(1 + u) /
    (10 + u)`` at ``u = t - update_after_step - 1``, capped at ``decay`` and then floored at
    ``min_decay`` (which wins when above ``decay``). Parameters only, no buffers. diffusers
    copies a parameter that does not require grad instead of averaging it: one that never
    changes averages to itself bit for bit, so this differs only for a frozen parameter changed
    by hand; leave such parameters out of the EMA (``exclude=``), the model's own value is then
    the one diffusers' copy holds.

    Example:
        >>> from ema_core import presets
        >>> [round(presets.diffusers().decay(t), 5) for t in (1, 2)]
        [0.0, 0.18182]
    """
    check_fraction("decay", decay)
    check_fraction("min_decay", min_decay)
    ramp = warmup(decay, inv_gamma, power)  # checks them, used or not
    inner = ramp if check_bool("use_ema_warmup", use_ema_warmup) else num_updates(decay)
    schedule, init = after_step(inner, update_after_step, floor=min_decay)
    return Config(schedule, init=init, buffers="skip")


def swa_utils(decay: float = 0.999, use_buffers: bool = False) -> Config:
    """torch 2.x ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers)``.

    The first ``update_parameters()`` copies, later ones use ``decay``. Buffers are averaged
    with ``use_buffers=True``, else copied. Deliberate difference: integer buffers are copied
    (torch averages them and truncates).

    Example:
        >>> from ema_core import presets
        >>> [presets.swa_utils(0.9).decay(t) for t in (1, 2)]
        [0.0, 0.9]
    """
    check_fraction("decay", decay)
    average = check_bool("use_buffers", use_buffers)
    return Config(constant(decay), init="copy", buffers="average" if average else "copy")
