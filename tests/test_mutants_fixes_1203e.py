"""Tests that kill mutants of the e543432 (load_peer without the non-persistent buffers),
04fee90 (writes clear ``parametrize.cached()``'s weights), 23efc8a (Keras: an evaluate/predict
inside fit), fbbef44 (JAX: an array at two places of the state is copied before donating) and
5f86d43 (gated's negative ``copy_through`` on an array count) fixes, which the hostile probes
left alive.
"""

from __future__ import annotations

import sys

import pytest

# ---- compat drop-ins: their writes clear parametrize.cached()'s weights ----


def test_allennlp_assign_inside_parametrize_cached_evaluates_the_averaged_weight() -> None:
    """04fee90: the drop-ins' in-place writes (``assign_all``) forget ``parametrize.cached()``'s
    weights as ``swap()`` does: inside ``cached()``, a weight_norm weight read before
    ``assign_average_value()`` must not stand for the averages after it, nor the averaged one
    for the live weight after ``restore()``."""
    torch = pytest.importorskip("torch")
    from torch import nn
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import weight_norm

    from ema_core.compat.allennlp import ExponentialMovingAverage

    torch.manual_seed(0)
    model = weight_norm(nn.Linear(3, 4))
    averager = ExponentialMovingAverage(list(model.named_parameters()), decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the live originals now differ from the averages
    averager.apply()
    with torch.no_grad():
        averager.assign_average_value()
        averaged = model.weight.clone()
        averager.restore()
        with parametrize.cached():
            live = model.weight.clone()
            averager.assign_average_value()
            inside = model.weight.clone()
            averager.restore()
            after = model.weight.clone()
    assert not torch.equal(averaged, live)
    assert torch.equal(inside, averaged)
    assert torch.equal(after, live)


# ---- JAX bank: one committed state given twice is copied before donating ----


def test_a_bank_given_one_of_its_own_committed_states_twice_updates_both() -> None:
    """fbbef44: a state the bank returned (every array committed: the steady state, which is
    otherwise passed on untouched) given for two EMAs, ``(states[0], states[0])``, is updated
    as two separate copies would be: the repeats are copied before donating, not JAX's
    "donate the same buffer twice"."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    import ema_core as ema
    from ema_core.jax import make_bank_update

    configs = (ema.Config(schedule=0.9), ema.Config(schedule=0.5))
    params = {"w": jnp.arange(3.0), "b": jnp.ones(2)}
    bank = make_bank_update(configs)
    states = bank(bank.init(params), params)
    moved = {"w": jnp.full(3, 4.0), "b": jnp.zeros(2)}
    twice = (states[0], jax.tree_util.tree_map(jnp.copy, states[0]))
    want = make_bank_update(configs, donate=False)(twice, moved)
    got = bank((states[0], states[0]), moved)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        assert a.dtype == b.dtype
        assert bytes(jax.device_get(a).tobytes()) == bytes(jax.device_get(b).tobytes())


# ---- JAX make_update: the copy of a shadow that is the params is committed ----


def test_an_ema_reset_to_uncommitted_params_compiles_once() -> None:
    """fbbef44: a shadow that is the params' own arrays (``state._replace(shadow=params)``,
    params fresh from ``jnp`` and so uncommitted) is copied before donating into a committed
    array, as the update's outputs are: the calls after the first one find the signature they
    compiled for and compile nothing more (an uncommitted copy compiled a second time)."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    import ema_core as ema
    from ema_core.jax import make_update
    from tests.xla_compiles import counting_compiles

    config = ema.Config(schedule=0.5)
    update = make_update(config)
    params = {"w": jnp.arange(3.0)}
    targets = [{"w": jnp.arange(3.0) + i} for i in range(3)]
    jax.block_until_ready(targets)
    state = update(ema.init(params, config)._replace(shadow=params), params)
    jax.block_until_ready(state)
    with counting_compiles() as seen:
        for target in targets:
            state = update(state, target)
        jax.block_until_ready(state)
    assert not params["w"].is_deleted()  # copied, not donated
    assert len(seen) == 0


# ---- Keras: a predict of the EMA from a callback inside fit ----


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
def test_a_predict_of_the_ema_from_a_callback_inside_fit_leaves_validation_on_averages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """23efc8a: a ``predict(callbacks=[ema])`` from a user's ``on_epoch_end`` inside ``fit``
    (a call of its own, which pauses the fit's flag) gives the flag back at its end: the next
    epoch's validation is "validate" again, on the averages under ``swap=("validate",)``, as
    for an ``evaluate`` from the same place."""
    pytest.importorskip("jax")
    if "keras" not in sys.modules:
        monkeypatch.setenv("KERAS_BACKEND", "jax")  # as the Keras test modules, before the import
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")
    from ema_core.integrations.keras import EMACallback
    from tests._keras_helpers import X, Y, assert_bits, make_model

    model, callback = make_model(), EMACallback(decay=0.8, swap=("validate",))
    at_validation: list[list] = []
    averages: list[list] = []

    class Watch(keras.callbacks.Callback):  # type: ignore[misc]
        def on_test_begin(self, logs: object = None) -> None:
            at_validation.append(self.model.get_weights())

        def on_epoch_end(self, epoch: int, logs: object = None) -> None:
            averages.append(callback.average_weights())
            self.model.predict(X, verbose=0, callbacks=[callback])

    model.fit(
        X,
        Y,
        epochs=2,
        validation_data=(X, Y),
        callbacks=[callback, Watch()],
        batch_size=16,
        verbose=0,
        shuffle=False,
    )
    assert len(at_validation) == len(averages) == 2
    for epoch in range(2):
        assert_bits(at_validation[epoch], averages[epoch])
