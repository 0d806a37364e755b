"""Tests that kill mutants of the 9a477a7 (in-place write checks: every intersecting pair of
byte ranges, foreign memory, read-only shadows beside written ones), da469ae / 66b42a6 (JAX
eager: Config subclasses, bfloat16 weights, devices of step and weight, the fused zeros read)
and 5493610 (Keras LossScaleOptimizer step counter) fixes, which the hostile probes left alive.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import ema_core as ema
from tests.two_cpu_devices import run_on_two_cpu_devices

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


# ---- in-place writes: only a real overlap with a written array is refused ----


def test_adjacent_torch_views_of_one_storage_are_written_in_place() -> None:
    """Two torch views that touch end to start (``b[:4]``, ``b[4:]``) share no element: the
    README refuses only shadows that share memory, so ``copy=False`` writes both in place
    (torch ranges are compared by bytes only, so touching must not count as meeting)."""
    buf = torch.zeros(8, dtype=torch.float64)
    shadow = [buf[:4], buf[4:]]
    out = ema.ema_update(shadow, [torch.ones(4), torch.full((4,), 3.0)], 1, decay=0.5, copy=False)
    assert out[0] is shadow[0] and out[1] is shadow[1]
    assert buf.tolist() == [0.5] * 4 + [1.5] * 4


def _read_only(a: np.ndarray) -> np.ndarray:
    """``a`` with its write flag cleared."""
    a.flags.writeable = False
    return a


def test_one_read_only_array_at_two_leaves_is_copied_not_refused() -> None:
    """The same read-only array as two shadows beside a writeable one: ``copy=None`` writes
    the writeable one in place and returns a new array for each read-only leaf (neither is
    written, so neither is updated twice: nothing to refuse)."""
    ro = _read_only(np.zeros(4))
    plain = np.zeros(2)
    out = ema.ema_update([ro, ro, plain], [np.ones(4), np.full(4, 3.0), np.ones(2)], 1, decay=0.5)
    assert out[2] is plain and plain.tolist() == [0.5, 0.5]
    assert out[0].tolist() == [0.5] * 4 and out[1].tolist() == [1.5] * 4
    assert ro.tolist() == [0.0] * 4


def test_overlapping_read_only_views_are_copied_not_refused() -> None:
    """Two overlapping read-only views of one buffer as shadows beside a writeable one:
    ``copy=None`` returns new arrays for them (only a shadow written in place may not share
    memory) and writes the writeable one."""
    buf = _read_only(np.arange(6.0))
    plain = np.zeros(2)
    shadow = [buf[:4], buf[2:], plain]
    out = ema.ema_update(shadow, [np.zeros(4), np.zeros(4), np.ones(2)], 1, decay=0.5)
    assert out[2] is plain and plain.tolist() == [0.5, 0.5]
    assert out[0].tolist() == [0.0, 0.5, 1.0, 1.5] and out[1].tolist() == [1.0, 1.5, 2.0, 2.5]
    assert buf.tolist() == list(np.arange(6.0))


def test_tied_torch_params_beside_shadows_in_their_storage_are_read_by_both() -> None:
    """One torch storage holding the params (the same tensor for two leaves: tied weights,
    only read) and, after them, both shadows: no shadow shares an element with any params,
    so ``copy=False`` writes both shadows with the blend of the tied values."""
    buf = torch.zeros(12, dtype=torch.float64)
    buf[:4] = 2.0
    tied = buf[:4]
    out = ema.ema_update(
        {"a": buf[4:8], "b": buf[8:]}, {"a": tied, "b": tied}, 1, decay=0.5, copy=False
    )
    assert out["a"].tolist() == out["b"].tolist() == [1.0] * 4
    assert buf.tolist() == [2.0] * 4 + [1.0] * 8


def test_params_over_foreign_memory_of_a_written_shadow_are_refused() -> None:
    """Another leaf's params that are an ``as_strided`` alias of a shadow written in place
    (foreign memory: its base is no array) would be read after the write: ``ValueError``
    naming both paths, nothing written."""
    x = np.zeros(4)
    other = np.zeros(4)
    params = [np.ones(4), as_strided(x, shape=x.shape, strides=x.strides)]
    with pytest.raises(ValueError, match=r"shadow\[0\] and params\[1\] share memory"):
        ema.ema_update([x, other], params, 1, decay=0.5)
    assert x.tolist() == [0.0] * 4 and other.tolist() == [0.0] * 4


# ---- Keras: a LossScaleOptimizer around an accumulating optimizer ----


def test_keras_loss_scale_around_gradient_accumulation_updates_once_per_step() -> None:
    """A ``LossScaleOptimizer`` whose inner optimizer accumulates gradients over 2 batches:
    the README's "one update per ``on_train_batch_end`` call that stepped the optimizer" means
    4 batches give 2 EMA updates, the inner optimizer's step count (its counter, not the
    batches, divided by its own ``gradient_accumulation_steps``)."""
    helpers = pytest.importorskip("tests._keras_helpers")  # sets KERAS_BACKEND=jax when first
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")
    from ema_core.integrations.keras import EMACallback

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    inner = keras.optimizers.SGD(0.05, gradient_accumulation_steps=2)
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(inner), loss="mse")
    callback = EMACallback(decay=0.8)
    model.fit(helpers.X, helpers.Y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    assert int(np.asarray(inner.iterations)) == 2
    assert callback.step == 2


# ---- JAX: a step or weight beside shadows that JAX may move (uncommitted) ----

UNCOMMITTED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    import ema_core as ema

    d0, d1 = jax.devices()[:2]
    config = ema.Config(schedule=ema.schedules.warmup(0.99), init="zeros")
    on_d1 = {"w": jax.device_put(jnp.ones(3), d1)}
    state = ema.update(ema.init(on_d1, config), on_d1, config)
    hand = state._replace(step=jnp.asarray(1, state.step.dtype))  # uncommitted, on d0
    assert not hand.step.committed and hand.shadow["w"].committed
    out = ema.update(hand, on_d1, config)
    assert out.shadow["w"].devices() == {d1} and int(out.step) == 2, out
    plain = {"w": jnp.ones(3)}  # uncommitted shadows, scalars committed to d1
    state = ema.update(ema.init(plain, config), plain, config)
    moved = state._replace(
        step=jax.device_put(state.step, d1), weight=jax.device_put(state.weight, d1)
    )
    assert not moved.shadow["w"].committed
    assert ema.update(moved, plain, config).shadow["w"].devices() == {d1}
    assert ema.average(moved, config)["w"].tolist() == [1.0] * 3
    print("UNCOMMITTED-OK")
    """
)


def test_an_uncommitted_step_or_shadow_on_another_device_is_not_refused() -> None:
    """Two CPU devices (a subprocess: ``XLA_FLAGS`` must be set before JAX starts). Only a
    step or weight committed to other devices than *committed* shadows is refused (JAX moves
    an uncommitted array to the committed one's device): a hand-made uncommitted step beside
    shadows committed to ``cpu:1``, and scalars committed to ``cpu:1`` beside uncommitted
    shadows, update and read as usual, on ``cpu:1``."""
    run_on_two_cpu_devices(UNCOMMITTED_SCRIPT, "UNCOMMITTED-OK")


def test_a_host_weight_divides_a_float64_shadow_as_the_python_float(x64: None) -> None:
    """Under x64, ``average`` of a zeros state whose ``state.weight`` is a host (numpy) 0-d
    array, as ``jax.device_get`` gives it, divides the float64 shadow by that weight as the
    Python float would: the fused read enters it as a 0-d array of the wide float (float64
    here), not a float32 rounding of it (a relative error of about 1e-8 here)."""
    config = ema.Config(schedule=ema.schedules.warmup(0.99), init="zeros")
    params = {"w": jnp.asarray([1.0, 2.0, 3.0], jnp.float64) / 3}
    state = ema.init(params, config)
    for _ in range(3):
        state = ema.update(state, params, config)
    host = state._replace(weight=np.asarray(state.weight))
    weight = float(host.weight)
    assert float(np.float32(weight)) != weight
    read = ema.average(host, config)["w"]
    assert read.dtype == jnp.float64
    want = np.asarray(state.shadow["w"]) / weight  # one IEEE float64 division per element
    np.testing.assert_array_equal(np.asarray(read), want)
