"""Presets of the profile EMAs: EDM2 and ema-pytorch's ``KarrasEMA`` (the power function) and
torchtitan (a half-life that grows with the step)."""

from __future__ import annotations

import math
from typing import Any

from ema_core._checks import check_positive
from ema_core._config import Config
from ema_core.presets._args import check_bool, check_step_int
from ema_core.presets._schedules import power_profile
from ema_core.schedules import MAX_SIGMA_REL, constant, gated, ramped_half_life


def ema_pytorch_karras(
    sigma_rel: float | None = None,
    gamma: float | None = None,
    update_every: int = 100,
    frozen: bool = False,
) -> Config:
    """ema-pytorch 0.8 ``KarrasEMA``: the power function read one step ahead.

    Call 1 copies; call t updates when ``(t - 1) % update_every == 0`` with
    ``d = (1 - 1 / (t + 1)) ** (gamma + 1)`` (no compensation), for any ``gamma > -1``
    (``sigma_rel`` up to ``schedules.MAX_SIGMA_REL``). ``frozen`` keeps the first copy.

    Example:
        >>> from ema_core import presets
        >>> round(presets.ema_pytorch_karras(gamma=1.0, update_every=1).decay(2), 6)
        0.444444
        >>> presets.ema_pytorch_karras(gamma=0.0, update_every=1).decay(3)  # a running mean
        0.75
    """
    check_positive("update_every", update_every, integer=True)
    check_step_int("update_every", update_every)
    inner = power_profile(gamma, sigma_rel)  # checks them, used or not
    if check_bool("frozen", frozen):
        inner = constant(1.0)
    schedule = gated(inner, every=update_every, phase=1, copy_through=1, offset=1)
    return Config(schedule, init="copy", non_float="freeze")


def edm2(
    std: float = 0.050,
    *,
    halflife_Mimg: float | None = None,  # noqa: N803 - EDM2's own name
    rampup_ratio: float | None = 0.09,
    batch_size: int | None = None,
) -> Config:
    """EDM2 (NVlabs/edm2 ``training/phema.py``): ``PowerFunctionEMA`` or ``TraditionalEMA``.

    Power function (default): ``d_t = (1 - 1/t) ** (gamma + 1)`` with gamma from ``std``
    (sigma_rel, up to ``schedules.MAX_SIGMA_REL``), t the optimizer step. Traditional
    (``halflife_Mimg`` given, ``inf`` included, with the ``batch_size``): ``d_t = 0.5 ** (1 /
    min(halflife_Mimg * 1e6 / batch_size, rampup_ratio * t))``. Parameters only; EDM2 copies the
    buffers when reading.

    Example:
        >>> from ema_core import presets
        >>> round(presets.edm2(0.05).decay(3), 5)
        0.00068
    """
    if rampup_ratio is not None:
        check_positive("rampup_ratio", rampup_ratio)
    if batch_size is not None:
        check_positive("batch_size", batch_size, integer=True)
        check_step_int("batch_size", batch_size)  # a float beside halflife_Mimg
    _check_std(std)  # also when halflife_Mimg leaves it unused
    if halflife_Mimg is None:
        return Config(power_profile(sigma_rel=std), init="params", buffers="copy")
    _check_half_life(halflife_Mimg, rampup_ratio)
    if batch_size is None:
        raise TypeError("edm2 with halflife_Mimg needs the batch_size (images per step)")
    schedule = ramped_half_life(halflife_Mimg * 1e6 / batch_size, rampup_ratio)
    return Config(schedule, init="params", buffers="copy")


def _check_std(std: Any) -> None:
    """EDM2's ``std`` is a sigma_rel: a real number in (0, MAX_SIGMA_REL]."""
    check_positive("std", std)
    if std > MAX_SIGMA_REL:
        raise ValueError(
            f"std must be in (0, {MAX_SIGMA_REL:.6f}], got {std!r}: it is EDM2's sigma_rel, "
            "and no power-function profile is wider"
        )


def _check_half_life(halflife_Mimg: Any, rampup_ratio: float | None) -> None:  # noqa: N803
    """A half-life > 0, ``inf`` (EDM2's default: the ramp alone) only with a ramp."""
    if not (isinstance(halflife_Mimg, float) and halflife_Mimg == math.inf):
        check_positive("halflife_Mimg", halflife_Mimg)
    elif rampup_ratio is None:
        raise ValueError(
            "edm2 with halflife_Mimg=inf needs a rampup_ratio, got None: the EMA would never move"
        )


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
    start_step + step_bias) // update_every_n_steps, 1)``. A negative ``start_step`` is a
    start before step 1. Trainable parameters only.

    Example:
        >>> from ema_core import presets
        >>> round(presets.torchtitan(half_life_fraction=0.5).decay(2), 6)
        0.5
    """
    n = check_positive("update_every_n_steps", update_every_n_steps, integer=True)
    check_step_int("update_every_n_steps", n)
    check_step_int("start_step", start_step, low=None)
    check_step_int("step_bias", step_bias, low=None)
    if abs(step_bias - start_step) > 2**63 - 1:  # the gate's offset
        raise ValueError(
            f"step_bias - start_step must fit an int64 step, got {step_bias} - {start_step}"
        )
    ramp = ramped_half_life(ratio=check_positive("half_life_fraction", half_life_fraction))
    inner = ramp if decay is None else constant(decay)
    # a start before step 1: every step from 1 on, on the same phase modulo n
    start = max(start_step, 0)
    phase = start_step if start_step >= 0 else start_step % n
    schedule = gated(
        inner, every=n, phase=phase, start=start, offset=step_bias - start_step, divisor=n
    )
    return Config(schedule, init="params", buffers="skip")
