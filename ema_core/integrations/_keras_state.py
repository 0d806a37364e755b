"""The Keras ``EMACallback``'s EMA as ema-core arrays: started, updated, averaged, saved, loaded.

The averaged weights live in an ``EMAState`` (ema-core's functional ``init`` / ``update`` /
``average`` on the backend's own arrays); the copied weights (``buffers="copy"``) beside it, as
copies on their device. ``save`` writes both as one ema-core checkpoint, and ``load`` reads
them back, checked against the model's weights and the config. ``plan_for`` checks that a
model may carry on an EMA begun in an earlier call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

import ema_core
from ema_core import checkpoint
from ema_core._config import Config
from ema_core._types import EMAState
from ema_core.integrations._keras_weights import (
    Plan,
    check_continues,
    check_model,
    check_owner,
    live_arrays,
    snapshot,
    to_numpy,
)


def plan_for(old: Plan | None, owner: Any, model: Any, buffers: str) -> Plan:
    """The ``Plan`` of ``model``'s weights; with an EMA already (planned as ``old``), checked
    first to be the model it follows (``owner``) or one it may continue on."""
    if old is not None:
        check_owner(owner, model)
    plan = Plan(model, buffers)
    if old is not None:
        check_continues(old, plan)
    return plan


def start(model: Any, plan: Plan, config: Config) -> tuple[EMAState, dict[str, Any]]:
    """A fresh EMA of the averaged weights of ``plan`` at the model's weights, and copies (on
    their device) of the copied ones, by name."""
    state = ema_core.init(live_arrays(model, plan, plan.averaged), config)
    return state, {n: snapshot(a) for n, a in live_arrays(model, plan, plan.copied).items()}


def update(
    state: EMAState, model: Any, plan: Plan, config: Config
) -> tuple[EMAState, dict[str, Any]]:
    """The EMA after one update on the model's weights, and new copies of the copied ones."""
    live = live_arrays(model, plan, [*plan.averaged, *plan.copied])
    params = {plan.names[i]: live[plan.names[i]] for i in plan.averaged}
    state = ema_core.update(state, params, config)
    return state, {plan.names[i]: snapshot(live[plan.names[i]]) for i in plan.copied}


def averages(state: EMAState, copies: dict[str, Any], config: Config) -> dict[str, Any]:
    """Every weight's stand-in by name: the averages (bias-corrected) and the copies."""
    return {**ema_core.average(state, config), **copies}


def as_numpy(plan: Plan, averages: dict[str, Any]) -> list[np.ndarray[Any, Any]]:
    """``averages`` as numpy arrays in ``plan``'s order (``model.get_weights()``'s) and the
    weights' dtypes; a weight without one (skipped) as the model holds it."""
    return [
        to_numpy(averages.get(name, w.value), w)
        for name, w in zip(plan.names, plan.weights, strict=True)
    ]


def save(
    path: str | os.PathLike[str], state: EMAState, copies: dict[str, Any], config: Config
) -> Path:
    """Write ``state`` and ``copies`` as one ema-core checkpoint at ``path`` (creating the
    folders above it); return the path."""
    full = EMAState(state.step, {**state.shadow, **copies}, state.weight)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return checkpoint.save(path, full, config)


def load(
    path: str | os.PathLike[str], model: Any, config: Config
) -> tuple[Plan, EMAState, dict[str, Any]]:
    """The plan of ``model``'s weights, and the state and copies ``save`` wrote at ``path``,
    checked against those weights (names, shapes, dtypes) and ``config``."""
    check_model(model)
    plan = Plan(model, config.buffers)
    fresh, copies = start(model, plan, config)
    like = EMAState(fresh.step, {**fresh.shadow, **copies}, fresh.weight)
    loaded = checkpoint.load(path, like, config=config)
    averaged = {plan.names[i] for i in plan.averaged}
    shadow = {n: a for n, a in loaded.shadow.items() if n in averaged}
    copies = {n: a for n, a in loaded.shadow.items() if n not in averaged}
    return plan, EMAState(loaded.step, shadow, loaded.weight), copies
