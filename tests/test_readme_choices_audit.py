"""Audit of README "Choices where the contract is silent": claims of that section that no other
test pinned, one test per claim (each docstring quotes the README)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import schedules


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def test_ema_update_takes_no_xp_argument() -> None:
    """README: "The functions take no `xp=` argument ... an `xp` given beside them could only
    repeat it or be an error"."""
    shadow = np.zeros(2)
    with pytest.raises(TypeError, match="xp"):
        ema.ema_update({"w": shadow}, {"w": np.ones(2)}, 1, decay=0.5, xp=np)  # type: ignore[call-arg]
    assert not shadow.any()  # refused before any write
    config = ema.Config(schedule=0.5)
    with pytest.raises(TypeError, match="xp"):
        ema.init({"w": np.ones(2)}, config, xp=np)  # type: ignore[call-arg]


@pytest.mark.parametrize("how", ["decay", "constant"])
def test_negative_zero_decay_is_a_bit_exact_copy(how: str) -> None:
    """README: "`constant(-0.0)` (and `decay=-0.0`) is the decay `+0.0`: a copy, as 0.0 is"."""
    params = np.array([-0.0, 1.0 / 3.0, -7.25e-300, np.pi])
    kwargs: dict[str, Any] = (
        {"decay": -0.0} if how == "decay" else {"schedule": schedules.constant(-0.0)}
    )
    out = ema.ema_update({"w": np.full(4, 5.0)}, {"w": params}, 3, **kwargs)["w"]
    assert _bits(out) == _bits(params)  # -0.0 keeps its sign: a copy, not 0 * s + 1 * p
    if how == "constant":
        decay = float(schedules.constant(-0.0)(1))
        assert decay == 0.0 and not np.signbit(decay)


def test_numpy_scalar_decays_are_read_as_python_floats() -> None:
    """README: "A numpy scalar or 0-d numpy decay is used as a Python float" (so np.float32
    passes to `ema_update`'s `decay=`, unlike hyperparameters)."""
    value = np.float32(0.3)
    expected = ema.ema_update({"w": np.zeros(3)}, {"w": np.ones(3)}, 1, decay=float(value))["w"]
    for decay in (value, np.array(value), np.array(float(value))):
        out = ema.ema_update({"w": np.zeros(3)}, {"w": np.ones(3)}, 1, decay=decay)["w"]
        assert _bits(out) == _bits(expected)
    assert expected[0] == pytest.approx(1.0 - float(value), abs=0.0)


def test_copy_true_returns_new_arrays_at_a_skipped_step() -> None:
    """README: "`copy=True` returns new arrays also at a skipped step"."""
    params = {"w": np.ones(2), "n": np.full(2, 7)}
    for kwargs in ({"decay": 1.0}, {"config": ema.Config(schedule=0.5, interval=2)}):
        shadow = {"w": np.zeros(2), "n": np.zeros(2, np.int64)}
        out = ema.ema_update(shadow, params, 1, copy=True, **kwargs)
        assert out["w"] is not shadow["w"] and out["n"] is not shadow["n"]
        assert not shadow["w"].any() and not shadow["n"].any()  # never mutated
        assert out["w"].tolist() == [0.0, 0.0]  # averaged: kept (decay 1)
        assert out["n"].tolist() == [7, 7]  # non_float="copy": the model's values


def test_zeros_average_over_a_half_shadow_is_float32_with_any_correction() -> None:
    """README: "the read of an `init="zeros"` EMA (any `correction`, `"none"` included): over a
    float16/bfloat16 shadow it is float32 ... and the state stays in it"."""
    params = {"h": np.full(3, 1.0 / 3.0, np.float16)}
    for correction in ("none", "exact", "power"):
        config = ema.Config(schedule=0.5, init="zeros", dtype="same", correction=correction)
        state = ema.init(params, config)
        for _ in range(2):
            state = ema.update(state, params, config)
        read = ema.average(state, config)["h"]
        assert state.shadow["h"].dtype == np.float16
        assert read.dtype == np.float32
        if correction == "none":  # the raw shadow, widened
            assert _bits(read) == _bits(state.shadow["h"].astype(np.float32))
        else:  # corrected (weight 0.75) in float32 and never rounded back to float16
            raw = state.shadow["h"].astype(np.float64) / 0.75
            np.testing.assert_allclose(read, raw, rtol=1e-6)


def test_an_array_step_counter_stops_at_its_dtypes_top_and_reuses_that_decay() -> None:
    """README: "An array step counter (`EMAState.step` ...) stops at its dtype's largest value
    instead of wrapping (... uint8 at 255); later updates reuse that step's decay"."""
    schedule = schedules.warmup(0.9999, power=0.5)
    config = ema.Config(schedule=schedule)
    params = {"w": np.ones(2)}
    state = ema.init({"w": np.zeros(2)}, config)._replace(step=np.array(254, np.uint8))
    state = ema.update(state, params, config)  # t = 255
    assert int(state.step) == 255 and state.step.dtype == np.uint8
    before = state.shadow["w"].copy()
    state = ema.update(state, params, config)  # would wrap to 0, and copy, if it wrapped
    assert int(state.step) == 255 and state.step.dtype == np.uint8
    rate = 1.0 - float(schedule(255))
    expected = before + rate * (1.0 - before)
    np.testing.assert_allclose(state.shadow["w"], expected, rtol=1e-12)


def test_gated_on_a_uint8_step_does_not_wrap() -> None:
    """README: "On an array step, `gated` computes its gate and `(t + offset) // divisor`
    without leaving the step's integer range"."""
    gated = schedules.gated(schedules.warmup(0.9999), offset=10, divisor=3)
    for t in (240, 250, 255):
        got = float(gated(np.array(t, np.uint8)))
        assert got == pytest.approx(float(gated(t)), rel=1e-12)


def test_a_decay_that_requires_grad_is_read_detached_without_a_warning() -> None:
    """README: "A decay tensor that requires grad (an `nn.Parameter` a schedule returns) is read
    detached, with no torch warning"."""
    torch = pytest.importorskip("torch")
    decay = torch.nn.Parameter(torch.tensor(0.25))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kwargs in ({"decay": decay}, {"schedule": lambda t: decay}):
            shadow = {"w": torch.zeros(3)}
            out = ema.ema_update(shadow, {"w": torch.ones(3)}, 1, **kwargs)["w"]
            assert not out.requires_grad
            assert out.tolist() == pytest.approx([0.75] * 3, abs=1e-7)
    assert decay.grad is None


def test_state_dict_tensors_are_not_made_on_the_default_device() -> None:
    """README: "The tensors ema-core makes for itself (a `state_dict()`'s `step` and `weight`
    ...) are made on the CPU or on their shadows' device, never on
    `torch.set_default_device`'s"."""
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = torch.nn.Linear(2, 2)
    averager = EMA(model, decay=0.5)
    averager.update()
    with torch.device("meta"):
        state = averager.state_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    assert tensors  # the step at least
    for name, value in tensors.items():
        assert value.device.type == "cpu", name
    assert int(state["step"]) == 1


def test_a_bf16_blend_under_a_meta_default_device_keeps_later_updates_working() -> None:
    """README: "a first bf16 blend under it cached a meta scratch that left every later update
    of its dtype a no-op" (fixed: scratch is made on the shadows' device)."""
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = torch.nn.Linear(4, 3).to(torch.bfloat16)
    averager = EMA(model, decay=0.5)
    with torch.device("meta"):
        averager.update()
    before = {k: v.clone() for k, v in averager.average.items()}
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    averager.update()
    for name, value in averager.average.items():
        expected = before[name] + 0.5 * (
            dict(model.named_parameters())[name].float() - before[name]
        )
        torch.testing.assert_close(value.float(), expected.float(), rtol=1e-2, atol=1e-2)
        assert not torch.equal(value, before[name]), name


def test_allennlp_counters_must_be_ints_or_0d_integer_arrays() -> None:
    """README: "The compat classes take counters (`num_updates`, `thres_steps`) as ints or 0-d
    integer arrays (floats and bools are a `TypeError`)"."""
    from ema_core.compat import allennlp

    param = np.zeros(2)
    averager = allennlp.ExponentialMovingAverage({"w": param}, decay=0.9)
    param[:] = 1.0
    for bad in (True, 3.0, np.array(3.0)):
        with pytest.raises(TypeError, match="num_updates"):
            averager.apply(num_updates=bad)  # type: ignore[arg-type]
    assert not averager._shadows["w"].any()  # nothing applied by the refused calls
    averager.apply(num_updates=np.array(0))  # min(0.9, (1 + 0) / (10 + 0)) = 0.1
    np.testing.assert_allclose(averager._shadows["w"], [0.9, 0.9], rtol=1e-12)


def test_allennlp_numerator_above_denominator_is_the_plain_decay() -> None:
    """README: "`compat.allennlp` accepts `numerator > denominator` (the plain decay)"."""
    from ema_core.compat import allennlp

    param = np.zeros(2)
    averager = allennlp.ExponentialMovingAverage(
        {"w": param}, decay=0.75, numerator=20.0, denominator=10.0
    )
    param[:] = 1.0
    averager.apply(num_updates=1)  # (20 + 1) / (10 + 1) > 1: min(...) is the decay
    np.testing.assert_allclose(averager._shadows["w"], [0.25, 0.25], rtol=1e-12)


def test_compat_classes_refuse_an_empty_parameter_list() -> None:
    """README: "and refuse an empty parameter list (AllenNLP and Paddle accept one and do
    nothing)"."""
    from ema_core.compat import allennlp, paddle

    for cls in (allennlp.ExponentialMovingAverage, paddle.ExponentialMovingAverage):
        with pytest.raises(ValueError, match="no arrays"):
            cls({}, decay=0.9)


def test_traced_decays_of_0_and_1_copy_and_skip_bit_for_bit() -> None:
    """README: "A decay of exactly 0 copies the params bit for bit and exactly 1 leaves an
    averaged shadow bit for bit, also when the decay is ... traced (inf and NaN params do not
    reach a skipped shadow; a NaN shadow does not survive a copy)"."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    @jax.jit
    def step(shadow: Any, params: Any, decay: Any) -> Any:
        return ema.ema_update(shadow, params, 1, decay=decay)

    shadow = {"w": jnp.asarray([1.0 / 3.0, jnp.nan, -0.0, 2.5])}
    params = {"w": jnp.asarray([jnp.inf, 0.7, jnp.nan, -0.0])}
    copied = step(shadow, params, jnp.asarray(0.0))["w"]
    assert _bits(np.asarray(copied)) == _bits(np.asarray(params["w"]))
    kept = step(shadow, params, jnp.asarray(1.0))["w"]
    assert _bits(np.asarray(kept)) == _bits(np.asarray(shadow["w"]))


def test_make_update_turns_host_steps_and_weights_into_jax_arrays() -> None:
    """README: "A state whose `step` is a Python or numpy integer, or whose `weight` is a Python
    float, is turned into 0-d JAX arrays by `make_update` (under jit they would be constants
    that never move)"."""
    jax = pytest.importorskip("jax")
    from ema_core.jax import make_update

    jnp = jax.numpy
    config = ema.Config(schedule=schedules.num_updates(0.99), init="zeros")
    params = {"w": jnp.ones(3)}
    update = make_update(config, donate=False)
    base = ema.init(params, config)
    for step, weight in ((0, 0.0), (np.int64(0), 0.0)):
        state = base._replace(step=step, weight=weight)
        for t in range(1, 4):
            state = update(state, params)
            assert isinstance(state.step, jax.Array) and int(state.step) == t
            assert isinstance(state.weight, jax.Array)
        decays = [(1 + t) / (10 + t) for t in (1, 2, 3)]
        expected = 1.0 - float(np.prod(decays))  # the weight: 1 - prod(d_1 .. d_t)
        assert float(state.weight) == pytest.approx(expected, rel=1e-6)


def test_paddle_reads_the_raw_average_once_its_float32_decay_rounds_to_1() -> None:
    """README: "With a counter and `decay=1.0`, past about 3e8 updates the float32 decay rounds
    to 1 and `1 - d**t` is 0: `compat.paddle` ... then read[s] the raw average"."""
    from ema_core.compat import paddle

    count = [0]
    param = np.full(2, 4.0, np.float32)
    averager = paddle.ExponentialMovingAverage(
        {"w": param}, decay=1.0, thres_steps=lambda: count[0]
    )
    averager.update()  # d = min(1, 1 / 10): ema = 0.9 * 4
    count[0] = 10**9  # (1 + t) / (10 + t) rounds to 1 in float32
    assert np.float32((1 + count[0]) / (10 + count[0])) == 1.0
    averager.update()
    raw = np.float32(0.9) * np.float32(4.0)
    read = averager.average()["w"]
    assert np.isfinite(read).all()
    np.testing.assert_allclose(read, [raw, raw], rtol=1e-6)
    with averager.apply() as applied:
        np.testing.assert_allclose(applied["w"], [raw, raw], rtol=1e-6)
    assert param.tolist() == [4.0, 4.0]  # restored


def test_tensorflow_zero_debias_reads_the_raw_average_once_the_decay_rounds_to_1() -> None:
    """README: "... `compat.tensorflow` (`zero_debias`) then read the raw average, as
    `ema_core.average` does, where Paddle and TF divide by 0 (inf or nan)"."""
    from ema_core.compat import tensorflow

    count = [0]
    param = np.full(2, 4.0, np.float32)
    averager = tensorflow.ExponentialMovingAverage(
        1.0, num_updates=lambda: count[0], zero_debias=True
    )
    averager.apply({"w": param})  # d = 1 / 10: biased 0.9 * 4, debiased by 1 - 0.1
    np.testing.assert_allclose(averager.average(param), [4.0, 4.0], rtol=1e-6)
    count[0] = 10**9
    averager.apply({"w": param})  # d rounds to 1: the biased value stays, 1 - d**t is 0
    read = averager.average(param)
    assert read is not None and np.isfinite(read).all()
    raw = float(np.float32(0.9) * np.float32(4.0))
    np.testing.assert_allclose(read, [raw, raw], rtol=1e-6)


def test_a_decay_rounding_to_1_in_float32_still_moves_by_its_rate_without_float64() -> None:
    """README: on a device without float64 "a decay within about 6e-8 of 1 rounds to 1 as a
    value ...; the rate `1 - d` is kept as given, so such a decay still moves the shadow"."""
    xp = pytest.importorskip("array_api_strict")
    device = xp.Device("no_float64")
    shadow = xp.zeros(3, dtype=xp.float32, device=device)
    params = xp.ones(3, dtype=xp.float32, device=device)
    assert float(np.float32(1.0 - 1e-8)) == 1.0  # the value alone would be a skip
    out = ema.ema_update({"w": shadow}, {"w": params}, 1, decay=1.0 - 1e-8, copy=True)["w"]
    want = np.float32(1.0 - (1.0 - 1e-8))  # 0 + rate * (1 - 0), the rate rounded once
    got = [float(out[i]) for i in range(3)]
    assert got == [float(want)] * 3 and float(want) > 0.0
