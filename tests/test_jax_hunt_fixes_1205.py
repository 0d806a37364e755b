"""JAX promises a hostile-user hunt of 2026-12-05 found broken, each pinned: ``make_update``
and the bank inside a user's jit / vmap / scan past 1,024 leaves (the chunked path) and with a
fresh state beside traced params, an unhashable non-array leaf named, and ``with_ema`` last in
a chain after ``apply_if_finite`` (documented: it moves at every call)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ema_core as ema

jax = pytest.importorskip("jax")
jnp = jax.numpy
from ema_core.jax import make_bank_update, make_update  # noqa: E402

CONFIG = ema.Config(schedule=0.9)


@pytest.mark.parametrize("count", [1024, 1025])  # 1,025: the chunked path
def test_make_update_inside_a_users_jit_past_the_chunk_limit(count: int) -> None:
    """Past 1,024 leaves the liveness check asked a tracer ``is_deleted()``:
    ``ConcretizationTypeError``."""
    update = make_update(CONFIG)

    @jax.jit
    def train_step(params: dict, state: ema.EMAState) -> tuple[dict, ema.EMAState]:
        params = {k: v + 1.0 for k, v in params.items()}
        return params, update(state, params)

    params = {f"p{i}": jnp.zeros(2) for i in range(count)}
    _, state = train_step(params, ema.init(params, CONFIG))
    assert int(state.step) == 1
    np.testing.assert_allclose(np.asarray(state.shadow["p7"]), 0.1, rtol=1e-6)
    scanned = jax.lax.scan(
        lambda s, _: (update(s, params), None), ema.init(params, CONFIG), None, 3
    )
    assert int(scanned[0].step) == 3


def test_a_bank_inside_a_users_jit_past_the_chunk_limit() -> None:
    bank = make_bank_update(sigma_rels=(0.05, 0.10))
    params = {f"p{i}": jnp.ones(2) for i in range(1025)}
    states = jax.jit(bank.__call__)(bank.init(params), params)
    assert [int(s.step) for s in states] == [1, 1]


def test_a_fresh_state_beside_traced_params() -> None:
    """The placement of the params was read with ``getattr(x, "committed")``, which a tracer
    answers with ``ConcretizationTypeError`` (a state returned by an update did not go there)."""
    update = make_update(CONFIG, donate=False)
    params = {"w": jnp.ones(3)}
    fresh = ema.init(params, CONFIG)
    batched = {"w": jnp.stack([jnp.ones(3), 2 * jnp.ones(3)])}
    got = jax.vmap(update, in_axes=(None, 0))(fresh, batched).shadow["w"]
    want = jax.vmap(lambda s, p: ema.update(s, p, CONFIG), in_axes=(None, 0))(fresh, batched)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want.shadow["w"]))
    assert int(jax.jit(lambda p: update(fresh, p))(params).step) == 1
    bank = make_bank_update(sigma_rels=(0.05,))
    states = bank.init(params)
    assert int(jax.jit(lambda p: bank(states, p))(params)[0].step) == 1


def test_an_unhashable_non_array_leaf_is_named() -> None:
    """A bare ``TypeError: unhashable type`` named neither the leaf nor the remedy."""

    @dataclasses.dataclass
    class Options:
        scale: float = 1.0

    params = {"w": jnp.ones(2), "opts": Options()}
    state = ema.init({"w": jnp.ones(2)}, CONFIG)._replace(shadow=params)
    with pytest.raises(TypeError, match=r"the leaf at .*\['opts'\] is a Options, neither an arr"):
        make_update(CONFIG)(state, params)


def test_with_ema_last_in_a_chain_after_apply_if_finite_moves_at_every_call() -> None:
    """README "Choices": only the wrappers inside ``with_ema`` are seen; wrapped around the
    whole chain it skips the non-finite steps."""
    optax = pytest.importorskip("optax")
    from ema_core.jax import with_ema

    config = ema.Config(schedule=0.5)
    inner = [optax.apply_if_finite(optax.scale_by_adam(), 5), optax.scale(-0.1)]
    whole = with_ema(optax.chain(*inner), config)
    last = optax.chain(inner[0], with_ema(inner[1], config))
    steps = []
    for optimizer in (whole, last):
        params = {"w": jnp.zeros(2)}
        opt_state = optimizer.init(params)
        for g in (1.0, float("nan"), float("nan"), 1.0):
            updates, opt_state = optimizer.update({"w": jnp.full(2, g)}, opt_state, params)
            params = optax.apply_updates(params, updates)
        leaves = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, ema.EMAState))
        steps.append(int(next(x for x in leaves if isinstance(x, ema.EMAState)).step))
    assert steps == [2, 4]
