"""What a callable schedule is handed, as README ("A callable schedule's return value is
checked") says: the step as given unwrapped (a 0-d numpy step as a Python int), and inside
``every``, ``gated`` and ``Config(interval=n)`` the counts they derive, Python ints where the
host reads the step, arrays of the step's namespace otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import ema_core
from ema_core import schedules


def _seen(step: Any, zeros: Any, ones: Any, build: Callable[[Any], ema_core.Config]) -> set[str]:
    seen: list[str] = []

    def fn(t: Any) -> float:
        seen.append(type(t).__name__)
        return 0.9

    ema_core.ema_update({"w": zeros}, {"w": ones}, step, config=build(fn))
    return set(seen)


WRAPS: dict[str, Callable[[Any], ema_core.Config]] = {
    "plain": lambda fn: ema_core.Config(schedule=fn),
    "every": lambda fn: ema_core.Config(schedule=schedules.every(fn, 2)),
    "gated": lambda fn: ema_core.Config(schedule=schedules.gated(fn, every=2)),
    "interval": lambda fn: ema_core.Config(schedule=fn, interval=2),
}

CASES = {
    "torch": (lambda: torch.tensor(4), lambda: torch.zeros(3), lambda: torch.ones(3)),
    "numpy": (lambda: np.array(4), lambda: np.zeros(3), lambda: np.ones(3)),
    "jax": (lambda: jnp.array(4), lambda: jnp.zeros(3), lambda: jnp.ones(3)),
}

WANT = {
    ("torch", "plain"): {"Tensor"},
    ("numpy", "plain"): {"int"},
    ("jax", "plain"): {"ArrayImpl"},
}


@pytest.mark.parametrize("wrap", sorted(WRAPS))
@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_callable_sees_the_step_or_the_counts_its_wrappers_derive(kind: str, wrap: str) -> None:
    step, zeros, ones = (make() for make in CASES[kind])
    wrapped_want = {"ArrayImpl"} if kind == "jax" else {"int"}
    assert _seen(step, zeros, ones, WRAPS[wrap]) == WANT.get((kind, wrap), wrapped_want)


def test_a_callable_written_for_tensors_alone_fails_inside_every_on_a_cpu_step() -> None:
    """The README's warning: ``torch.clamp`` of a float raises once ``every`` hands an int."""
    config = ema_core.Config(
        schedule=schedules.every(lambda t: torch.clamp(t / (t + 1.0), max=0.9), 2)
    )
    with pytest.raises(TypeError):
        ema_core.ema_update(
            {"w": torch.zeros(3)}, {"w": torch.ones(3)}, torch.tensor(4), config=config
        )
