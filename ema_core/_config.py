"""The frozen hyperparameters of an EMA (the state holds only arrays and the step)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ema_core._checks import check_choice, check_positive
from ema_core._ops import MAX_STEP, ScalarOps, ops_for
from ema_core._types import InitPolicy, NonFloatPolicy, Step, Value
from ema_core.schedules import CopyAt, Schedule, as_schedule, constant, every

_INIT_POLICIES = ("params", "copy", "zeros")
_NON_FLOAT = ("copy", "freeze", "error")
_DTYPES = (None, "same", "float16", "bfloat16", "float32", "float64")
_CORRECTIONS = ("exact", "power", "none")
_BUFFERS = ("average", "copy", "skip")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class Config:
    """How an EMA decays, starts, stores and gates. Frozen and hashable (a static jit argument).

    Attributes:
        schedule: the decay per update count t (a Schedule, a float for a constant decay, or a
            callable ``t -> decay``). Default ``constant(0.9999)``, as timm and AllenNLP.
        init: ``"params"`` (the shadow starts as a copy of the params; TF, torch_ema, AllenNLP),
            ``"copy"`` (the first update copies the params; timm, ema-pytorch, diffusers,
            mmengine, Keras), ``"zeros"`` (the shadow starts at 0 and ``average`` divides by the
            bias-correction weight; optax, Paddle, TF ``zero_debias``).
        dtype: the shadow dtype of floating leaves: ``None`` (float32 for float16/bfloat16
            params, the params' dtype otherwise), ``"same"`` (always the params' dtype), or a
            dtype name (``"float32"``, ...).
        interval: update every ``interval`` steps (decay 1 on the others: the averaged leaves
            skip, bit for bit; copied leaves and buffers are still copied).
        compensate: with ``interval > 1``, apply the product of the skipped steps' decays
            (exact), not a one-step decay (what most peers do).
        non_float: integer and bool leaves are ``"copy"``-ed (the params' value, bit for bit)
            at every update call, also one whose decay is 1 (a skipped step), left untouched
            (``"freeze"``), or rejected (``"error"``).
        guard_finite: check that the params are finite before updating (a host sync per update).
        correction: how ``average`` corrects a ``"zeros"`` shadow: ``"exact"`` divides by
            ``w_t = 1 - prod(d_1..d_t)``; ``"power"`` by ``1 - d_t ** t`` with the decay in force
            at step t (Paddle, TF ``zero_debias``; equal to ``"exact"`` for a constant decay);
            ``"none"`` returns the raw shadow (optax ``debias=False``). Either way the read
            of a half shadow is float32, as optax returns it.
        buffers: for adapters that see module buffers (torch ``nn.Module``): floating buffers
            are averaged like parameters (``"average"``: a decay of 1 keeps them), copied from
            the model at every update call, also one whose decay is 1 (``"copy"``), or not
            tracked (``"skip"``). The functional core averages every floating leaf it is given
            and does not read this field.
    """

    schedule: Schedule | Callable[[Step], Value] | float = field(
        default_factory=lambda: constant(0.9999)
    )
    init: InitPolicy = "params"
    dtype: str | None = None
    interval: int = 1
    compensate: bool = True
    non_float: NonFloatPolicy = "copy"
    guard_finite: bool = False
    correction: Literal["exact", "power", "none"] = "exact"
    buffers: Literal["average", "copy", "skip"] = "average"

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", as_schedule(self.schedule, "Config.schedule"))
        check_choice("Config.init", self.init, _INIT_POLICIES)
        check_choice("Config.dtype", self.dtype, _DTYPES)
        check_positive("Config.interval", self.interval, integer=True)
        if self.interval > MAX_STEP:
            raise ValueError(
                f"Config.interval must be an int in [1, 2**63 - 1], got "
                f"{self.interval if self.interval < 2**128 else 'an int beyond 2**128'}"
            )
        check_choice("Config.non_float", self.non_float, _NON_FLOAT)
        check_choice("Config.correction", self.correction, _CORRECTIONS)
        check_choice("Config.buffers", self.buffers, _BUFFERS)
        for name in ("compensate", "guard_finite"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Config.{name} must be a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "_effective", self._build_effective())

    @property
    def effective_schedule(self) -> Schedule:
        """The schedule with the interval gate and the first-update copy applied."""
        return self._effective  # type: ignore[attr-defined,no-any-return]

    def _build_effective(self) -> Schedule:
        sched: Schedule = self.schedule  # type: ignore[assignment]
        if self.interval > 1:
            sched = every(sched, self.interval, self.compensate)
        if self.init == "copy":
            sched = CopyAt(sched, sched.first_update)
        return sched

    def decay(self, t: Step, /) -> Value:
        """The decay applied by the t-th update under this config.

        Example:
            >>> import ema_core as ema
            >>> cfg = ema.Config(schedule=0.9, init="copy", interval=2, compensate=False)
            >>> [cfg.decay(t) for t in range(1, 6)]
            [1.0, 0.0, 1.0, 0.9, 1.0]
        """
        return self.effective_schedule(t)

    def decay_and_rate(self, t: Step, /) -> tuple[Value, Value]:
        """``(decay, 1 - decay)`` of the t-th update."""
        return self.effective_schedule.decay_and_rate(t)


def power_weight(schedule: Schedule, t: Any) -> Any:
    """``1 - d_t ** t`` with ``d_t = schedule(t)`` (0 at t = 0), via ``-expm1(t log1p(-rate))``.

    A Python float for a Python int t, a 0-d float array for an array t.
    """
    ops = ops_for(t, "state.step")
    _, rate = schedule.pair(ops)
    if isinstance(ops, ScalarOps):
        if t == 0 or rate >= 1.0:
            return 0.0 if t == 0 else 1.0
        return -math.expm1(t * math.log1p(-rate))
    weight = -ops.expm1(ops.t * ops.log1p(-ops.minimum(rate, 1.0)))
    return ops.where(ops.t == 0.0, 0.0, ops.where(rate >= 1.0, 1.0, weight))


def shadow_dtype_name(config_dtype: str | None, param_dtype_name: str) -> str:
    """The shadow dtype name for a floating leaf under the dtype policy."""
    if config_dtype is None:
        return "float32" if param_dtype_name in ("float16", "bfloat16") else param_dtype_name
    return param_dtype_name if config_dtype == "same" else config_dtype


def config_text(config: Config) -> str:
    """``config`` as text that is the same in every process: its ``repr`` with object
    addresses removed, so a callable schedule reads as its qualified name
    (``FromCallable(fn=<function make.<locals>.<lambda>>)``). Checkpoints store it, and a
    strict load of the same config (the same schedule source) compares equal.

    Example:
        >>> from ema_core import Config
        >>> text = config_text(Config(schedule=lambda t: 0.5))
        >>> text[:50]
        'Config(schedule=FromCallable(fn=<function <lambda>'
        >>> text == config_text(Config(schedule=lambda t: 0.5))  # another object, same source
        True
    """
    return stable_text(repr(config))


def stable_text(text: str) -> str:
    """``text`` without the `` at 0x...`` addresses Python's default reprs hold."""
    return _ADDRESS.sub("", text)
