"""The demo's agreement check: one EMA config, the same trajectory in every installed framework.

A noisy-SGD linear regression is written once against the Array API and trained, with the EMA
updated by ``ema_core.update`` after every step, in numpy, torch, JAX (jitted) and
array-api-strict. The EMA's trajectory is compared with numpy's.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

import array_api_compat as compat
import numpy as np

import ema_core as ema
from ema_core import schedules

STEPS, BATCH, LR, DIM = 1500, 4, 0.08, 16
CHECKPOINTS = 15  # points of the trajectory compared
CONFIG = ema.Config(schedule=schedules.warmup(0.995), init="zeros")
TOLERANCE = 1e-5  # max relative disagreement allowed between frameworks (float32 SGD + EMA)

Native = Callable[[np.ndarray], Any]


def make_data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(DIM).astype(np.float32)
    x_train = rng.standard_normal((256, DIM)).astype(np.float32)
    x_test = rng.standard_normal((4096, DIM)).astype(np.float32)
    noise = (0.5 * rng.standard_normal(256)).astype(np.float32)
    return {
        "x": x_train,
        "y": x_train @ w_true + 1.0 + noise,
        "x_test": x_test,
        "y_test": x_test @ w_true + 1.0,
        "batches": rng.integers(0, 256, (STEPS, BATCH)),
    }


def train_step(
    state: tuple[dict[str, Any], ema.EMAState], x: Any, y: Any
) -> tuple[dict[str, Any], ema.EMAState]:
    """One SGD step on 0.5 * mean((x w + b - y)^2), then the EMA update; any Array API."""
    params, ema_state = state
    residual = x @ params["w"] + params["b"] - y
    grad_w = (residual @ x) / BATCH
    grad_b = compat.array_namespace(x).mean(residual)
    params = {"w": params["w"] - LR * grad_w, "b": params["b"] - LR * grad_b}
    return params, ema.update(ema_state, params, CONFIG)


def to_host(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    if type(x).__module__.startswith("array_api_strict"):
        return np.asarray(x._array)
    return np.asarray(x)


def heldout_loss(params: dict[str, Any], data: dict[str, np.ndarray]) -> float:
    w, b = to_host(params["w"]).astype(np.float64), float(to_host(params["b"]))
    return float(0.5 * np.mean((data["x_test"] @ w + b - data["y_test"]) ** 2))


def frameworks() -> dict[str, tuple[Native, Callable[..., Any]]]:
    """name -> (host array -> native array, the train step as run in that framework)."""
    found: dict[str, tuple[Native, Callable[..., Any]]] = {"numpy": (np.asarray, train_step)}
    if importlib.util.find_spec("torch"):
        import torch

        found["torch"] = (torch.from_numpy, train_step)
    if importlib.util.find_spec("jax"):
        import jax
        import jax.numpy as jnp

        found["jax (jit)"] = (jnp.asarray, jax.jit(train_step))
    if importlib.util.find_spec("array_api_strict"):
        import array_api_strict as aas

        found["array-api-strict"] = (aas.asarray, train_step)
    return found


def run(
    native: Native, step: Callable[..., Any], data: dict[str, np.ndarray], tick: Callable[[], None]
) -> dict[str, Any]:
    params = {"w": native(np.zeros(DIM, np.float32)), "b": native(np.zeros((), np.float32))}
    state = (params, ema.init(params, CONFIG))
    x, y = native(data["x"]), native(data["y"])
    trajectory, tic = [], time.perf_counter()
    for t in range(STEPS):
        idx = native(data["batches"][t])
        xp = compat.array_namespace(x)
        state = step(state, xp.take(x, idx, axis=0), xp.take(y, idx, axis=0))
        tick()
        if (t + 1) % (STEPS // CHECKPOINTS) == 0:
            avg = ema.average(state[1], CONFIG)
            trajectory.append(np.concatenate([to_host(avg["w"]), to_host(avg["b"])[None]]))
    return {
        "steps/s": STEPS / (time.perf_counter() - tic),
        "trajectory": np.stack(trajectory),
        "raw": heldout_loss(state[0], data),
        "ema": heldout_loss(ema.average(state[1], CONFIG), data),
    }


def measure(
    found: dict[str, tuple[Native, Callable[..., Any]]], tick: Callable[[], None]
) -> dict[str, dict[str, Any]]:
    """Train in every framework of ``found``: name -> speed, EMA trajectory, test losses."""
    data = make_data()
    return {name: run(native, step, data, tick) for name, (native, step) in found.items()}


def table(results: dict[str, dict[str, Any]]) -> bool:
    """Print the agreement table; whether every EMA trajectory agrees with numpy's."""
    ref = results["numpy"]["trajectory"]
    header = (
        f"{'framework':<18}{'steps/s':>9}{'max rel diff vs numpy':>23}{'raw loss':>11}"
        f"{'EMA loss':>11}  verdict"
    )
    print(header + "\n" + "-" * len(header))
    ok = True
    for name, res in results.items():
        diff = float(np.max(np.abs(res["trajectory"] - ref)) / np.max(np.abs(ref)))
        ok &= diff <= TOLERANCE
        print(
            f"{name:<18}{res['steps/s']:>9.0f}{diff:>23.2e}{res['raw']:>11.5f}"
            f"{res['ema']:>11.5f}  {'agrees' if diff <= TOLERANCE else 'DISAGREES'}"
        )
    for module, name in (
        ("torch", "torch"),
        ("jax", "jax (jit)"),
        ("array_api_strict", "array-api-strict"),
    ):
        if importlib.util.find_spec(module) is None:  # README: skipped with a line saying so
            print(f"{name:<18}skipped, {module} is not installed")
    print(f"EMA trajectories agree to {TOLERANCE:g} relative: {'yes' if ok else 'NO'}")
    return ok
