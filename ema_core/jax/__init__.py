"""JAX above the API: the compiled update, optax, checkpoints (user-facing).

* ``ema_core.ema_update`` / ``init`` / ``update`` / ``average`` accept any JAX pytree: plain and
  flax linen param dicts, flax nnx ``State``, equinox modules (arrays are averaged, static fields
  kept as they are). Eager calls run as one compiled function (``ema_core.backends.jax``).
* ``make_update(config)``: the jitted ``(state, params) -> state`` with the state donated
  (trees of more than 1,024 arrays run in compiled chunks: XLA's compile time and memory grow
  faster than the leaf count).
* ``pack(state)`` / ``unpack(packed)``: a ``PackedState`` keeps the shadows of small leaves in
  flat buffers, one per dtype and block of 256 leaves, and the others raveled; ``make_update``
  updates it to the same bits, several times faster on models of thousands of small arrays
  (JAX charges per array handed back), and on the CPU faster for convolution kernels in
  torch's layout (XLA loops over each array's shape).
* ``make_bank_update(configs)`` / ``(sigma_rels=...)``: K EMAs of the same params (an EMA
  bank) in one jitted call; its state is a tuple of K ``EMAState`` s.
* ``with_ema(optimizer, config)``: an optax transformation whose state carries the EMA;
  ``ema_average(opt_state, config)`` reads it.
* ``state_dict(state)`` / ``load_state_dict(arrays, like)``: flat numpy arrays for ``np.savez``,
  named by path with each key escaped (``~`` as ``~0``, ``/`` as ``~1``).

Inside: ``_compiled`` and ``_chunked`` (the compiled update) and ``_optax`` are ``jax.jit`` of
``ema_core._api.update``; ``_bank``, ``_bank_update`` and ``_bank_chunks`` the bank (its
arguments checked by ``ema_core._banks``); ``_call_checks`` the host checks before a compiled
call (a state donated to an earlier call, a step out of range, 64-bit arrays without x64;
``_finite_params``: ``guard_finite``'s look at the params);
``_checkpoint`` the ``.npz`` names; ``_split`` splits a tree into its arrays and static leaves;
``_packed`` the packed state (``pack``, ``unpack``; its ``Layout`` and pytree in
``_packed_layout``), ``_packed_update`` its update (the block kernel) and ``_packed_checks``
what that update checks before it donates; ``_placement`` checks where the arrays live (devices:
``_devices``; shardings: ``_sharding``) once per signature, before anything is donated. The leaf
kernels they reach are in ``ema_core.backends.jax``, below the API. The old path
``ema_core.backends.jax.make_update`` (and the other names here) still works.

Nothing here issues a collective: every leaf is updated where its shards live.
"""

from ema_core._bank_snapshots import SnapshotWriteError
from ema_core.jax._bank import BankUpdate, make_bank_update
from ema_core.jax._checkpoint import load_state_dict, state_dict
from ema_core.jax._compiled import make_update
from ema_core.jax._optax import WithEMAState, ema_average, with_ema
from ema_core.jax._packed import PackedState, pack, unpack

__all__ = [
    "BankUpdate",
    "PackedState",
    "SnapshotWriteError",
    "WithEMAState",
    "ema_average",
    "load_state_dict",
    "make_bank_update",
    "make_update",
    "pack",
    "state_dict",
    "unpack",
    "with_ema",
]
