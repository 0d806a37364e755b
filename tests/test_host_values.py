"""The host reads what it can: decays and steps in numpy, array-api-strict, CPU torch tensors
and concrete JAX arrays are range-checked (traced and device values are trusted); numpy decays
work with every namespace; devices without float64; steps beyond int64 and array steps that
saturate. Every refusal leaves the shadow bit-identical."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core._ops import is_readable
from tests.conftest import Backend, Name, _load, to_numpy
from tests.refusals import bits, pair, refused

torch = pytest.importorskip("torch")
jnp = pytest.importorskip("jax.numpy")
aas = pytest.importorskip("array_api_strict")


# 2.2: host decays and steps of every framework are range-checked; device / traced ones not
HOST_ARRAYS = {
    Name.TORCH: torch.tensor,  # on the CPU
    Name.JAX: jnp.asarray,  # concrete, on the CPU
    Name.NUMPY: np.asarray,
    Name.STRICT: aas.asarray,
}


@pytest.mark.parametrize("value", [1.5, -0.25, float("nan")])
@pytest.mark.parametrize("name", list(HOST_ARRAYS), ids=lambda n: n.value)
def test_host_decay_arrays_are_range_checked(name: Name, value: float) -> None:
    shadow, params = pair(_load(name))
    decay = HOST_ARRAYS[name](value)
    refused(ValueError, r"decay must be in \[0.0, 1.0\]", shadow,
             lambda: ema.ema_update(shadow, params, 1, decay=decay))  # fmt: skip


@pytest.mark.parametrize("name", list(HOST_ARRAYS), ids=lambda n: n.value)
def test_host_step_arrays_are_range_checked(name: Name) -> None:
    shadow, params = pair(_load(name))
    step = HOST_ARRAYS[name](-3)
    refused(ValueError, "step must be >= 0, got -3", shadow,
             lambda: ema.ema_update(shadow, params, step, decay=0.5))  # fmt: skip
    state = ema.init(params)._replace(step=step)
    with pytest.raises(ValueError, match=r"state\.step must be >= 0, got -3"):
        ema.update(state, params)


def test_readable_means_on_the_host_and_not_traced() -> None:
    import jax

    assert is_readable(np.float32(1)) and is_readable(aas.asarray(1.0))
    assert is_readable(torch.tensor(1.0)) and is_readable(jnp.asarray(1.0))
    assert not is_readable(torch.tensor(1.0, device="meta")) and not is_readable(1.0)
    seen = []
    jax.jit(lambda d: seen.append(is_readable(d)) or d)(jnp.asarray(1.5))
    assert seen == [False]


def test_traced_decay_and_step_are_trusted() -> None:
    import jax

    shadow, params = pair(_load(Name.JAX))
    run = jax.jit(lambda s, p, t, d: ema.ema_update(s, p, t, decay=d))
    out = run(shadow, params, jnp.asarray(2), jnp.asarray(0.75))
    assert np.allclose(np.asarray(out["a"]), 0.25)


# 2.10: numpy decays are host floats; a 0-d decay of another namespace is a TypeError
@pytest.mark.parametrize("decay", [np.float64(0.25), np.float32(0.25), np.asarray(0.25)])
def test_numpy_decay_works_with_every_namespace(backend: Backend, decay: Any) -> None:
    shadow, params = pair(backend)
    want, _ = pair(backend)
    want = ema.ema_update(want, params, 1, decay=0.25, copy=True)
    got = ema.ema_update(shadow, params, 1, decay=decay, copy=True)
    assert bits(got) == bits(want)


@pytest.mark.parametrize(
    ("leaves", "decay"),
    [
        (Name.NUMPY, torch.tensor(0.5)),
        (Name.NUMPY, aas.asarray(0.5)),
        (Name.TORCH, jnp.asarray(0.5)),
        (Name.STRICT, torch.tensor(0.5)),
    ],
    ids=["torch-in-numpy", "strict-in-numpy", "jax-in-torch", "torch-in-strict"],
)
def test_decay_of_another_namespace_is_a_type_error(leaves: Name, decay: Any) -> None:
    shadow, params = pair(_load(leaves))
    refused(TypeError, "decay is a 0-d .* but the leaves are", shadow,
             lambda: ema.ema_update(shadow, params, 1, decay=decay))  # fmt: skip


# 2.12: a device without float64 keeps the weight and the decays in float32
def test_device_without_float64() -> None:
    dev = aas.Device("no_float64")
    params = {"w": aas.asarray([1.0, 3.0], dtype=aas.float32, device=dev)}
    cfg = ema.Config(schedule=ema.schedules.constant(0.5), init="zeros")
    state = ema.init(params, cfg)
    assert state.weight.dtype == aas.float32 and state.weight.device == dev
    for _ in range(3):
        state = ema.update(state, params, cfg)
    assert float(state.weight) == 0.875 and int(state.step) == 3
    assert np.asarray(ema.average(state, cfg)["w"]._array).tolist() == [1.0, 3.0]
    zeros = {"w": aas.zeros(2, dtype=aas.float32, device=dev)}
    step = aas.asarray(4, device=dev)  # an array step: its decay is computed on the device
    out = ema.ema_update(params, zeros, step, schedule=ema.schedules.power_function(7.0),
                         copy=True)  # fmt: skip
    decay = (1.0 - 1.0 / 4) ** 8
    np.testing.assert_allclose(np.asarray(out["w"]._array), [decay, 3 * decay], rtol=1e-6)


def test_float64_shadows_on_a_device_without_float64_are_refused_by_name() -> None:
    params = {"w": aas.asarray([1.0, 3.0], dtype=aas.float32, device=aas.Device("no_float64"))}
    with pytest.raises(ValueError, match=r"Config.dtype is 'float64' but the params' device .*"
                       r"no_float64.* has no float64; pass dtype=None"):  # fmt: skip
        ema.init(params, ema.Config(0.9, dtype="float64"))


@pytest.mark.parametrize(
    "config",
    [
        ema.Config(schedule=ema.schedules.warmup(0.99)),
        ema.Config(schedule=ema.schedules.constant(0.5), init="zeros", interval=2),
        ema.presets.ema_pytorch(beta=0.99, update_after_step=2, update_every=2),
        ema.presets.diffusers(decay=0.99, update_after_step=1, use_ema_warmup=True),
    ],
    ids=["warmup", "zeros-interval", "ema_pytorch", "diffusers"],
)
def test_device_without_int64_counts_in_int32(config: ema.Config) -> None:
    """array-api-strict's ``Device("no_x64")`` has no int64 (nor float64): the step is its
    default int32, and every update, gate and read gives what the CPU device gives."""
    steps = [aas.asarray([1.0, -2.0], dtype=aas.float32) * k for k in range(1, 7)]
    want = ema.init(steps[0], config)
    moved = [aas.asarray(x, device=aas.Device("no_x64")) for x in steps]
    got = ema.init(moved[0], config)
    assert got.step.dtype == aas.int32 and got.step.device == aas.Device("no_x64")
    for here, there in zip(steps, moved, strict=True):
        want, got = ema.update(want, here, config), ema.update(got, there, config)
    assert int(got.step) == int(want.step) == 6
    mine, theirs = ema.average(got, config), ema.average(want, config)
    np.testing.assert_allclose(np.asarray(mine._array), np.asarray(theirs._array), rtol=1e-6)


# 2.13: steps beyond int64, non-numeric leaves, aliased shadows, copies, int32 saturation
def test_huge_python_step_is_a_value_error() -> None:
    shadow, params = pair(_load(Name.NUMPY))
    ema.ema_update(shadow, params, 2**63 - 1, decay=0.5, copy=True)
    for step in (2**63, 10**400):
        refused(ValueError, r"step must be <= 2\*\*63 - 1", shadow,
                 lambda step=step: ema.ema_update(shadow, params, step, decay=0.5))  # fmt: skip


@pytest.mark.parametrize("dtype", ["int32", "uint8"])
def test_array_step_saturates_at_its_dtype_max(backend: Backend, dtype: str) -> None:
    top = int(np.iinfo(dtype).max)
    params = {"w": backend.asarray(np.ones(2))}
    cfg = ema.Config(schedule=ema.schedules.power_function(7.0), init="zeros")
    state = ema.init(params, cfg)
    step = backend.asarray(np.asarray(top, dtype))
    state = ema.update(state._replace(step=step), params, cfg)
    assert int(state.step) == top and state.step.dtype == step.dtype
    rate = 1.0 - (1.0 - 1.0 / top) ** 8  # d_t = (1 - 1/t) ** (gamma + 1) at t = top
    np.testing.assert_allclose(to_numpy(state.shadow["w"]), rate, rtol=1e-3)
    if backend.name is Name.JAX:  # traced: the same saturation, without reading the step
        import jax

        again = jax.jit(ema.update, static_argnums=2)(state, params, cfg)
        assert int(again.step) == top and np.all(np.isfinite(np.asarray(again.shadow["w"])))


@pytest.mark.parametrize("cached", [False, True])
def test_a_meta_decay_over_real_tensors_is_a_value_error_before_any_write(cached: bool) -> None:
    """A meta 0-d decay holds no value: over CPU leaves (an int leaf copied first, a float
    leaf blended after) it is a ValueError naming decay, and no leaf changes; over meta
    leaves it is what they are made of."""
    shadow = {"n": torch.zeros(3, dtype=torch.int64), "w": torch.zeros(3)}
    params = {"n": torch.full((3,), 7), "w": torch.ones(3)}
    if cached:  # a kept plan (the stateless cache) takes the same check
        for t in (1, 2, 3):
            ema.ema_update(shadow, params, t, decay=0.5)
        shadow["n"].zero_()
    before = {k: v.clone() for k, v in shadow.items()}
    meta = torch.tensor(0.5, device="meta")
    with pytest.raises(ValueError, match=r"decay is a meta tensor .* leaves are on cpu"):
        ema.ema_update(shadow, params, 4, decay=meta)
    assert all(torch.equal(shadow[k], before[k]) for k in shadow)
    on_meta = {"w": torch.zeros(3, device="meta")}
    out = ema.ema_update(on_meta, {"w": torch.ones(3, device="meta")}, 1, decay=meta)
    assert out["w"].is_meta and out["w"].shape == (3,)
