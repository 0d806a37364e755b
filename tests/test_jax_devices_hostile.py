"""``make_update`` and ``make_bank_update`` given params on another device than the state
(review leftover): refused with a ``ValueError`` naming the leaf (``params['w']``), its device
and the state's, before anything is donated, on the one-call path and on the chunked one
(whose head would otherwise donate the step and weight before a chunk fails). JAX's own error
named ``params_arrays[1] of _Update._arrays``. Uncommitted params still follow the state.
Two CPU devices need ``XLA_FLAGS`` before JAX starts: the checks run in a subprocess."""

from __future__ import annotations

import textwrap

import pytest

from tests.two_cpu_devices import run_on_two_cpu_devices

pytest.importorskip("jax")

SCRIPT = textwrap.dedent(
    """
    import re
    import jax, jax.numpy as jnp, numpy as np
    import ema_core as ema
    from ema_core.jax import _chunked, make_bank_update, make_update

    d0, d1 = jax.devices()[:2]
    config = ema.Config(schedule=0.5)
    WORDS = (r"params\\['w'\\] is on cpu:1, but {} is on cpu:0: the update runs where the "
             r"state lives; .*nothing was donated")

    def on(device, value):
        return {"b": jax.device_put(jnp.zeros(2), device), "w": jax.device_put(value, device)}

    def refused(call, words):
        try:
            call()
        except ValueError as err:
            assert re.search(words, str(err)), str(err)
            return
        raise AssertionError("not refused")

    for chunk in (_chunked.CHUNK, 1):  # one compiled call; chunks after a head
        _chunked.CHUNK = chunk
        update = make_update(config)
        state = jax.device_put(ema.init(on(d0, jnp.zeros(3)), config), d0)
        refused(lambda: update(state, {"b": on(d0, 0)["b"], "w": on(d1, jnp.ones(3))["w"]}),
                WORDS.format("state"))
        assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state)), chunk
        state = update(state, on(d0, jnp.ones(3)))  # the same state goes on
        state = update(state, {"b": jnp.zeros(2), "w": jnp.ones(3)})  # uncommitted: moved
        assert state.shadow["w"].tolist() == [0.75] * 3 and int(state.step) == 2, chunk

        bank = make_bank_update(sigma_rels=(0.05, 0.10))
        states = jax.device_put(bank.init(on(d0, jnp.zeros(3))), d0)
        refused(lambda: bank(states, {"b": on(d0, 0)["b"], "w": on(d1, jnp.ones(3))["w"]}),
                WORDS.format("states"))
        assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(states)), chunk
        states = bank(states, on(d0, jnp.ones(3)))
        assert [int(s.step) for s in states] == [1, 1]
    print("DEVICES-OK")
    """
)


def test_params_on_another_device_are_refused_by_name_before_any_donation() -> None:
    run_on_two_cpu_devices(SCRIPT, "DEVICES-OK")
