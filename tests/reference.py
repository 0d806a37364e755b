"""The float64 oracle: schedules written out from their formulas, a plain loop and the closed form.

Nothing here calls ema_core's schedule code, so a schedule bug cannot hide in both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import ema_core as ema
from ema_core import schedules


@dataclass(frozen=True)
class Spec:
    """A schedule by name and arguments, buildable as ema_core's and as the oracle's."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> schedules.Schedule:
        return getattr(schedules, self.name)(*self.args, **self.kwargs)

    def decay(self, t: int) -> float:
        return ORACLE[self.name](t, *self.args, **self.kwargs)

    def __hash__(self) -> int:
        return hash((self.name, self.args, tuple(sorted(self.kwargs.items()))))


def _constant(t: int, decay: float) -> float:
    return decay


def _num_updates(t: int, decay: float, numerator: float = 1.0, denominator: float = 10.0) -> float:
    return min(decay, (numerator + t) / (denominator + t))


def _warmup(
    t: int, decay: float, inv_gamma: float = 1.0, power: float = 2 / 3, min_decay: float = 0.0
) -> float:
    return min(max(1 - (1 + t / inv_gamma) ** -power, min_decay), decay)


def _power_function(t: int, gamma: float | None = None, sigma_rel: float | None = None) -> float:
    if sigma_rel is not None:
        # the largest real root of g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2) (EDM2)
        roots = np.roots([1, 7, 16 - sigma_rel**-2, 12 - sigma_rel**-2])
        gamma = float(roots.real.max())
    return 0.0 if t <= 1 else (1 - 1 / t) ** (gamma + 1)


def _half_life(t: int, steps: float) -> float:
    return 0.5 ** (1 / steps)


def _annealing(t: int, momentum: float, gamma: float = 100.0) -> float:
    return 1 - max(momentum, gamma / (gamma + t))


ORACLE = {
    "constant": _constant,
    "num_updates": _num_updates,
    "warmup": _warmup,
    "power_function": _power_function,
    "half_life": _half_life,
    "annealing": _annealing,
}

SPECS = [
    Spec("constant", (0.9,)),
    Spec("constant", (0.0,)),
    Spec("num_updates", (0.999,)),
    Spec("warmup", (0.9999,), {"power": 3 / 4, "min_decay": 0.1}),
    Spec("power_function", (), {"sigma_rel": 0.05}),
    Spec("power_function", (6.94,)),
    Spec("half_life", (3.0,)),
    Spec("annealing", (0.0002, 100.0)),
]


def effective_decay(spec: Spec, t: int, init: str, interval: int, compensate: bool) -> float:
    """The decay the t-th update applies, with interval gating and the first-update copy."""
    if interval > 1 and t % interval:
        return 1.0
    if init == "copy" and t == interval:
        return 0.0
    if interval > 1 and compensate:
        return math.prod(spec.decay(k) for k in range(t - interval + 1, t + 1))
    return spec.decay(t)


def run_loop(
    spec: Spec,
    init: str,
    interval: int,
    compensate: bool,
    init_params: dict[str, np.ndarray],
    seq: list[dict[str, np.ndarray]],
) -> list[tuple[dict[str, np.ndarray], float]]:
    """The plain loop in float64: (shadow, weight) after each update."""
    shadow = {
        k: (
            np.zeros_like(v, np.float64)
            if init == "zeros" and v.dtype.kind == "f"
            else v.astype(np.float64)
        )
        for k, v in init_params.items()
    }
    weight = 0.0 if init == "zeros" else 1.0
    out = []
    for t, params in enumerate(seq, 1):
        d = effective_decay(spec, t, init, interval, compensate)
        for k, p in params.items():
            if p.dtype.kind == "f":
                shadow[k] = d * shadow[k] + (1 - d) * p.astype(np.float64)
            else:  # integers take the params on every call, decay 1 included
                shadow[k] = p.astype(np.float64)
        weight = d * weight + (1 - d)
        out.append(({k: v.copy() for k, v in shadow.items()}, weight))
    return out


def closed_form(decays: list[float], s0: np.ndarray, seq: list[np.ndarray]) -> np.ndarray:
    """``s_T = prod(d) s_0 + sum_k (1 - d_k) prod_{j > k} d_j p_k``."""
    total = math.prod(decays) * s0.astype(np.float64)
    for k, p in enumerate(seq):
        total = total + (1 - decays[k]) * math.prod(decays[k + 1 :]) * p.astype(np.float64)
    return total


def config_for(
    spec: Spec, init: str, interval: int = 1, compensate: bool = True, **kw: Any
) -> ema.Config:
    return ema.Config(
        schedule=spec.build(),
        init=init,
        interval=interval,  # type: ignore[arg-type]
        compensate=compensate,
        **kw,
    )
