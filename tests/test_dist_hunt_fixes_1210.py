"""Fixes of the distributed hunt of 2026-12-05 (JAX on two CPU devices, in a subprocess)."""

from __future__ import annotations

import textwrap

import pytest

pytest.importorskip("jax")

from tests.two_cpu_devices import run_on_two_cpu_devices

# the user's own jitted step donates the params; then the old params are given to a warm update
DONATED = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    import ema_core as ema
    from ema_core.jax import make_bank_update, make_update

    mesh = jax.make_mesh((2,), ("a",))
    put = lambda x, s: jax.device_put(x, NamedSharding(mesh, s))
    step = jax.jit(lambda q: jax.tree_util.tree_map(lambda x: x + 1, q), donate_argnums=0)
    plain, guarded = ema.Config(0.5), ema.Config(0.5, guard_finite=True)
    bank = make_bank_update(sigma_rels=(0.05, 0.1))
    cases = {
        "donate": (make_update(plain), lambda p: ema.init(p, plain)),
        "keep": (make_update(plain, donate=False), lambda p: ema.init(p, plain)),
        "guard": (make_update(guarded), lambda p: ema.init(p, guarded)),
        "bank": (bank, bank.init),
    }
    for name, (update, init) in cases.items():
        params = {"w": put(jnp.ones((8, 4)), P("a")), "b": put(jnp.zeros(4), P("a"))}
        state = update(init(params), params)  # warm: the compiled call's fast path
        kept = jax.tree_util.tree_map(lambda x: x.copy(), state)
        step(params)  # donates params
        try:
            update(state, params)
        except ValueError as error:
            assert "was deleted" in str(error) and "params['" in str(error), (name, error)
        else:
            raise AssertionError(name + ": the donated params were used")
        for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(kept)):
            assert not a.is_deleted() and bool((a == b).all()), name  # nothing donated
        print("REFUSED", name, flush=True)
    print("DONATED-PARAMS-OK")
    """
)


def test_warm_sharded_updates_name_params_the_users_step_donated() -> None:
    """A warm compiled update (``make_update``, ``donate=False``, ``guard_finite``, a bank) over
    params sharded on two devices, given params the user's own jitted step donated: a
    ``ValueError`` naming the leaf, the state kept (before 2026-12-05 the process died of a
    SIGSEGV in XLA: the deleted arrays were only looked for after the call failed)."""
    run_on_two_cpu_devices(DONATED, "DONATED-PARAMS-OK")
