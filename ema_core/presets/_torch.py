"""Presets for the torch EMA libraries: timm, torch_ema, ema-pytorch, diffusers, swa_utils,
EDM2 and torchtitan."""

from __future__ import annotations

from typing import Any

from ema_core._checks import check_fraction, check_positive
from ema_core._config import Config
from ema_core.presets._args import check_bool, check_int, dtype_name
from ema_core.schedules import (
    Schedule,
    constant,
    gated,
    in_float32,
    num_updates,
    power_function,
    ramped_half_life,
    warmup,
)


def _after(update_after_step: int) -> int:
    return check_int("update_after_step", update_after_step) + 1


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
    ``use_warmup``, ``clamp(1 - (1 + u / warmup_gamma) ** -warmup_power, min_decay, decay)`` at
    ``u = t - update_after_step - 1``. Buffers are averaged (integers copied), or copied with
    ``exclude_buffers``. Deliberate difference: ``dtype=None`` keeps a float32 shadow for
    bf16/fp16 weights (timm keeps bf16 and rounds stochastically). timm called without
    ``step`` uses ``decay`` on every call from the start: that is ``Config(decay)``.

    Example:
        >>> from ema_core import presets
        >>> [round(presets.timm(0.9, use_warmup=True).decay(t), 5) for t in (1, 2)]
        [0.0, 0.37004]
    """
    check_fraction("decay", decay)
    check_fraction("min_decay", min_decay)
    check_positive("warmup_gamma", warmup_gamma)
    check_positive("warmup_power", warmup_power)
    shadow_dtype = dtype_name("dtype", dtype)
    check_bool("exclude_buffers", exclude_buffers)
    inner: Schedule | float = decay
    if check_bool("use_warmup", use_warmup):
        inner = warmup(decay, warmup_gamma, warmup_power, min_decay)
    first = _after(update_after_step)
    schedule = gated(inner, copy_through=first, offset=-first)
    return Config(
        schedule,
        init="copy",
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
    clamped to ``[min_value, beta]`` and rounded to float32 as ema-pytorch computes it (no
    compensation for the skipped calls). Floating buffers are averaged, integer ones frozen.
    ``beta=1`` freezes the average after the copies, as ema-pytorch does.

    Example:
        >>> from ema_core import presets
        >>> [presets.ema_pytorch().decay(t) for t in (1, 2, 11)]  # copy, skip, copy
        [0.0, 1.0, 0.0]
    """
    check_fraction("beta", beta)
    check_fraction("min_value", min_value, high=beta)
    check_positive("update_every", update_every, integer=True)
    ramp = in_float32(warmup(beta, inv_gamma, power, min_value))  # checks them, used or not
    inner = constant(1.0) if beta == 1.0 else ramp
    first = _after(update_after_step)
    schedule = gated(inner, every=update_every, phase=1, copy_through=first, offset=-first)
    return Config(schedule, init="copy", non_float="freeze")


def ema_pytorch_karras(
    sigma_rel: float | None = None, gamma: float | None = None, update_every: int = 100
) -> Config:
    """ema-pytorch 0.8 ``KarrasEMA``: the power function read one step ahead.

    Call 1 copies; call t updates when ``(t - 1) % update_every == 0`` with
    ``d = (1 - 1 / (t + 1)) ** (gamma + 1)`` (no compensation).

    Example:
        >>> from ema_core import presets
        >>> round(presets.ema_pytorch_karras(gamma=1.0, update_every=1).decay(2), 6)
        0.444444
    """
    check_positive("update_every", update_every, integer=True)
    inner = power_function(gamma, sigma_rel=sigma_rel)
    schedule = gated(inner, every=update_every, phase=1, copy_through=1, offset=1)
    return Config(schedule, init="copy", non_float="freeze")


def diffusers(
    decay: float = 0.9999,
    min_decay: float = 0.0,
    update_after_step: int = 0,
    use_ema_warmup: bool = False,
    inv_gamma: float = 1.0,
    power: float = 2 / 3,
) -> Config:
    """diffusers 0.42 ``training_utils.EMAModel``.

    ``optimization_step`` is t; steps ``t <= update_after_step + 1`` copy, later ones use the
    warm-up decay (``use_ema_warmup``) or ``(1 + u) / (10 + u)`` at ``u = t - update_after_step
    - 1``, capped at ``decay`` and floored at ``min_decay``. Parameters only (diffusers copies
    parameters that do not require grad; pass those as integer leaves or copy them yourself).

    Example:
        >>> from ema_core import presets
        >>> [round(presets.diffusers().decay(t), 5) for t in (1, 2)]
        [0.0, 0.18182]
    """
    check_fraction("decay", decay)
    check_fraction("min_decay", min_decay)
    ramp = warmup(decay, inv_gamma, power)  # checks them, used or not
    inner = ramp if check_bool("use_ema_warmup", use_ema_warmup) else num_updates(decay)
    first = _after(update_after_step)
    schedule = gated(inner, copy_through=first, offset=-first, floor=min_decay)
    return Config(schedule, init="copy", buffers="skip")


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


def edm2(
    std: float = 0.050,
    *,
    halflife_Mimg: float | None = None,  # noqa: N803 - EDM2's own name
    rampup_ratio: float | None = 0.09,
    batch_size: int | None = None,
) -> Config:
    """EDM2 (NVlabs/edm2 ``training/phema.py``): ``PowerFunctionEMA`` or ``TraditionalEMA``.

    Power function (default): ``d_t = (1 - 1/t) ** (gamma + 1)`` with gamma from ``std``
    (sigma_rel), t the optimizer step. Traditional (``halflife_Mimg`` given, with the
    ``batch_size``): ``d_t = 0.5 ** (1 / min(halflife_Mimg * 1e6 / batch_size, rampup_ratio *
    t))``. Parameters only; EDM2 copies the buffers when reading.

    Example:
        >>> from ema_core import presets
        >>> round(presets.edm2(0.05).decay(3), 5)
        0.00068
    """
    if rampup_ratio is not None:
        check_positive("rampup_ratio", rampup_ratio)
    if batch_size is not None:
        check_positive("batch_size", batch_size, integer=True)
    if halflife_Mimg is None:
        return Config(power_function(sigma_rel=std), init="params", buffers="copy")
    check_positive("std", std)
    check_positive("halflife_Mimg", halflife_Mimg)
    if batch_size is None:
        raise TypeError("edm2 with halflife_Mimg needs the batch_size (images per step)")
    schedule = ramped_half_life(halflife_Mimg * 1e6 / batch_size, rampup_ratio)
    return Config(schedule, init="params", buffers="copy")


def torchtitan(
    decay: float | None = None,
    half_life_fraction: float = 0.05,
    start_step: int = 0,
    step_bias: int = 0,
    update_every_n_steps: int = 1,
) -> Config:
    """torchtitan ``components/ema.py`` (``EMAOptimizersContainer.Config``, main branch, 2026;
    not on PyPI), with t the trainer step.

    Steps before ``start_step`` or off ``(t - start_step) % update_every_n_steps`` skip; an
    update uses ``decay`` or ``2 ** (-1 / (half_life_fraction * u))`` with ``u = max((t -
    start_step + step_bias) // update_every_n_steps, 1)``. Trainable parameters only.

    Example:
        >>> from ema_core import presets
        >>> round(presets.torchtitan(half_life_fraction=0.5).decay(2), 6)
        0.5
    """
    n = check_positive("update_every_n_steps", update_every_n_steps, integer=True)
    check_int("start_step", start_step)
    check_int("step_bias", step_bias, low=None)
    ramp = ramped_half_life(ratio=check_positive("half_life_fraction", half_life_fraction))
    inner = ramp if decay is None else constant(decay)
    schedule = gated(
        inner, every=n, phase=start_step, start=start_step, offset=step_bias - start_step, divisor=n
    )
    return Config(schedule, init="params", buffers="skip")
