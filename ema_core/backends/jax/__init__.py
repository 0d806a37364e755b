"""The JAX backend: pytrees, one compiled update, shardings kept, optax and checkpoints.

* ``ema_core.ema_update`` / ``init`` / ``update`` / ``average`` accept any JAX pytree: plain and
  flax linen param dicts, flax nnx ``State``, equinox modules (arrays are averaged, static fields
  kept as they are). Eager calls run as one compiled function, not leaf by leaf.
* ``make_update(config)``: the jitted ``(state, params) -> state`` with the state donated
  (trees of more than 1,024 arrays run in compiled chunks: XLA's compile time and memory grow
  faster than the leaf count).
* ``with_ema(optimizer, config)``: an optax transformation whose state carries the EMA;
  ``ema_average(opt_state, config)`` reads it.
* ``state_dict(state)`` / ``load_state_dict(arrays, like)``: flat numpy arrays for ``np.savez``,
  named by path with each key escaped (``~`` as ``~0``, ``/`` as ``~1``).

Inside: ``_leaves`` is the leaf math (below the API: what ``ema_core.update`` calls per leaf);
``_compiled`` and ``_chunked`` the compiled update and ``_optax`` the optax wrapper sit above the
API (each is ``jax.jit`` of ``ema_core._api.update``); ``_checkpoint`` the ``.npz`` names. How
pytree nodes open for the tree walk is ``ema_core._pytree``, in the core.

Nothing here issues a collective: every leaf is updated where its shards live.
"""

from ema_core.backends.generic import guard  # nothing to guard: JAX arrays are immutable
from ema_core.backends.jax._checkpoint import load_state_dict, state_dict
from ema_core.backends.jax._compiled import make_update
from ema_core.backends.jax._leaves import scalar_device, update_leaves
from ema_core.backends.jax._optax import WithEMAState, ema_average, with_ema

__all__ = [
    "WithEMAState",
    "ema_average",
    "guard",
    "load_state_dict",
    "make_update",
    "scalar_device",
    "state_dict",
    "update_leaves",
    "with_ema",
]
