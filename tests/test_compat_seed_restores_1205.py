"""The seed classes' backups and reads a second hunt of 2026-12-05 found broken, each pinned:
a stale pending backup (``update()`` / ``apply()`` since a forgotten ``restore()``) kept over
the trained values, a failed Paddle ``apply`` left pending, Paddle's read of complex
parameters, and TF's float32 decay widened exactly for a float64 variable (README, the seed
classes' choices and the parity paragraph)."""

from __future__ import annotations

import numpy as np
import pytest

from ema_core.compat import allennlp, paddle, tensorflow

torch = pytest.importorskip("torch")


def test_paddle_apply_after_a_forgotten_restore_and_more_training_keeps_the_trained_values() -> (
    None
):
    """Paddle's usage 2 (``apply(need_restore=False)``) with no ``restore()``, then training
    and a ``with apply()``: the block restored nothing and a later ``restore()`` wrote back the
    values of before the first apply, so the trained ones were lost."""
    w = np.full(2, 1.0)
    ema = paddle.ExponentialMovingAverage([("w", w)], decay=0.5)
    ema.update()
    with ema.apply(need_restore=False):
        pass
    w[:] = 10.0
    ema.update()
    with ema.apply() as inside:
        assert np.array_equal(inside["w"], ema.average()["w"])
        assert not np.array_equal(w, [10.0, 10.0])
    assert np.array_equal(w, [10.0, 10.0])
    with pytest.raises(RuntimeError, match=r"restore\(\) needs an earlier apply"):
        ema.restore()
    assert np.array_equal(w, [10.0, 10.0])


def test_paddle_apply_again_without_an_update_still_keeps_the_first_backup() -> None:
    """The documented choice stands where nothing was trained: the parameters hold averages,
    so the first backup is the one to keep."""
    w = np.full(2, 1.0)
    ema = paddle.ExponentialMovingAverage([("w", w)], decay=0.5)
    w[:] = 3.0
    ema.update()
    with ema.apply(need_restore=False):
        pass
    with ema.apply(need_restore=False):
        pass
    ema.restore()
    assert np.array_equal(w, [3.0, 3.0])


def test_paddle_update_inside_a_with_block_leaves_the_nested_block_to_the_outer_one() -> None:
    w = np.full(2, 1.0)
    ema = paddle.ExponentialMovingAverage([("w", w)], decay=0.5)
    ema.update()
    w[:] = 5.0
    with ema.apply():
        ema.update()  # odd, but the outer block's backup is still the trained values
        with ema.apply():
            pass
        assert not np.array_equal(w, [5.0, 5.0])
    assert np.array_equal(w, [5.0, 5.0])


def test_paddle_apply_refused_for_a_resized_parameter_leaves_nothing_pending() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    ema = paddle.ExponentialMovingAverage([("p", p)], decay=0.5)
    ema.update()
    p.data = torch.full((5,), 7.0)
    with pytest.raises(ValueError, match=r"'p' has shape \(5,\)"), ema.apply(need_restore=False):
        pass
    assert torch.equal(p.data, torch.full((5,), 7.0))
    with pytest.raises(RuntimeError, match=r"restore\(\) needs an earlier apply"):
        ema.restore()


@pytest.mark.parametrize("make", [np.complex64, np.complex128, "torch"])
def test_paddle_reads_complex_parameters_as_complex(make: object) -> None:
    """The bias-corrected read cast complex to float32 and dropped the imaginary part."""
    if make == "torch":
        w = torch.full((2,), 2 + 2j, dtype=torch.complex64)
    else:
        w = np.full(2, 2 + 2j, dtype=make)
    ema = paddle.ExponentialMovingAverage([("w", w)], decay=0.5)
    ema.update()
    ema.update()
    average = ema.average()["w"]
    assert average.dtype == w.dtype
    assert np.allclose(np.asarray(average), [2 + 2j, 2 + 2j], rtol=1e-6)


def test_allennlp_assign_after_a_forgotten_restore_and_more_training_backs_up_again() -> None:
    w = np.full(2, 1.0)
    ema = allennlp.ExponentialMovingAverage({"w": w}, decay=0.5)
    w[:] = 3.0
    ema.apply()
    ema.assign_average_value()
    assert np.array_equal(w, [2.0, 2.0])
    w[:] = 10.0
    ema.apply()
    ema.assign_average_value()
    assert np.array_equal(w, [6.0, 6.0])
    ema.restore()
    assert np.array_equal(w, [10.0, 10.0])


def test_allennlp_assign_twice_without_training_keeps_the_first_backup() -> None:
    w = np.full(2, 1.0)
    ema = allennlp.ExponentialMovingAverage({"w": w}, decay=0.5)
    w[:] = 3.0
    ema.apply()
    ema.assign_average_value()
    ema.assign_average_value()
    ema.restore()
    assert np.array_equal(w, [3.0, 3.0])


def test_tf_float64_variable_reads_the_float32_decay_widened_exactly() -> None:
    """README's parity paragraph: below a decay of 0.5 a float64 leaf blends as
    ``p - d32 * (p - s)`` in float64, which differs from TF's ``1 - d`` formed in float32."""
    w = np.zeros(1, np.float64)
    ema = tensorflow.ExponentialMovingAverage(0.9999, num_updates=0)
    ema.apply([("w", w)])
    w[:] = 1.0
    ema.apply([("w", w)])
    d32 = np.float64(np.float32(1) / np.float32(10))
    assert ema.average("w")[0] == 1.0 - d32
    tf_rule = np.float64(np.float32(1) - np.float32(d32))
    assert 0 < abs(ema.average("w")[0] - tf_rule) < 3e-8


def test_paddle_nested_apply_after_a_restore_inside_a_block_backs_up_and_restores() -> None:
    """A review of the stale-backup change: with nothing pending inside an open block (the
    block's backup restored by hand), a nested ``apply`` must take its own backup."""
    w = np.full(2, 4.0)
    ema = paddle.ExponentialMovingAverage([("w", w)], decay=0.5)
    ema.update()
    w[:] = 1.0
    with ema.apply():
        ema.restore()
        with ema.apply() as inner:
            assert np.array_equal(inner["w"], ema.average()["w"])
    assert np.array_equal(w, [1.0, 1.0])


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_torch_complex32_keeps_its_imaginary_part_in_the_core_and_in_paddle() -> None:
    """The core computed a complex32 shadow in float32 (the imaginary part dropped), and
    Paddle's read refused to divide it (a review of the complex read)."""
    import ema_core

    half = torch.complex32
    params = {"w": torch.full((2,), 1 + 1j, dtype=half)}
    out = ema_core.ema_update({"w": torch.zeros(2, dtype=half)}, params, 1, decay=0.5)
    assert out["w"].dtype == half
    assert torch.equal(out["w"].to(torch.complex64), torch.full((2,), 0.5 + 0.5j))
    w = torch.full((2,), 2 + 2j, dtype=half)
    ema = paddle.ExponentialMovingAverage([("w", w)], decay=0.5)
    ema.update()
    ema.update()
    assert torch.equal(ema.average()["w"].to(torch.complex64), torch.full((2,), 2 + 2j))
