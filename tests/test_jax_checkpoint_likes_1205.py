"""``ema_core.jax.load_state_dict`` with the restore targets README names that a JAX-surfaces
hunt of 2026-12-05 found refused with a raw ``AttributeError``: a packed ``like`` fetched with
``jax.device_get`` or made of ``ShapeDtypeStruct``s without a sharding, and a ``like`` whose
step and weight are Python numbers (which ``make_update`` takes)."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import ema_core as ema  # noqa: E402
from ema_core.jax import load_state_dict, make_update, pack, state_dict, unpack  # noqa: E402

CONFIG = ema.Config(0.5)
PARAMS = {"a": jnp.arange(3.0), "b": jnp.full((2, 2), 2.0)}


def _trained() -> object:
    state = pack(ema.init(PARAMS, CONFIG))
    return make_update(CONFIG, donate=False)(state, {k: v + 1 for k, v in PARAMS.items()})


@pytest.mark.parametrize("form", ["device_get", "structs"])
def test_a_packed_like_without_a_device_restores_on_the_default_one(form: str) -> None:
    state = _trained()
    if form == "device_get":
        like = jax.device_get(state)
    else:
        like = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    loaded = load_state_dict(state_dict(state), like)
    assert type(loaded) is type(state)
    got_leaves = jax.tree_util.tree_leaves(unpack(loaded))
    for got, want in zip(got_leaves, jax.tree_util.tree_leaves(unpack(state)), strict=True):
        assert np.array_equal(np.asarray(got), np.asarray(want))
        assert isinstance(got, jax.Array)


def test_a_like_with_python_step_and_weight_restores_them_as_python_numbers() -> None:
    state = ema.EMAState(3, {"w": jnp.arange(3.0)}, 0.25)
    loaded = load_state_dict(state_dict(state), ema.EMAState(0, {"w": jnp.zeros(3)}, 1.0))
    assert loaded.step == 3 and type(loaded.step) is int
    assert loaded.weight == 0.25 and type(loaded.weight) is float
    assert np.array_equal(np.asarray(loaded.shadow["w"]), [0.0, 1.0, 2.0])


def test_a_python_step_like_refuses_a_float_step_by_name() -> None:
    arrays = dict(state_dict(ema.EMAState(3, {"w": jnp.zeros(3)}, 0.25)))
    arrays["step"] = np.float32(3.0)
    with pytest.raises(TypeError, match=r"arrays\['step'\] .* like holds a Python int"):
        load_state_dict(arrays, ema.EMAState(0, {"w": jnp.zeros(3)}, 1.0))


def test_a_numpy_float64_like_weight_is_an_array_target() -> None:
    """``np.float64`` subclasses ``float``: it is an array-like target, not a Python number
    (since 2026-12-05 the weight takes its dtype, as ``checkpoint.load`` takes it; an integer
    weight is still refused)."""
    arrays = dict(state_dict(ema.EMAState(3, {"w": jnp.zeros(3)}, 0.25)))
    arrays["weight"] = np.float32(0.25)
    like = ema.EMAState(0, {"w": jnp.zeros(3)}, np.float64(1.0))
    got = load_state_dict(arrays, like).weight
    assert not isinstance(got, float) and got.shape == () and float(got) == 0.25
    arrays["weight"] = np.int32(1)
    with pytest.raises(TypeError, match=r"arrays\['weight'\] has dtype int32, like has float64"):
        load_state_dict(arrays, like)


def test_a_packed_like_with_a_host_step_restores_where_its_flats_are() -> None:
    from tests.two_cpu_devices import run_on_two_cpu_devices

    script = """
import numpy as np, jax, jax.numpy as jnp, ema_core as ema
from ema_core.jax import load_state_dict, pack, state_dict
other = jax.devices()[1]
params = {"a": jax.device_put(jnp.arange(3.0), other)}
state = pack(ema.init(params, ema.Config(0.5)))
like = state._replace(step=np.asarray(state.step), weight=np.asarray(state.weight))
loaded = load_state_dict(state_dict(state), like)
places = {d for leaf in jax.tree_util.tree_leaves(loaded) for d in leaf.devices()}
print("ON", places == {other})
"""
    run_on_two_cpu_devices(script, "ON True")
