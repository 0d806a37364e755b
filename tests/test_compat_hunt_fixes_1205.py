"""Seed-system promises a hostile-user hunt of 2026-12-05 found broken, each pinned: TF's
``apply`` with one array under two names in one call, MMEditing's ``sync_parameters`` and
non-persistent buffers, and ``presets.allennlp(num_updates=0)`` with a denominator <= 1."""

from __future__ import annotations

import numpy as np
import pytest

from ema_core import presets
from ema_core.compat import allennlp, tensorflow

torch = pytest.importorskip("torch")
from ema_core.compat.mmedit import ExponentialMovingAverage as MMEditEMA  # noqa: E402


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(2, 2)
        self.head = torch.nn.Linear(2, 2, bias=False)
        self.head.weight = self.emb.weight


def test_tf_one_array_under_two_names_in_the_first_apply_is_refused() -> None:
    """It got two shadows, and the one under the name never passed again went stale (README:
    a second name for an array is a ValueError)."""
    model = _Tied()
    average = tensorflow.ExponentialMovingAverage(0.5)
    with pytest.raises(ValueError, match=r"var_list\[1\] repeats var_list\[0\]'s array as 'h"):
        average.apply(model.state_dict(keep_vars=True))  # emb.weight and head.weight: one
    assert average.average("emb.weight") is None and average.average("head.weight") is None
    average.apply(model)  # named_parameters lists the tied weight once
    assert average.average("emb.weight") is not None


@pytest.mark.parametrize("form", ["two names", "unnamed then named"])
def test_tf_one_new_array_twice_in_one_var_list_is_refused(form: str) -> None:
    x = np.zeros(2, np.float32)
    average = tensorflow.ExponentialMovingAverage(0.5)
    var_list = [("a", x), ("b", x)] if form == "two names" else [x, ("b", x)]
    with pytest.raises(ValueError, match=r"var_list\[1\] repeats var_list\[0\]'s array"):
        average.apply(var_list)
    assert average.average(x) is None


def test_mmedit_sync_parameters_copies_non_persistent_buffers() -> None:
    """MMEditing copies ``parameters()`` and ``buffers()``; a ``state_dict`` leaves out the
    non-persistent buffers, which kept their old values."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.register_buffer("scale", torch.ones(2), persistent=False)

    model = Net()
    average = MMEditEMA(model, momentum=0.1)
    with torch.no_grad():
        model.scale.fill_(5.0)
        model.lin.weight.add_(1.0)
    average.sync_parameters(model)
    assert torch.equal(average.module.scale, torch.full((2,), 5.0))
    assert torch.equal(average.module.lin.weight, model.lin.weight)


def _allennlp_decays(decay: float, numerator: float, denominator: float, start: int) -> list:
    """AllenNLP's decay at its counter n = start, start + 1, ... (float64)."""
    return [min(decay, (numerator + n) / (denominator + n)) for n in range(start, start + 6)]


@pytest.mark.parametrize(
    ("numerator", "denominator", "start"),
    [(0.2, 0.5, 0), (0.0, 1.0, 0), (1.0, 1.0, 0), (0.0, 0.5, 0), (-0.4, 0.5, 1), (0.0, 1.5, 0)],
)
def test_allennlp_preset_with_a_counter_from_zero_and_a_small_denominator(
    numerator: float, denominator: float, start: int
) -> None:
    """The shifted denominator ``denominator + start - 1`` went <= 0 and the preset refused
    settings AllenNLP (and ``compat.allennlp``) accept, naming a denominator never given."""
    config = presets.allennlp(0.9, numerator, denominator, num_updates=start)
    got = [config.decay(t) for t in range(1, 7)]
    np.testing.assert_allclose(got, _allennlp_decays(0.9, numerator, denominator, start), 1e-15)
    # and as the compat class applies them
    x = np.zeros(1)
    seed = allennlp.ExponentialMovingAverage(
        [("x", x)], decay=0.9, numerator=numerator, denominator=denominator
    )
    shadows = []
    for n in range(start, start + 6):
        x[...] = n - start + 1.0
        seed.apply(n)
        shadows.append(float(seed.state_dict()["shadows"]["x"][0]))
    want, s = [], 0.0
    for t, d in enumerate(got, 1):
        s = s + (1 - d) * (t - s)
        want.append(s)
    np.testing.assert_allclose(shadows, want, rtol=1e-14)


def test_allennlp_preset_numerator_above_denominator_is_the_plain_decay_from_zero() -> None:
    config = presets.allennlp(0.9, 2.0, 0.5, num_updates=0)
    assert [config.decay(t) for t in range(1, 4)] == [0.9, 0.9, 0.9]


def test_allennlp_preset_shift_that_num_updates_holds_is_unchanged() -> None:
    """Settings that worked keep their schedule (and so their saved config text)."""
    config = presets.allennlp(0.9999, num_updates=0)
    assert type(config.schedule).__name__ == "NumUpdates"
    assert config.schedule.numerator == 0.0 and config.schedule.denominator == 9.0


@pytest.mark.parametrize("denominator", [0.5, 5.0])
def test_allennlp_preset_refuses_a_counter_whose_first_decay_is_negative(
    denominator: float,
) -> None:
    """``numerator + n < 0`` at the first count is a negative decay, which every update would
    refuse; the preset refuses it when built, as ``compat.allennlp`` refuses ``apply(n)``."""
    with pytest.raises(ValueError, match=r"num_updates must be >= -numerator = 0.4 for a first"):
        presets.allennlp(0.9, -0.4, denominator, num_updates=0)


def test_a_parameter_resized_in_place_is_a_value_error_before_any_write() -> None:
    """``p.data = torch.zeros(3)`` after building: AllenNLP's ``assign_average_value`` and
    Paddle's ``apply`` raised torch's raw size mismatch; now a ValueError naming the tensor,
    with every parameter as it was."""
    from ema_core.compat import paddle

    model = torch.nn.Linear(2, 2)
    seed = allennlp.ExponentialMovingAverage(model.named_parameters(), decay=0.5)
    pp = paddle.ExponentialMovingAverage(model.named_parameters(), decay=0.5)
    seed.apply()
    pp.update()
    model.bias.data = torch.zeros(3)
    weight = model.weight.detach().clone()
    with pytest.raises(ValueError, match=r"'bias' has shape \(2,\) but the values to write"):
        seed.assign_average_value()
    match = r"'bias' has shape \(3,\) but the values to write"
    with pytest.raises(ValueError, match=match), pp.apply():
        pass
    assert torch.equal(model.weight, weight) and torch.equal(model.bias, torch.zeros(3))


def test_allennlp_refuses_parameters_of_two_frameworks_when_built() -> None:
    """They were accepted, then every ``apply`` failed naming an internal ``shadow['b']``;
    Paddle's class refused them when built, and now AllenNLP's does too."""
    with pytest.raises(TypeError, match=r"parameters\['b'\] \(Tensor\) is an array of"):
        allennlp.ExponentialMovingAverage([("a", np.zeros(2)), ("b", torch.zeros(2))])


def test_mmedit_device_it_cannot_use_is_a_value_error_naming_it() -> None:
    """``device="cuda"`` without CUDA raised torch's raw ``AssertionError``; it is checked as
    ``EMA(device=...)`` checks it (CPU machines: no CUDA device; the meta device either way)."""
    devices = ["meta"] if torch.cuda.is_available() else ["meta", "cuda"]
    for device in devices:
        with pytest.raises(ValueError, match=f"device={device!r}"):
            MMEditEMA(torch.nn.Linear(2, 2), device=device)
    assert MMEditEMA(torch.nn.Linear(2, 2), device="cpu").module.weight.device.type == "cpu"


def test_tf_one_jax_array_under_two_names_is_two_variables() -> None:
    """JAX arrays are immutable: one object under two names is two variables that hold the
    same values now (two zero-initialised biases), not tied weights; each keeps its own
    average as later steps give them different values."""
    jnp = pytest.importorskip("jax.numpy")
    z = jnp.zeros(3)
    average = tensorflow.ExponentialMovingAverage(0.5)
    average.apply({"b1": z, "b2": z})
    average.apply({"b1": jnp.ones(3), "b2": jnp.full(3, 2.0)})
    np.testing.assert_array_equal(np.asarray(average.average("b1")), np.full(3, 0.5))
    np.testing.assert_array_equal(np.asarray(average.average("b2")), np.full(3, 1.0))
