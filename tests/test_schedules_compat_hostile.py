"""Hostile but realistic use of the schedules and the drop-in classes: narrow or near-full
integer step arrays, out-of-range gate constants, edge parameters, and the seed systems'
apply/restore methods called twice or out of order."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ema_core import schedules
from ema_core.compat import allennlp, paddle, tensorflow

torch = pytest.importorskip("torch")

INT32_MAX = 2**31 - 1


# ---- schedules ----


@pytest.mark.parametrize("t", [INT32_MAX - 1, INT32_MAX])
def test_gated_offset_on_a_full_int32_step_matches_the_int_step(t):
    # t + offset wrapped to a negative count, read as u = 1: the floor instead of inner(u)
    s = schedules.gated(schedules.warmup(0.999), offset=5, divisor=2, floor=0.5)
    want = s(t)
    assert want == 0.999
    assert float(s(torch.tensor(t, dtype=torch.int32))) == want
    assert float(s(np.array(t, dtype=np.int32))) == want


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8, torch.int32])
def test_gated_constants_wider_than_the_step_dtype(dtype):
    # start, phase and copy_through past the dtype's range were compared after wrapping
    cases = [
        schedules.gated(0.9, start=2**31 - 2),
        schedules.gated(0.9, every=2, phase=2**40 + 1),
        schedules.gated(0.9, copy_through=2**40),
    ]
    for s in cases:
        for t in [0, 1, 2, 3, 6, 100]:
            assert float(s(torch.tensor(t, dtype=dtype))) == s(t), (s, t)


@pytest.mark.parametrize(
    ("factory", "name"),
    [
        (lambda n: schedules.every(0.9, n), "n"),
        (lambda n: schedules.gated(0.9, every=n), "every"),
        (lambda n: schedules.gated(0.9, divisor=n), "divisor"),
        (lambda n: schedules.gated(0.9, start=n), "start"),
        (lambda n: schedules.gated(0.9, phase=n), "phase"),
        (lambda n: schedules.gated(0.9, copy_through=n), "copy_through"),
        (lambda n: schedules.gated(0.9, offset=n), "offset"),
        (lambda n: schedules.gated(0.9, offset=-n), "offset"),
    ],
)
def test_gate_integers_past_int64_are_refused_by_name(factory, name):
    # accepted, then an OverflowError from torch/JAX at the first array step
    with pytest.raises(ValueError, match=rf"{name} must be .*2\*\*63 - 1.*got -?{2**63}"):
        factory(2**63)
    factory(2**63 - 1)  # the largest count is fine


def test_every_compensate_message_names_the_value():
    with pytest.raises(TypeError, match=r"compensate must be a bool \(True or False\), got .*True"):
        schedules.every(0.9, 2, compensate=np.bool_(True))


@pytest.mark.parametrize("bad", ["x", None, [1.0]])
def test_gamma_to_sigma_rel_wrong_type_is_a_type_error(bad):
    with pytest.raises(TypeError, match="gamma must be a real number"):
        schedules.gamma_to_sigma_rel(bad)


@pytest.mark.parametrize("bad", [math.inf, math.nan, -1.0, -2])
def test_gamma_to_sigma_rel_infinite_gamma_is_refused(bad):
    # inf gave nan
    with pytest.raises(ValueError, match=r"gamma must be a finite number > -1"):
        schedules.gamma_to_sigma_rel(bad)


# ---- AllenNLP ----


def test_allennlp_restore_without_assign_refuses_and_changes_nothing():
    # restore() wrote the construction-time copies into the trained parameters
    w = np.zeros(2)
    ema = allennlp.ExponentialMovingAverage([("w", w)], decay=0.5)
    w += 4.0
    ema.apply()
    with pytest.raises(RuntimeError, match=r"restore\(\) needs an earlier assign_average_value"):
        ema.restore()
    assert np.array_equal(w, [4.0, 4.0])


def test_allennlp_assign_twice_then_restore_gives_the_trained_values():
    # the second assign backed up the averages: restore() lost the trained values
    w = np.zeros(2)
    ema = allennlp.ExponentialMovingAverage([("w", w)], decay=0.5)
    w += 4.0
    ema.apply()
    ema.assign_average_value()
    ema.assign_average_value()
    assert np.array_equal(w, [2.0, 2.0])
    ema.restore()
    assert np.array_equal(w, [4.0, 4.0])
    w += 1.0  # trains on
    with pytest.raises(RuntimeError, match="restore"):
        ema.restore()  # a second restore would undo the training
    assert np.array_equal(w, [5.0, 5.0])


# ---- Paddle ----


def _paddle_at(value: float) -> tuple[np.ndarray, paddle.ExponentialMovingAverage]:
    w = np.full(2, 4.0, dtype=np.float32)
    ema = paddle.ExponentialMovingAverage([("w", w)], decay=0.5)
    ema.update()  # average 4
    w[...] = value
    return w, ema


def test_paddle_nested_apply_restores_the_trained_values():
    w, ema = _paddle_at(8.0)
    with ema.apply():
        with ema.apply() as inner:
            assert np.array_equal(inner["w"], [4.0, 4.0])
        assert np.array_equal(w, [4.0, 4.0])  # the outer block still sees the averages
    assert np.array_equal(w, [8.0, 8.0])  # the outer apply restores the trained values


def test_paddle_apply_twice_without_restore_keeps_the_first_backup():
    w, ema = _paddle_at(8.0)
    with ema.apply(need_restore=False):
        pass
    with ema.apply(need_restore=False):
        pass
    ema.restore()
    assert np.array_equal(w, [8.0, 8.0])


def test_paddle_second_restore_refuses_and_keeps_training():
    w, ema = _paddle_at(8.0)
    with ema.apply(need_restore=False):
        pass
    ema.restore()
    w[...] = 9.0
    with pytest.raises(RuntimeError, match=r"restore\(\) needs an earlier apply"):
        ema.restore()
    assert np.array_equal(w, [9.0, 9.0])


def test_paddle_restore_inside_the_block_then_exit():
    w, ema = _paddle_at(8.0)
    with ema.apply():
        ema.restore()
        assert np.array_equal(w, [8.0, 8.0])
    assert np.array_equal(w, [8.0, 8.0])


@pytest.mark.parametrize("decay", [1.0, 0.99999999])  # the second rounds to 1 in float32
def test_paddle_decay_one_without_counter_is_refused(decay):
    # the zero-started average never moves and 0 / (1 - 1**t) gave nan
    with pytest.raises(ValueError, match=r"decay must round to < 1 in float32"):
        paddle.ExponentialMovingAverage([np.ones(2, dtype=np.float32)], decay=decay)
    paddle.ExponentialMovingAverage([np.ones(2, dtype=np.float32)], decay=decay, thres_steps=3)


# ---- TensorFlow ----


@pytest.mark.parametrize("decay", [1.0, 0.99999999])
def test_tensorflow_zero_debias_decay_one_without_counter_is_refused(decay):
    with pytest.raises(ValueError, match=r"decay must round to < 1 in float32"):
        tensorflow.ExponentialMovingAverage(decay, zero_debias=True)
    tensorflow.ExponentialMovingAverage(decay)  # no correction: a frozen shadow, as TF
    tensorflow.ExponentialMovingAverage(decay, num_updates=0, zero_debias=True)


def test_gated_on_jax_int32_steps_with_constants_past_int32():
    # JAX without x64 raised OverflowError for a start, phase, offset or divisor past 2**31 - 1
    jnp = pytest.importorskip("jax.numpy")
    big = 2**40
    cases = [
        schedules.gated(0.9, start=big),
        schedules.gated(0.9, every=2, phase=big + 1),
        schedules.gated(schedules.warmup(0.999), offset=big),
        schedules.gated(schedules.warmup(0.999), offset=-big),
        schedules.gated(schedules.warmup(0.999), divisor=big, offset=big - 3),
        schedules.gated(0.9, every=big, phase=5),
    ]
    for s in cases:
        for t in [0, 1, 2, 3, 5, 6, INT32_MAX - 1, INT32_MAX]:
            assert float(s(jnp.asarray(t, dtype=jnp.int32))) == pytest.approx(s(t), rel=1e-6)


def test_gated_array_count_matches_int_count_exhaustively_on_int8(monkeypatch):
    # the count arithmetic kept in int8 (no widening): no intermediate may wrap
    import ema_core.schedules._gated as gated_module
    from ema_core import _ops

    monkeypatch.setattr(gated_module, "_widest_int", lambda xp, t: t)
    # CPU tensors as device ones: the array arithmetic (a readable CPU count takes the host's)
    monkeypatch.setattr(_ops, "HOST_PLATFORMS", ())
    ts = range(128)
    for offset in [-300, -200, -7, -1, 0, 1, 3, 126, 127, 128, 300]:
        for divisor in [1, 2, 3, 64, 127, 128, 1000]:
            inner = schedules.annealing(0.0, gamma=1.0)  # t / (1 + t): one decay per count
            s = schedules.gated(inner, offset=offset, divisor=divisor)
            got = [float(s(torch.tensor(t, dtype=torch.int8))) for t in ts]
            # t = 0 is a copy (copy_through=0); the count saturates at int8's 127
            want = [0.0] + [inner(max(min((t + offset) // divisor, 127), 1)) for t in ts[1:]]
            assert got == want, (offset, divisor)
