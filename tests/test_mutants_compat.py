"""Tests that the third mutation-testing audit (the drop-in classes of ``ema_core.compat`` and
their shared helpers) found missing: each kills a small plausible bug that the rest of the
suite let through."""

from __future__ import annotations

import numpy as np
import pytest

from ema_core.compat import allennlp, paddle, tensorflow


def test_named_arrays_refuse_a_name_given_twice() -> None:
    """Two parameters under one name would leave one of them without a shadow: refused."""
    with pytest.raises(ValueError, match="holds the name 'w' twice"):
        allennlp.ExponentialMovingAverage([("w", np.ones(2)), ("w", np.zeros(2))])


@pytest.mark.parametrize("empty", [[], {}])
def test_named_arrays_refuse_nothing_to_average(empty: object) -> None:
    """No parameters at all is a mistake, not an EMA of nothing."""
    with pytest.raises(ValueError, match="holds no arrays"):
        allennlp.ExponentialMovingAverage(empty)
    with pytest.raises(ValueError, match="holds no arrays"):
        paddle.ExponentialMovingAverage(empty)


def test_plain_arrays_are_named_by_position_only_when_all_are_plain() -> None:
    """Paddle's list of plain arrays gets the names "0", "1", ...; a list mixing a plain array
    with a (name, array) pair is refused at the plain one, not renamed around the pair."""
    a, b = np.ones(2, dtype=np.float32), np.zeros(2, dtype=np.float32)
    assert sorted(paddle.ExponentialMovingAverage([a, b]).parameters) == ["0", "1"]
    with pytest.raises(TypeError, match=r"parameters\[0\] must be a \(name, array\) pair"):
        paddle.ExponentialMovingAverage([a, ("w", b)])


def test_load_refuses_a_sparse_tensor_of_the_right_shape_and_dtype() -> None:
    """A sparse tensor of the tracked shape and dtype is still not a dense one with data:
    refused before any shadow is written."""
    torch = pytest.importorskip("torch")
    w = torch.ones(2, 2)
    ema = allennlp.ExponentialMovingAverage([("w", w)], decay=0.5)
    state = ema.state_dict()
    state["shadows"]["w"] = torch.eye(2).to_sparse()
    with pytest.raises(ValueError, match="must be a dense tensor"):
        ema.load_state_dict(state)
    assert ema.state_dict()["shadows"]["w"].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_a_read_only_parameter_is_refused_and_the_shadow_kept() -> None:
    """A read-only numpy parameter cannot be written in place: ``assign_average_value`` is a
    ``ValueError`` naming it (it was rebound silently, the caller's array left as it was), and
    the shadow is never handed out to be written through."""
    w = np.full(2, 4.0)
    w.flags.writeable = False
    ema = allennlp.ExponentialMovingAverage([("w", w)], decay=0.5)
    with pytest.raises(ValueError, match=r"parameters\['w'\] is a read-only"):
        ema.assign_average_value()
    assert ema.state_dict()["shadows"]["w"].tolist() == [4.0, 4.0] and w.tolist() == [4.0, 4.0]


def test_paddle_apply_gives_an_immutable_float16_parameter_its_own_dtype() -> None:
    """The zero-started averages of float16 parameters are kept in float32; written into
    immutable JAX parameters they are cast back, as in-place writes into numpy or torch
    arrays are."""
    jnp = pytest.importorskip("jax.numpy")
    ema = paddle.ExponentialMovingAverage({"w": jnp.full(2, 4.0, dtype=jnp.float16)}, decay=0.5)
    ema.update()
    with ema.apply() as averaged:
        assert averaged["w"].dtype == jnp.float16
        assert averaged["w"].tolist() == [4.0, 4.0]


def test_a_decay_that_rounds_to_one_reads_the_raw_zero_started_average() -> None:
    """With ``thres_steps`` / ``num_updates`` near 1e9 the counter decay rounds to 1 in
    float32, so ``1 - d ** t`` is 0: the raw average is read (zeros here), not 0 / 0."""
    w = np.full(2, 4.0, dtype=np.float32)
    ema = paddle.ExponentialMovingAverage([("w", w)], decay=1.0, thres_steps=10**9)
    ema.update()
    assert ema.average()["w"].tolist() == [0.0, 0.0]
    tf_ema = tensorflow.ExponentialMovingAverage(1.0, num_updates=10**9, zero_debias=True)
    tf_ema.apply([("w", w)])
    assert tf_ema.average("w").tolist() == [0.0, 0.0]


def test_tf_debiases_float16_in_float32_arithmetic() -> None:
    """``biased / (1 - d)`` for a float16 shadow is formed in float32 and rounded once: in
    float16 arithmetic the weight 0.1 itself would round first and 3 read back as 3.002."""
    w = np.array([3.0, 7.0], dtype=np.float16)
    ema = tensorflow.ExponentialMovingAverage(0.9, zero_debias=True)
    ema.apply([("w", w)])
    biased = ema.state_dict()["biased"]["w"]
    weight = 1.0 - float(np.float32(0.9))
    want = (biased.astype(np.float32) / np.float32(weight)).astype(np.float16)
    assert ema.average("w").dtype == np.float16
    assert ema.average("w").tolist() == want.tolist() == [3.0, 7.0]


def test_a_decay_that_rounds_to_one_in_float32_needs_a_counter_to_debias() -> None:
    """1 - 1e-9 is below 1 but rounds to 1 in float32, where the decay is formed: without a
    counter to lower it the zero-started average could never be read, so it is refused."""
    w = np.ones(2, dtype=np.float32)
    with pytest.raises(ValueError, match="round to < 1 in float32"):
        paddle.ExponentialMovingAverage([("w", w)], decay=1 - 1e-9)
    with pytest.raises(ValueError, match="round to < 1 in float32"):
        tensorflow.ExponentialMovingAverage(1 - 1e-9, zero_debias=True)


def test_load_compares_saved_settings_by_type_too() -> None:
    """A saved ``zero_debias`` of 0 equals False but is not the bool this class saves: a
    state written by something else is refused, not read as the same settings."""
    ema = tensorflow.ExponentialMovingAverage(0.5)
    ema.apply([("w", np.ones(2, dtype=np.float32))])
    state = ema.state_dict()
    state["zero_debias"] = 0
    with pytest.raises(ValueError, match=r"\['zero_debias'\] is 0 \(type int, not bool\)"):
        ema.load_state_dict(state)


def test_load_takes_a_decay_saved_as_a_float_subclass_and_names_other_types() -> None:
    """A decay that came back as numpy's float64 (a float) is the same setting and loads; one
    that came back as a float32 scalar is refused with both types named, not as '0.5 but 0.5'."""
    w = np.ones(2, dtype=np.float32)
    saved = paddle.ExponentialMovingAverage([("w", w)], decay=0.5)
    saved.update()
    state = saved.state_dict()
    other = paddle.ExponentialMovingAverage([("w", w)], decay=0.5)
    other.load_state_dict({**state, "decay": np.float64(0.5)})
    assert other.state_dict()["step"] == 1
    fresh = paddle.ExponentialMovingAverage([("w", w)], decay=0.5)
    message = r"is np.float32\(0.5\) \(type float32, not float\) but .* is 0.5"
    with pytest.raises(ValueError, match=message):
        fresh.load_state_dict({**state, "decay": np.float32(0.5)})
    assert fresh.state_dict()["step"] == 0


def test_load_refuses_a_state_saved_under_another_fixed_counter() -> None:
    """``thres_steps`` given as a fixed int is a setting: a state saved with 3 does not load
    into an instance made with 4 (a live counter would be the caller's to restore)."""
    w = np.ones(2, dtype=np.float32)
    saved = paddle.ExponentialMovingAverage([("w", w)], decay=0.9, thres_steps=3)
    saved.update()
    other = paddle.ExponentialMovingAverage([("w", w)], decay=0.9, thres_steps=4)
    with pytest.raises(ValueError, match=r"state_dict\['thres_steps'\] is 3 .* is 4"):
        other.load_state_dict(saved.state_dict())
    assert other.state_dict()["step"] == 0


def test_load_checks_a_saved_counter_even_when_this_one_is_live() -> None:
    """With a live ``thres_steps`` (a callable) the saved value is not compared, but it must
    still be a count: -1 is refused."""
    w = np.ones(2, dtype=np.float32)
    ema = paddle.ExponentialMovingAverage([("w", w)], decay=0.9, thres_steps=lambda: 3)
    state = ema.state_dict()
    state["thres_steps"] = -1
    with pytest.raises(ValueError, match=r"state_dict\['thres_steps'\]"):
        ema.load_state_dict(state)


@pytest.mark.parametrize("count", [np.array(2.5), np.array(True), np.array([2])])
def test_a_count_array_must_be_a_0d_integer_array(count: np.ndarray) -> None:
    """``num_updates`` as an array is read only when it is a 0-d integer one: 2.5 is not
    truncated to 2, a bool is not a count, a one-element vector is not a scalar."""
    ema = allennlp.ExponentialMovingAverage([("w", np.ones(2))], decay=0.5)
    with pytest.raises(TypeError, match="num_updates must be a 0-d integer array"):
        ema.apply(num_updates=count)


def test_tf_var_list_refuses_a_str() -> None:
    """A str is iterable, but a variable name alone is not a variable: refused as a whole,
    not letter by letter."""
    ema = tensorflow.ExponentialMovingAverage(0.5)
    with pytest.raises(TypeError, match=r"var_list must be arrays or \(name, array\) pairs"):
        ema.apply("dense/kernel")


def test_allennlp_refuses_a_count_that_makes_the_decay_negative() -> None:
    """``(numerator + n) / (denominator + n)`` is 0 at n = -numerator (a copy) and negative
    below it: with numerator -3, n = 3 copies the parameter and n = 2 is refused."""
    w = np.full(2, 4.0)
    ema = allennlp.ExponentialMovingAverage([("w", w)], decay=0.5, numerator=-3.0)
    w += 2.0
    ema.apply(num_updates=3)
    assert ema.state_dict()["shadows"]["w"].tolist() == [6.0, 6.0]
    with pytest.raises(ValueError, match="num_updates must be >= -numerator"):
        ema.apply(num_updates=2)


def test_allennlp_state_dict_hands_out_copies_of_the_backups() -> None:
    """The backups in ``state_dict()`` are copies: writing into a saved state does not change
    the values a later ``restore()`` writes back."""
    w = np.full(2, 4.0)
    ema = allennlp.ExponentialMovingAverage([("w", w)], decay=0.5)
    ema.assign_average_value()
    ema.state_dict()["backups"]["w"][...] = 9.0
    assert ema.restore()["w"].tolist() == [4.0, 4.0]


def test_tf_forms_a_plain_decay_in_float32() -> None:
    """Without ``num_updates`` the decay is still TF's float32 one: a float64 shadow of 1
    moved toward 0 once reads float32(0.9), not 0.9."""
    w = np.ones(1)
    ema = tensorflow.ExponentialMovingAverage(0.9)
    ema.apply([("w", w)])
    w[...] = 0.0
    ema.apply([("w", w)])
    assert ema.average("w").tolist() == [float(np.float32(0.9))]


def test_tf_average_finds_the_shadow_by_the_array_last_applied() -> None:
    """A named variable given as a new array object (a JAX step, or a reassigned numpy name)
    is the one ``average(array)`` then looks up, as the name is."""
    ema = tensorflow.ExponentialMovingAverage(0.5)
    ema.apply([("w", np.ones(2))])
    new = np.full(2, 3.0)
    ema.apply([("w", new)])
    assert ema.average(new) is ema.average("w")
    assert ema.average("w").tolist() == [2.0, 2.0]
