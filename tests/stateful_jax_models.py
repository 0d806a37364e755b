"""Helpers of tests/test_stateful_jax.py: the params tree (float32 and bfloat16 leaves), its
leaves seen as the torch tensors that the float64 ``Reference`` of tests/stateful_models reads,
byte snapshots of states, the configs with their compiled updates and optax train steps (made
once per config and shared by every example) and the calls that must be refused."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import ema_core as ema
from ema_core.jax import load_state_dict, make_update, state_dict, with_ema
from tests.reference import Spec

WARMUP = Spec("warmup", (0.999,), {"power": 0.75})
# (spec, init, interval, compensate, optax wrapper): few, so that each compiles once per run
SETTINGS = [
    (Spec("constant", (0.0,)), "params", 1, True, "apply_if_finite"),
    (Spec("constant", (0.5,)), "zeros", 1, True, "multi_steps"),
    (Spec("constant", (0.5,)), "copy", 3, True, "apply_if_finite"),
    (Spec("constant", (0.9,)), "copy", 2, True, "multi_steps"),
    (Spec("constant", (0.9,)), "zeros", 3, False, "apply_if_finite"),
    (Spec("constant", (1.0,)), "params", 1, True, "multi_steps"),
    (Spec("constant", (1.0,)), "zeros", 1, True, "apply_if_finite"),
    (WARMUP, "zeros", 1, True, "apply_if_finite"),
    (WARMUP, "copy", 3, True, "multi_steps"),
    (WARMUP, "params", 2, False, "apply_if_finite"),
]
CONFIGS = [
    (spec, ema.Config(schedule=spec.build(), init=init, interval=n, compensate=c), opt)  # type: ignore[arg-type]
    for spec, init, n, c, opt in SETTINGS
]
IDS = [f"{s.name}{s.args[0]}-{i}-every{n}{'' if c else '-raw'}-{o}" for s, i, n, c, o in SETTINGS]
EPS32 = float(np.finfo(np.float32).eps)
EVERY_K = 2  # optax.MultiSteps applies every EVERY_K-th call


def new_params(rng: np.random.Generator) -> dict[str, Any]:
    """Two float32 leaves and a bfloat16 one in a list (its shadow is float32)."""
    shapes = {"w": ((3, 4), jnp.float32), "b": ((3,), jnp.float32)}
    dense = {k: jnp.asarray(rng.uniform(-2, 2, s), d) for k, (s, d) in shapes.items()}
    return {"dense": dense, "low": [jnp.asarray(rng.uniform(-2, 2, (2, 3)), jnp.bfloat16)]}


def named(tree: Any) -> dict[str, Any]:
    """The leaves of ``tree`` by their paths joined with ``/``."""
    pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p, simple=True, separator="/"): x for p, x in pairs}


def torch_dtype(dtype: Any) -> torch.dtype:
    return getattr(torch, np.dtype(dtype).name)  # type: ignore[no-any-return]


def to_torch(x: jax.Array) -> torch.Tensor:
    """The same values in a torch tensor of the same dtype (bfloat16 through float32: exact)."""
    wide = np.asarray(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x).copy()
    return torch.from_numpy(wide).to(torch_dtype(x.dtype))


def live(params: Any) -> dict[str, torch.Tensor]:
    return {name: to_torch(x) for name, x in named(params).items()}


def bits(x: Any) -> tuple[str, tuple[int, ...], bytes]:
    """The dtype, shape and bytes of an array (reading a deleted JAX array raises)."""
    return str(x.dtype), tuple(x.shape), np.asarray(x).tobytes()


def snapshot(tree: Any) -> dict[str, Any]:
    """Every array's bits by path: a state's shadows, step and weight."""
    return {name: bits(x) for name, x in named(tree).items()}


@functools.cache
def compiled(config: ema.Config, donate: bool) -> Callable[..., ema.EMAState]:
    return make_update(config, donate=donate)


@functools.cache
def train_step(config: ema.Config, optimizer: str) -> tuple[Any, Callable[..., Any]]:
    """``with_ema`` over SGD inside optax's skipping wrappers, and its jitted step."""
    sgd = optax.sgd(0.5)
    if optimizer == "apply_if_finite":
        inner = optax.apply_if_finite(sgd, max_consecutive_errors=10**6)
    else:
        inner = optax.MultiSteps(sgd, every_k_schedule=EVERY_K).gradient_transformation()
    opt = with_ema(inner, config)

    @jax.jit
    def step(params: Any, opt_state: Any, grads: Any) -> tuple[Any, Any]:
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return opt, step


def resumed(state: ema.EMAState, like: ema.EMAState) -> ema.EMAState:
    """``state`` through an ``.npz`` file into ``like``."""
    buffer = io.BytesIO()
    np.savez(buffer, **state_dict(state))
    buffer.seek(0)
    with np.load(buffer) as arrays:
        return load_state_dict(dict(arrays), like)


def _with_b(params: Any, b: Any) -> Any:
    return {"dense": {**params["dense"], "b": b}, "low": params["low"]}


def check_average(state: ema.EMAState, average: Any, init: str) -> None:
    """``average``: the shadow arrays themselves, or under ``init="zeros"`` shadow / weight
    within a float32 rounding (the raw shadow while the weight is 0)."""
    w = float(state.weight) if init == "zeros" else None
    for name, shadow in named(state.shadow).items():
        got = named(average)[name]
        if w is None:
            assert got is shadow, name
        elif w == 0.0:
            assert bits(got) == bits(shadow), name
        else:
            got, want = np.asarray(got, np.float64), np.asarray(shadow, np.float64) / w
            assert np.array_equal(np.isfinite(got), np.isfinite(want)), name
            fin = np.isfinite(want)
            assert np.all(np.abs(got[fin] - want[fin]) <= EPS32 * np.abs(want[fin])), name


def bad_update(state: ema.EMAState, params: Any, kind: str) -> tuple[Any, Any, type]:
    """A state and params that an update must refuse, and the error it must raise. A bad state
    shares its other arrays with ``state``: donating them would delete ``state``'s."""
    w, b = params["dense"]["w"], params["dense"]["b"]
    bad: dict[str, tuple[Any, Any, type]] = {
        "negative_step": (state._replace(step=jnp.asarray(-1, jnp.int32)), params, ValueError),
        "float_step": (state._replace(step=jnp.asarray(1.5)), params, TypeError),
        "weight_shape": (state._replace(weight=jnp.ones(2)), params, ValueError),
        "weight_dtype": (state._replace(weight=jnp.asarray(1, jnp.int32)), params, TypeError),
        "shape": (state, _with_b(params, jnp.zeros(4)), ValueError),
        "int_leaf": (state, _with_b(params, b.astype(jnp.int32)), TypeError),
        "complex_leaf": (state, _with_b(params, b.astype(jnp.complex64)), TypeError),
        "missing": (state, {"dense": {"w": w}, "low": params["low"]}, ValueError),
        "other_state": (ema.init({"x": jnp.zeros(2)}), params, ValueError),
    }
    return bad[kind]


def bad_load(state: ema.EMAState, kind: str) -> tuple[dict[str, np.ndarray], type]:
    """A ``state_dict`` of ``state`` that ``load_state_dict`` into it must refuse."""
    arrays = state_dict(state)
    if kind == "load_missing":
        del arrays["weight"]
    elif kind == "load_extra":
        arrays["shadow/extra"] = np.zeros(2, np.float32)
    elif kind == "load_shape":
        arrays["shadow/dense/b"] = np.zeros(4, np.float32)
    elif kind == "load_dtype":
        return arrays | {"shadow/dense/b": arrays["shadow/dense/b"].astype(np.float16)}, TypeError
    else:  # another tree's
        arrays = state_dict(ema.init({"x": jnp.zeros(2)}))
    return arrays, ValueError
