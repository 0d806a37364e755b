"""The frozen hyperparameters of an EMA (the state holds only arrays and the step)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

from ema_core._checks import check_choice, check_positive
from ema_core._config_words import PEER_WORDS
from ema_core._ops import MAX_STEP, ScalarOps, ops_for
from ema_core._step_forms import as_given
from ema_core._types import InitPolicy, NonFloatPolicy, Step, Value
from ema_core.schedules import CopyAt, Every, Gated, Schedule, as_schedule, constant, every

_INIT_POLICIES = ("params", "copy", "zeros")
_NON_FLOAT = ("copy", "freeze", "error")
_DTYPES = (None, "same", "float16", "bfloat16", "float32", "float64")
_CORRECTIONS = ("exact", "power", "none")
_BUFFERS = ("average", "copy", "skip")


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
            dtype name (``"float32"``, ...). Complex leaves keep their own dtype.
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
            at step t (Paddle, TF ``zero_debias``; equal to ``"exact"`` for a constant decay:
            with an ``interval`` k the exponent counts the decays taken, ``k * (t // k)``, or
            ``t // k`` without ``compensate``; a schedule that skips steps, ``every`` of
            n > 1 or ``gated`` with ``every > 1`` or ``start > 1``, is refused with it: give the
            interval as ``interval=``);
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

    def __new__(cls, *args: Any, **kwargs: Any) -> Config:
        """A peer's keyword (``decay=``, ...) is a TypeError naming the field to use."""
        if kwargs and not PEER_WORDS.keys().isdisjoint(kwargs):
            name = _peer_word(cls, kwargs)
            if name is None:  # a subclass's own field of that name
                return object.__new__(cls)
            raise TypeError(
                f"Config has no argument {name} (got {name}={kwargs[name]!r:.80}): "
                f"{PEER_WORDS[name].format(v=repr(kwargs[name])[:80], name=name)}"
            )
        return object.__new__(cls)

    def _choose(self, field: str, allowed: tuple[Any, ...]) -> None:
        """Check a choice field, kept as the allowed value itself (``np.str_`` as ``str``)."""
        value = check_choice(f"Config.{field}", getattr(self, field), allowed)
        object.__setattr__(self, field, value)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", as_schedule(self.schedule, "Config.schedule"))
        self._choose("init", _INIT_POLICIES)
        self._choose("dtype", _DTYPES)
        check_positive("Config.interval", self.interval, integer=True)
        if self.interval > MAX_STEP:
            raise ValueError(
                f"Config.interval must be an int in [1, 2**63 - 1], got "
                f"{self.interval if self.interval < 2**128 else 'an int beyond 2**128'}"
            )
        self._choose("non_float", _NON_FLOAT)
        self._choose("correction", _CORRECTIONS)
        if self.correction == "power" and _leaves_gaps(self.schedule):
            raise ValueError(
                f"Config.correction='power' divides by 1 - d_t ** t with the decay at step t, "
                f"and {self.schedule!r:.120} skips steps (decay 1 there: the read would be the "
                "raw shadow): give the interval as Config(interval=n), whose power correction "
                "counts the decays taken, or use correction='exact'"
            )
        self._choose("buffers", _BUFFERS)
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
        if type(self).decay_and_rate is not Config.decay_and_rate:  # a subclass's own decays
            return self.decay_and_rate(t)[0]
        return self.effective_schedule(t)

    def decay_and_rate(self, t: Step, /) -> tuple[Value, Value]:
        """``(decay, 1 - decay)`` of the t-th update."""
        return self.effective_schedule.decay_and_rate(t)

    def _pair_at(self, t: Step, /) -> tuple[Value, Value]:
        """``decay_and_rate(t)`` as the update paths read it (``Schedule._pair_at``); through
        ``decay_and_rate`` itself where a subclass overrides it."""
        if type(self).decay_and_rate is not Config.decay_and_rate:
            return self.decay_and_rate(t)
        return self.effective_schedule._pair_at(t)


def _peer_word(cls: type, kwargs: dict[str, Any]) -> str | None:
    """The first keyword of ``kwargs`` that is a peer's word and not a field of ``cls``."""
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return next((k for k in kwargs if k in PEER_WORDS and k not in fields), None)


# ``inspect.signature(Config)`` (help(), IDEs, argument parsers) reads ``__new__`` before
# ``__init__``: give it the fields, not ``(*args, **kwargs)``.
_INIT = inspect.signature(Config.__init__)
_FIRST, *_FIELDS = _INIT.parameters.values()
vars(Config)["__new__"].__func__.__signature__ = _INIT.replace(
    parameters=[_FIRST.replace(name="cls"), *_FIELDS], return_annotation="Config"
)


def _leaves_gaps(schedule: Any) -> bool:
    """Whether ``schedule`` has steps of decay 1 after its first update (an interval, a gate's
    ``every``, or steps before a gate's ``start``), here or in a schedule it wraps."""
    if isinstance(schedule, Every) and schedule.n > 1:
        return True
    if isinstance(schedule, Gated) and (schedule.every > 1 or schedule.start > 1):
        return True
    inner = (getattr(schedule, f.name) for f in fields(schedule)) if is_dataclass(schedule) else ()
    return any(_leaves_gaps(value) for value in inner if isinstance(value, Schedule))


def power_weight(schedule: Schedule, t: Any, interval: int = 1, compensate: bool = True) -> Any:
    """``1 - d_t ** n`` with ``d_t = schedule(t)`` and ``n`` the decays the shadow took by step
    t: ``t`` itself, or with an ``interval`` k the steps at multiples of k (``floor(t / k)``,
    times k where ``compensate`` applies k decays there), so that for a constant decay it is
    the exact weight; 0 at n = 0. Computed as ``-expm1(n log1p(-rate))``.

    A Python float for a Python int t, a 0-d float array for an array t.
    """
    ops = ops_for(t, "state.step")
    _, rate = schedule.pair(ops)
    per = interval if compensate else 1
    if isinstance(ops, ScalarOps):
        n = ops.raw // interval * per  # (a CPU tensor step read as an int)
        if n == 0 or rate >= 1.0:
            return as_given(ops, 0.0 if n == 0 else 1.0)
        return as_given(ops, -math.expm1(n * math.log1p(-rate)))
    count = ops.t
    if interval > 1:  # an interval past the step dtype's top is never reached: n = 0
        top = int(ops.xp.iinfo(ops.raw.dtype).max)
        taken = ops.raw // interval * per if interval <= top else ops.xp.zeros_like(ops.raw)
        count = ops.xp.astype(taken, ops.dtype)
    weight = -ops.expm1(count * ops.log1p(-ops.minimum(rate, 1.0)))
    return ops.where(count == 0.0, 0.0, ops.where(rate >= 1.0, 1.0, weight))


def shadow_dtype_name(config_dtype: str | None, param_dtype_name: str) -> str:
    """The shadow dtype name for a floating leaf under the dtype policy: a complex leaf keeps
    its own (the policy names a real dtype: a real shadow would drop the imaginary part), but
    torch's half complex (``complex32``) gets ``complex64``, as a half leaf gets float32 (a
    half shadow stalls near decay 1), unless the policy is ``"same"``."""
    if param_dtype_name.startswith("complex"):
        half = param_dtype_name == "complex32" and config_dtype != "same"
        return "complex64" if half else param_dtype_name
    if config_dtype is None:
        return "float32" if param_dtype_name in ("float16", "bfloat16") else param_dtype_name
    return param_dtype_name if config_dtype == "same" else config_dtype


def divisor(config: Config, weight: Any, step: Any) -> Any:
    """What a zero-started shadow is divided by when read: the EMA's bias-correction
    ``weight`` (``correction="exact"``), the power schedule's weight at ``step``
    (``"power"``), or 1 (``"none"``).

    Example:
        >>> divisor(Config(0.5, init="zeros", correction="power"), 0.0, 2)
        0.75
    """
    if config.correction == "none":
        return 1.0
    if config.correction == "power":
        return power_weight(config.schedule, step, config.interval, config.compensate)  # type: ignore[arg-type]
    return weight
