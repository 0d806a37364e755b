"""The demo's JAX run: the same CNN in plain ``jax.numpy`` / ``jax.lax``, trained with optax.

``with_ema`` wraps the optimizer, so the optimizer state carries the EMA and the jitted train
step updates it along with the weights; ``ema_average`` reads the (bias-corrected) averages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _demo_data as data
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ema_core.jax import ema_average, with_ema

Params = dict[str, jax.Array]
Curves = dict[str, list[float]]
SHAPES = {  # conv kernels as (height, width, in, out), as jax.lax.conv wants for "HWIO"
    "conv1": (3, 3, 1, 16),
    "conv2": (3, 3, 16, 32),
    "dense": (32 * 4 * 4, 10),
}


def init(key: jax.Array) -> Params:
    """Uniform in +-1/sqrt(fan_in), weights and biases (torch's default for these layers)."""
    params = {}
    for (name, shape), k in zip(SHAPES.items(), jax.random.split(key, len(SHAPES)), strict=True):
        bound = 1.0 / np.sqrt(np.prod(shape[:-1]))
        k_w, k_b = jax.random.split(k)
        params[f"{name}_w"] = jax.random.uniform(k_w, shape, jnp.float32, -bound, bound)
        params[f"{name}_b"] = jax.random.uniform(k_b, shape[-1:], jnp.float32, -bound, bound)
    return params


def conv(x: jax.Array, w: jax.Array, b: jax.Array, stride: int) -> jax.Array:
    out = jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.nn.relu(out + b)


def logits(params: Params, x: jax.Array) -> jax.Array:
    """(N, 8, 8, 1) images -> (N, 10) logits, the torch run's architecture."""
    h = conv(x, params["conv1_w"], params["conv1_b"], 1)
    h = conv(h, params["conv2_w"], params["conv2_b"], 2)  # (N, 4, 4, 32)
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(len(x), -1)  # flattened as torch does (NCHW)
    return h @ params["dense_w"] + params["dense_b"]


def loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()


@jax.jit
def accuracy(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits(params, x), axis=1) == y)


def make_step(opt: Any) -> Callable[..., tuple[Params, Any]]:
    @jax.jit
    def step(
        params: Params, opt_state: Any, x: jax.Array, y: jax.Array, idx: jax.Array
    ) -> tuple[Params, Any]:
        grads = jax.grad(loss)(params, x[idx], y[idx])
        updates, opt_state = opt.update(grads, opt_state, params)  # also updates the EMA
        return optax.apply_updates(params, updates), opt_state

    return step


def train(digits: data.Digits, tick: Callable[[], None]) -> Curves:
    """Fit the CNN with optax SGD + ``with_ema``; return the raw and EMA test-accuracy curves."""
    opt = with_ema(optax.sgd(data.LR), data.CONFIG)
    step = make_step(opt)
    params = init(jax.random.key(data.SEED))
    opt_state = opt.init(params)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    x_test, y_test = jnp.asarray(digits.x_test), jnp.asarray(digits.y_test)
    curves: Curves = {"step": [], "raw": [], "ema": []}
    for t, idx in enumerate(digits.batches(), start=1):
        params, opt_state = step(params, opt_state, x, y, jnp.asarray(idx))
        tick()
        if t % data.EVAL_EVERY == 0:
            averaged = ema_average(opt_state, data.CONFIG)
            curves["step"].append(t)
            curves["raw"].append(float(accuracy(params, x_test, y_test)))
            curves["ema"].append(float(accuracy(averaged, x_test, y_test)))
    return curves
