"""An ema-core EMA of a flax nnx model's params, updated inside the ``nnx.jit`` train step.

flax's own ``nnx.EMA`` has a constant decay, no step counter, warm-up or bias correction. Here
``nnx.state(model, nnx.Param)`` is an ordinary JAX pytree, so ``ema_core.init`` / ``update``
take it as it is, with any schedule (EDM2's power function below), and the update runs inside
the jitted step. To evaluate, a clone of the model receives the averages (``nnx.update``); the
live model keeps training untouched.

Run: ``python examples/flax_nnx_ema.py`` (flax >= 0.11, optax; a few seconds on a CPU). It
prints the test loss of the raw and of the averaged weights of a small MLP fitted to noisy
samples of a sine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import ema_core as ema

STEPS, BATCH, LR, NOISE = 400, 16, 0.05, 0.5
CONFIG = ema.Config(schedule=ema.schedules.power_function(sigma_rel=0.10))


class MLP(nnx.Module):
    """1 -> 32 -> 1, tanh."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(1, 32, rngs=rngs)
        self.out = nnx.Linear(32, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.hidden(x)))


def batches(steps: int = STEPS, seed: int = 0) -> list[tuple[jax.Array, jax.Array]]:
    """Noisy samples of ``sin(2x)``, one batch per step."""
    keys = jax.random.split(jax.random.key(seed), 2 * steps)
    out = []
    for i in range(steps):
        x = jax.random.uniform(keys[2 * i], (BATCH, 1), minval=-2.0, maxval=2.0)
        y = jnp.sin(2 * x) + NOISE * jax.random.normal(keys[2 * i + 1], (BATCH, 1))
        out.append((x, y))
    return out


def test_set() -> tuple[jax.Array, jax.Array]:
    x = jnp.linspace(-2.0, 2.0, 256).reshape(-1, 1)
    return x, jnp.sin(2 * x)


@nnx.jit
def loss_of(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


@nnx.jit
def train_step(
    model: MLP, optimizer: nnx.Optimizer, ema_state: ema.EMAState, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, ema.EMAState]:
    """One SGD step, then the EMA of the params after it (t = ema_state.step + 1)."""
    loss, grads = nnx.value_and_grad(loss_of)(model, x, y)
    optimizer.update(model, grads)
    return loss, ema.update(ema_state, nnx.state(model, nnx.Param), CONFIG)


def averaged(model: MLP, ema_state: ema.EMAState) -> MLP:
    """A copy of ``model`` holding the averages (``model`` itself is not touched)."""
    copy = nnx.clone(model)
    nnx.update(copy, ema.average(ema_state, CONFIG))
    return copy


def setup(seed: int = 0) -> tuple[MLP, nnx.Optimizer, ema.EMAState]:
    model = MLP(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.sgd(LR, momentum=0.9), wrt=nnx.Param)
    return model, optimizer, ema.init(nnx.state(model, nnx.Param), CONFIG)


def main(steps: int = STEPS) -> dict[str, float]:
    model, optimizer, ema_state = setup()
    for x, y in batches(steps):
        loss, ema_state = train_step(model, optimizer, ema_state, x, y)
    x_test, y_test = test_set()
    result = {
        "raw": float(loss_of(model, x_test, y_test)),
        "averaged": float(loss_of(averaged(model, ema_state), x_test, y_test)),
    }
    print(f"after {int(ema_state.step)} steps (last train loss {float(loss):.4f}), test loss:")
    print(f"  raw weights      {result['raw']:.4f}")
    print(f"  averaged weights {result['averaged']:.4f}  ({CONFIG.schedule!r})")
    return result


if __name__ == "__main__":
    main()
