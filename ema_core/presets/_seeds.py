"""Presets for the four seed systems: TensorFlow, AllenNLP, PaddlePaddle and MMEditing."""

from __future__ import annotations

import warnings

from ema_core._checks import check_fraction, check_positive
from ema_core._config import Config
from ema_core.presets._args import check_bool, check_counter_start, check_step_int
from ema_core.presets._schedules import counter_cap, counter_from
from ema_core.schedules import (
    Schedule,
    annealing,
    constant,
    gated,
    in_float32,
)
from ema_core.schedules import (
    momentum as momentum_schedule,
)


def counter_schedule(
    decay: float,
    start: int | None,
    numerator: float = 1.0,
    denominator: float = 10.0,
    *,
    name: str = "num_updates",
) -> Schedule:
    """``min(decay, (numerator + n) / (denominator + n))`` for a counter n that holds ``start``
    at the first update and grows by one per update (``n = start + t - 1``); constant if None.
    ``name`` is the peer's name for the counter, for the error messages."""
    check_fraction("decay", decay)
    counter_cap(decay, numerator, denominator)  # checks them, used or not
    start = check_counter_start(name, start)
    if start is None:
        return constant(decay)
    if numerator <= denominator and numerator + start < 0:  # (numerator > denominator: decay)
        raise ValueError(
            f"{name} must be >= -numerator = {-numerator} for a first decay (numerator + n) / "
            f"(denominator + n) >= 0, got {start}"
        )
    return counter_from(decay, numerator, denominator, start)


def tensorflow(decay: float, num_updates: int | None = None, zero_debias: bool = False) -> Config:
    """``tf.train.ExponentialMovingAverage`` (TF 2.x and ``tf.compat.v1``).

    ``d_t = min(decay, (1 + n) / (10 + n))`` computed in float32 (TF casts the decay and the
    counter to float32 and forms ``1 - d`` there), every ``apply()`` updates, shadows start as
    the variables. ``zero_debias=True`` is TF's rule for tensors: zero shadows, read through
    ``/ (1 - d_t ** t)``. The ratio is formed in float64 and rounded once to float32, where TF
    rounds the counter and each sum: past a counter of 2**24, with a decay of 0.9999995 or
    more (only then does the ratio still win the ``min``), a decay can differ from TF's by one
    float32 ulp.

    Args:
        decay: the decay (TF's ``decay``).
        num_updates: None for a constant decay, or the value TF's ``num_updates`` counter holds
            at the first update, assumed to grow by one per update (the global step: 1).
        zero_debias: zero-initialise and debias with ``1 - d_t ** t``.

    Example:
        >>> from ema_core import presets
        >>> round(presets.tensorflow(0.999, num_updates=1).decay(1), 5)
        0.18182
    """
    schedule = in_float32(counter_schedule(decay, num_updates))
    if check_bool("zero_debias", zero_debias):
        return Config(schedule, init="zeros", correction="power")
    return Config(schedule, init="params")


def allennlp(
    decay: float = 0.9999,
    numerator: float = 1.0,
    denominator: float = 10.0,
    *,
    num_updates: int | None = None,
) -> Config:
    """AllenNLP 2.10 ``allennlp.training.moving_average.ExponentialMovingAverage``.

    ``apply(num_updates)`` uses ``min(decay, (numerator + n) / (denominator + n))``, ``apply()``
    the plain decay; shadows start as the parameters (named parameters only: no buffers). A
    numerator above the denominator gives the plain decay (the ratio never wins the ``min``).

    Args:
        decay: AllenNLP's ``decay`` (also the cap of the counter decay).
        numerator: AllenNLP's ``numerator``.
        denominator: AllenNLP's ``denominator``.
        num_updates: None when ``apply()`` gets no count, else the count it gets at the first
            update, growing by one per update (AllenNLP's trainer passes the batch count, 1).

    Example:
        >>> from ema_core import presets
        >>> round(presets.allennlp(num_updates=1).decay(2), 5)
        0.25
    """
    schedule = counter_schedule(decay, num_updates, numerator, denominator)
    return Config(schedule, init="params", buffers="skip")


def paddle(decay: float = 0.999, thres_steps: int | None = None) -> Config:
    """PaddlePaddle 2.6 ``paddle.static.ExponentialMovingAverage``.

    ``ema_t = d_t ema_{t-1} + (1 - d_t) theta_t`` from ``ema_0 = 0`` with the decay in float32,
    ``d_t = min(decay, (1 + thres) / (10 + thres))`` when ``thres_steps`` is set, and the read
    (``apply()``) divides by ``1 - d_t ** t`` with the decay of the last update.

    Args:
        decay: Paddle's ``decay``.
        thres_steps: None, or the value of the ``thres_steps`` variable at the first update,
            assumed to grow by one per update (a global step counter).

    Example:
        >>> from ema_core import presets
        >>> cfg = presets.paddle(0.5)
        >>> cfg.init, cfg.correction, cfg.decay(3)
        ('zeros', 'power', 0.5)
    """
    schedule = in_float32(counter_schedule(decay, thres_steps, name="thres_steps"))
    return Config(schedule, init="zeros", correction="power", buffers="skip")


def mmedit(
    momentum: float = 0.0002,
    interval: int = 1,
    update_buffers: bool = False,
    *,
    gamma: float | None = None,
) -> Config:
    """MMEditing's ``ExponentialMovingAverage``, i.e. mmengine 0.10 ``ExponentialMovingAverage``
    (and ``MomentumAnnealingEMA`` when ``gamma`` is given).

    ``momentum`` is the weight of the NEW value: ``d = 1 - momentum`` (annealed:
    ``1 - max(momentum, gamma / (gamma + t - 1))``). The first ``update_parameters()`` copies;
    later calls blend only when ``(t - 1) % interval == 0``, with a one-step decay (no
    compensation). Buffers are copied every call, or averaged with ``update_buffers=True``,
    where integer buffers are then left alone. ``device`` is a storage choice, not a Config
    matter. A ``momentum`` above 0.5 is a ``UserWarning``, as mmengine logs a warning.
    Deliberate difference: integer buffers under ``update_buffers=True`` keep their value from
    ``init`` (mmengine copies them once, at the first update).

    Args:
        momentum: mmengine's ``momentum`` (``1 - decay``), in (0, 1).
        interval: blend every ``interval`` calls.
        update_buffers: average floating buffers too.
        gamma: MomentumAnnealingEMA's ``gamma``.

    Example:
        >>> from ema_core import presets
        >>> [presets.mmedit(0.1, interval=2).decay(t) for t in range(1, 5)]
        [0.0, 1.0, 0.9, 1.0]
    """
    check_fraction("momentum", momentum)
    check_positive("interval", interval, integer=True)
    check_step_int("interval", interval)
    check_bool("update_buffers", update_buffers)
    if momentum > 0.5:  # as mmengine warns: a decay passed as momentum follows the params
        warnings.warn(
            f"momentum={momentum} is the weight of the NEW value in mmengine (decay = 1 - "
            f"momentum = {1.0 - momentum:.6g}), usually a small number such as 0.0002: a "
            "decay passed as momentum makes the average follow the params",
            UserWarning,
            stacklevel=2,
        )
    if gamma is None:
        inner = momentum_schedule(momentum)
        schedule = gated(inner, every=interval, phase=1, copy_through=1)
    else:
        inner = annealing(momentum, gamma)
        schedule = gated(inner, every=interval, phase=1, copy_through=1, offset=-1)
    return Config(
        schedule,
        init="copy",
        non_float="freeze" if update_buffers else "copy",
        buffers="average" if update_buffers else "copy",
    )
