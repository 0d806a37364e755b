"""Float64 oracles of the peer EMAs, each written from its peer's documented update rule.

An oracle follows one peer call by call on float64 copies of the tensors it holds: the decay
of each call (schedule, first-update copy, step offset, interval gate, clamps), what each kind
of tensor does on a call, and the read (bias correction, accumulator dtype). Decays are formed
in float64 from the peer's arguments, never by ``ema_core.schedules``. Where ema-core documents
a deliberate difference, the oracle keeps ema-core's view of those tensors beside the peer's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import ml_dtypes
import numpy as np

#: What a tensor held by the EMA does on a call: ``average`` blends it with the call's decay
#: (untouched by a call that skips), ``copy`` copies it on every call, ``first`` on the first
#: call only, ``freeze`` keeps its value from construction, ``truncate`` blends and truncates
#: toward zero (integers averaged in floating point).
Rule = Literal["average", "copy", "first", "freeze", "truncate"]
#: A tensor's kind: a parameter, a floating buffer, or an integer buffer.
Kind = Literal["param", "buffer", "int"]
Rules = Mapping[Kind, Rule]


@dataclass(frozen=True)
class Plan:
    """One peer's documented behaviour: the decay of call t (t = 1 at the first call; None
    when the call leaves the averages alone) and the rule per tensor kind (kinds it does not
    hold are absent); then ema-core's documented rules where they differ on purpose, and
    whether its preset rounds the decay to float32 as the peer forms it."""

    decay: Callable[[int], float | None]
    peer: Rules
    ours: Rules = field(default_factory=dict)
    ours_float32: bool = False


class Oracle:
    """Two float64 EMAs of named tensors that follow a ``Plan``: ``peer_view()`` what the peer
    should hold, ``ours_view()`` what ema-core should (its rules and decays where they differ)."""

    def __init__(self, start: Mapping[str, np.ndarray], kinds: Mapping[str, Kind], plan: Plan):
        self.plan, self.t = plan, 0
        self.rules = {n: plan.peer[k] for n, k in kinds.items() if k in plan.peer}
        self.ours_rules = {n: plan.ours.get(kinds[n], r) for n, r in self.rules.items()}
        self.peer = {n: np.array(start[n], np.float64) for n in self.rules}
        self.ours = {n: np.array(start[n], np.float64) for n in self.rules}

    def deviating(self) -> frozenset[str]:
        """The tensors whose documented rule differs between the peer and ema-core."""
        return frozenset(n for n, r in self.rules.items() if self.ours_rules[n] != r)

    def call(self, live: Mapping[str, np.ndarray]) -> None:
        self.t += 1
        d = self.plan.decay(self.t)
        ours_d = float(np.float32(d)) if self.plan.ours_float32 and d is not None else d
        for name, value in live.items():
            if name in self.rules:
                x = np.asarray(value, np.float64)
                self.peer[name] = _apply(self.rules[name], self.peer[name], x, d, self.t)
                self.ours[name] = _apply(self.ours_rules[name], self.ours[name], x, ours_d, self.t)

    def peer_view(self) -> dict[str, np.ndarray]:
        return dict(self.peer)

    def ours_view(self) -> dict[str, np.ndarray]:
        return dict(self.ours)


def _apply(rule: Rule, held: np.ndarray, live: np.ndarray, d: float | None, t: int) -> np.ndarray:
    if rule == "copy" or (rule == "first" and t == 1):
        return live.copy()
    if rule in ("first", "freeze") or d is None:
        return held
    blended = d * held + (1.0 - d) * live
    return np.trunc(blended) if rule == "truncate" else blended


def _warmup(u: int, inv_gamma: float, power: float) -> float:
    """The warm-up decay ``1 - (1 + u / inv_gamma) ** -power`` (timm, ema-pytorch, diffusers)."""
    return 1.0 - (1.0 + u / inv_gamma) ** -power


AVERAGED_WITH_FROZEN_INTS: Rules = {"param": "average", "buffer": "average", "int": "freeze"}


def torch_ema(decay: float, use_num_updates: bool = True) -> Plan:
    """Every call blends with ``min(decay, (1 + n) / (10 + n))`` (n = t) or ``decay``; the
    shadows start as the parameters; parameters only."""

    def at(t: int) -> float:
        return min(decay, (1 + t) / (10 + t)) if use_num_updates else decay

    return Plan(at, {"param": "average"})


def ema_pytorch(
    beta: float = 0.9999,
    update_after_step: int = 100,
    update_every: int = 10,
    inv_gamma: float = 1.0,
    power: float = 2 / 3,
    min_value: float = 0.0,
) -> Plan:
    """Call 1 copies; call t acts only when ``(t - 1) % update_every == 0``: a copy while
    ``t - 1 <= update_after_step``, then the warm-up decay at ``u = t - update_after_step - 1``
    clamped to ``[min_value, beta]`` (the upper bound wins when they cross, as ``torch.clamp``
    does), formed in float32 (as the preset does). ``beta == 1`` freezes the averages after the
    copies. Floating buffers are averaged, integer ones keep their value from construction."""

    def at(t: int) -> float | None:
        if t == 1 or ((t - 1) % update_every == 0 and t - 1 <= update_after_step):
            return 0.0
        if (t - 1) % update_every or beta == 1.0:
            return None
        u = t - update_after_step - 1
        return min(max(_warmup(u, inv_gamma, power), min_value), beta)

    return Plan(at, AVERAGED_WITH_FROZEN_INTS, ours_float32=True)


def karras_gamma(sigma_rel: float) -> float:
    """The power-function exponent with relative standard deviation ``sigma_rel`` (EDM2):
    the largest real root of ``(g + 1) / ((g + 2) ** 2 (g + 3)) = sigma_rel ** 2``."""
    s = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def ema_pytorch_karras(
    sigma_rel: float | None = None, gamma: float | None = None, update_every: int = 100
) -> Plan:
    """Call t acts only when ``(t - 1) % update_every == 0``; call 1 copies; a later one blends
    with ``(1 - 1 / (t + 1)) ** (gamma + 1)``. Integer buffers keep their construction value."""
    g = karras_gamma(sigma_rel) if gamma is None else gamma

    def at(t: int) -> float | None:
        if (t - 1) % update_every:
            return None
        return 0.0 if t == 1 else (1.0 - 1.0 / (t + 1)) ** (g + 1.0)

    return Plan(at, AVERAGED_WITH_FROZEN_INTS)


def diffusers(
    decay: float = 0.9999,
    min_decay: float = 0.0,
    update_after_step: int = 0,
    use_ema_warmup: bool = False,
    inv_gamma: float = 1.0,
    power: float = 2 / 3,
) -> Plan:
    """Calls ``t <= update_after_step + 1`` copy; later ones use the warm-up decay or
    ``(1 + u) / (10 + u)`` at ``u = t - update_after_step - 1``, capped at ``decay``, then
    floored at ``min_decay`` (the floor wins). Parameters only."""

    def at(t: int) -> float:
        u = t - update_after_step - 1
        if u <= 0:
            return 0.0
        ramp = _warmup(u, inv_gamma, power) if use_ema_warmup else (1 + u) / (10 + u)
        return max(min(ramp, decay), min_decay)

    return Plan(at, {"param": "average"})


def swa_utils(decay: float = 0.999, use_buffers: bool = False) -> Plan:
    """Call 1 copies, later ones blend with ``decay``. With ``use_buffers`` every buffer is
    blended (integers truncated; ema-core copies them instead), else buffers are copied."""

    def at(t: int) -> float:
        return 0.0 if t == 1 else decay

    if use_buffers:
        return Plan(
            at, {"param": "average", "buffer": "average", "int": "truncate"}, {"int": "copy"}
        )
    return Plan(at, {"param": "average", "buffer": "copy", "int": "copy"})


def mmengine(
    momentum: float = 0.0002,
    interval: int = 1,
    update_buffers: bool = False,
    gamma: float | None = None,
) -> Plan:
    """``ExponentialMovingAverage`` (``MomentumAnnealingEMA`` with ``gamma``): call 1 copies,
    call t blends when ``(t - 1) % interval == 0`` with weight ``momentum`` on the new value
    (annealed: ``max(momentum, gamma / (gamma + t - 1))``). With ``update_buffers`` floating
    buffers are blended and integers copied at call 1 only (ema-core keeps their construction
    value), else every buffer is copied on every call."""

    def at(t: int) -> float | None:
        if t == 1:
            return 0.0
        if (t - 1) % interval:
            return None
        weight = momentum if gamma is None else max(momentum, gamma / (gamma + t - 1))
        return 1.0 - weight

    if update_buffers:
        return Plan(
            at, {"param": "average", "buffer": "average", "int": "first"}, {"int": "freeze"}
        )
    return Plan(at, {"param": "average", "buffer": "copy", "int": "copy"})


def timm(
    decay: float = 0.9999,
    min_decay: float = 0.0,
    update_after_step: int = 0,
    use_warmup: bool = False,
    warmup_gamma: float = 1.0,
    warmup_power: float = 2 / 3,
    exclude_buffers: bool = False,
    *,
    with_step: bool = True,
) -> Plan:
    """``ModelEmaV3.update(model, step=t)``: calls ``t <= update_after_step + 1`` copy, later
    ones use ``decay`` or, with ``use_warmup``, the warm-up decay at ``u = t - update_after_step
    - 1`` capped at ``decay`` then floored at ``min_decay``. Without ``step`` every call uses
    ``decay``. Integer buffers are copied on every call, floating ones averaged (copied with
    ``exclude_buffers``)."""

    def at(t: int) -> float:
        u = t - update_after_step - 1
        if not with_step or (u > 0 and not use_warmup):
            return decay
        return 0.0 if u <= 0 else max(min(_warmup(u, warmup_gamma, warmup_power), decay), min_decay)

    buffers: Rule = "copy" if exclude_buffers else "average"
    return Plan(at, {"param": "average", "buffer": buffers, "int": "copy"})


def keras(ema_momentum: float = 0.99) -> Plan:
    """The first optimizer step copies, later ones blend with ``ema_momentum`` (Keras and the
    preset form it in float32); trainable variables only."""
    return Plan(lambda t: 0.0 if t == 1 else ema_momentum, {"param": "average"}, ours_float32=True)


class OptaxOracle:
    """``optax.ema(decay, debias, accumulator_dtype)`` from ``state`` after ``t`` updates (zeros
    and 0 for a new one): each update forms ``decay * ema + (1 - decay) * g``, returns it over
    ``1 - decay ** t`` (with ``debias``; NaN at ``decay == 1``: 0 / 0) and stores it rounded to
    the accumulator dtype. ema-core documents two differences (``ours_view``): it reads the
    stored state (a half accumulator's rounding shows), and the state itself at weight 0."""

    def __init__(
        self,
        state: Mapping[str, Any],
        decay: float,
        debias: bool = True,
        accumulator_dtype: str | None = None,
        t: int = 0,
    ) -> None:
        self.decay, self.debias, self.t = decay, debias, t
        self.dtype = None if accumulator_dtype in (None, "float32") else accumulator_dtype
        self.state = {k: np.asarray(v, np.float64) for k, v in state.items()}
        self.read = dict(self.state)

    def weight(self) -> float:
        return 1.0 - self.decay**self.t if self.debias else 1.0

    def call(self, live: Mapping[str, np.ndarray]) -> None:
        self.t += 1
        d, weight = self.decay, self.weight()
        for name, held in self.state.items():
            new = d * held + (1.0 - d) * np.asarray(live[name], np.float64)
            self.state[name] = _round_to(new, self.dtype)
            self.read[name] = new / weight if weight else np.full_like(new, math.nan)

    def read_of(self, state: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """ema-core's documented read of a stored state after ``t`` updates."""
        weight = self.weight() or 1.0
        return {k: np.asarray(v, np.float64) / weight for k, v in state.items()}

    def peer_view(self) -> dict[str, np.ndarray]:
        return dict(self.read)

    def ours_view(self) -> dict[str, np.ndarray]:
        return self.read_of(self.state)

    def deviating(self) -> frozenset[str]:
        """The names ema-core is not compared to optax on: all at ``decay == 1`` with
        ``debias`` (optax NaN, ema-core zeros)."""
        return frozenset(self.state) if self.debias and self.decay == 1.0 else frozenset()


def _round_to(x: np.ndarray, dtype: str | None) -> np.ndarray:
    """``x`` stored in a half accumulator (through float32, as the peer rounds a float32 value)."""
    if dtype is None:
        return x
    half = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    return x.astype(np.float32).astype(half).astype(np.float64)
