"""JAX fixes of the hunt of 2026-12-05 (second part): a torch step in a state given to
``make_update`` (stayed a jit constant: every call took the decay of step 1), an int weight
(refused by ``make_update`` though ``update`` takes it), and ``ema_core.jax.state_dict`` of a
torch state (its shadows were left out without a word)."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

import ema_core as ema  # noqa: E402
from ema_core import schedules  # noqa: E402
from ema_core.jax import make_update, state_dict  # noqa: E402

CONFIG = ema.Config(schedules.warmup(0.99), init="zeros")


def _params():
    return {"w": jnp.full((2,), 4.0)}


def test_make_update_counts_a_torch_step_as_its_int():
    params = _params()
    start = ema.init(params, CONFIG)
    moved = ema.init({"w": torch.full((2,), 4.0)}, CONFIG)  # a torch state, shadows moved to JAX
    moved = moved._replace(shadow={"w": jnp.asarray(moved.shadow["w"].numpy())})
    assert isinstance(moved.step, torch.Tensor) and isinstance(moved.weight, torch.Tensor)
    with_torch, with_int = moved, start
    update = make_update(CONFIG, donate=False)
    for k in range(1, 4):
        with_torch, with_int = update(with_torch, params), update(with_int, params)
        assert int(with_torch.step) == k
        assert float(with_torch.weight) == float(with_int.weight)
        np.testing.assert_array_equal(with_torch.shadow["w"], with_int.shadow["w"])


def test_make_update_takes_an_int_weight_as_update_does():
    params = _params()
    state = ema.init(params, CONFIG)._replace(weight=1)
    eager = ema.update(state, params, CONFIG)
    compiled = make_update(CONFIG, donate=False)(state, params)
    assert float(compiled.weight) == float(eager.weight)
    np.testing.assert_array_equal(compiled.shadow["w"], eager.shadow["w"])
    with pytest.raises(TypeError, match=r"state\.weight must be a number or a 0-d float array"):
        make_update(CONFIG, donate=False)(state._replace(weight="1"), params)


def test_state_dict_refuses_a_torch_state_rather_than_drop_its_shadows():
    state = ema.init({"w": torch.ones(2), "b": torch.zeros(3)})
    with pytest.raises(TypeError, match=r"torch\.Tensor arrays \(shadow/b, shadow/w\).*checkp"):
        state_dict(state)
