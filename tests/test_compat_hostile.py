"""Hostile review of the drop-in classes: inputs a user of the seed library sends that broke
them. MMEditing: a subclass's ``avg_func``, ``momentum`` / ``interval`` set after construction,
tied weights with ``update_buffers=True`` (against mmengine where it is installed). TensorFlow:
a named variable re-applied with another dtype or array type, ``variables_to_restore`` given the
variables themselves or named ones not yet averaged."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from ema_core.compat import allennlp, tensorflow
from tests.peers import require

torch = pytest.importorskip("torch")
mmedit = pytest.importorskip("ema_core.compat.mmedit")


def _step(model, amount=1.0):
    with torch.no_grad():
        for param in model.parameters():
            param.add_(amount)


# --- MMEditing ------------------------------------------------------------------------------


class _CopyingEMA(mmedit.ExponentialMovingAverage):
    """A subclass with its own ``avg_func`` (as mmengine's ``MomentumAnnealingEMA`` has)."""

    def avg_func(self, averaged_param, source_param, steps):
        self.seen.append(int(steps))
        averaged_param.copy_(source_param)


def test_mmedit_update_parameters_calls_a_subclass_avg_func():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = _CopyingEMA(model, momentum=0.1, interval=2)
    ema.seen = []
    for _ in range(5):
        _step(model)
        ema.update_parameters(model)  # was blended by the base formula, avg_func never called
    assert ema.seen == [2, 2, 4, 4]  # weight and bias, at steps 2 and 4 (steps % interval == 0)
    assert torch.equal(ema.module.weight, model.weight)  # the last call (steps 4) copied


@pytest.mark.parametrize("attribute", ["momentum", "interval"])
def test_mmedit_momentum_and_interval_set_later_take_effect(attribute):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    interval = 1 if attribute == "momentum" else 3
    ema = mmedit.ExponentialMovingAverage(model, momentum=0.1, interval=interval)
    setattr(ema, attribute, 0.5 if attribute == "momentum" else 1)
    start = model.weight.detach().clone()
    ema.update_parameters(model)  # copies
    _step(model)
    ema.update_parameters(model)  # was: momentum 0.1 / skipped by the interval of 3
    want = start + (0.5 if attribute == "momentum" else 0.1)
    assert torch.allclose(ema.module.weight, want, rtol=0, atol=1e-6)


def test_mmedit_attributes_are_checked_when_set():
    ema = mmedit.ExponentialMovingAverage(torch.nn.Linear(2, 1), momentum=0.1)
    with pytest.raises(ValueError, match="momentum"):
        ema.momentum = 1.0
    with pytest.raises(TypeError, match="interval"):
        ema.interval = 1.5
    assert ema.momentum == 0.1 and ema.interval == 1


class _Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(3, 3, bias=False)
        self.decoder = torch.nn.Linear(3, 3, bias=False)
        self.decoder.weight = self.encoder.weight
        self.register_buffer("scale", torch.ones(3))


@pytest.mark.parametrize("update_buffers", [False, True])
def test_mmedit_tied_weights_blend_once(update_buffers):
    torch.manual_seed(0)
    model = _Tied()
    ema = mmedit.ExponentialMovingAverage(model, momentum=0.25, update_buffers=update_buffers)
    start = model.encoder.weight.detach().clone()
    ema.update_parameters(model)
    _step(model)
    ema.update_parameters(model)  # was a ValueError (shared memory) with update_buffers=True
    averaged = ema.module.encoder.weight
    assert averaged is ema.module.decoder.weight
    assert torch.allclose(averaged, start + 0.25, rtol=0, atol=1e-6)
    assert int(ema.steps) == 2


@pytest.mark.slow  # the real mmengine
def test_mmedit_subclass_and_attributes_match_mmengine():
    averaged_model = require("mmengine.model.averaged_model")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ours = mmedit.ExponentialMovingAverage(model, 0.1, interval=2, update_buffers=True)
    peer = averaged_model.ExponentialMovingAverage(
        copy.deepcopy(model), 0.1, interval=2, update_buffers=True
    )
    for t in range(9):
        if t == 4:
            ours.momentum = peer.momentum = 0.3
            ours.interval = peer.interval = 1
        _step(model, 0.1 * (t + 1))
        model(torch.randn(6, 4))
        ours.update_parameters(model)
        peer.update_parameters(model)
    theirs = peer.module.state_dict()
    for key, value in ours.module.state_dict().items():
        assert torch.allclose(value, theirs[key], rtol=1e-6, atol=0), key


# --- TensorFlow -----------------------------------------------------------------------------


def test_tensorflow_reapply_with_another_dtype_or_array_type_raises():
    ema = tensorflow.ExponentialMovingAverage(0.5)
    w = np.ones(2)
    ema.apply([("w", w)])
    with pytest.raises(TypeError, match=r"'w'.*float32.*float64"):
        ema.apply([("w", np.zeros(2, dtype=np.float32))])  # was kept a float64 shadow silently
    with pytest.raises(TypeError, match=r"'w'.*Tensor.*ndarray"):
        ema.apply([("new", np.ones(2)), ("w", torch.zeros(2, dtype=torch.float64))])
    np.testing.assert_array_equal(ema.average("w"), np.ones(2), strict=True)
    assert ema.average("new") is None
    assert ema.variables_to_restore() == {"w/ExponentialMovingAverage": w}


def test_tensorflow_variables_to_restore_takes_the_variables_themselves():
    kernel, bias = np.zeros(2, dtype=np.float32), np.zeros(1, dtype=np.float32)
    ema = tensorflow.ExponentialMovingAverage(0.9, name="EMA")
    ema.apply([("dense/kernel", kernel), ("dense/bias", bias)])
    # TF's usage: the variable objects; they were ignored (every name mapped to itself)
    assert ema.variables_to_restore([kernel]) == {"dense/kernel/EMA": kernel, "dense/bias": bias}
    other = np.zeros(3, dtype=np.float32)
    # a named variable not averaged yet still gets its average name (it was dropped)
    assert ema.variables_to_restore([("other", other)]) == {
        "other/EMA": other,
        "dense/kernel": kernel,
        "dense/bias": bias,
    }
    with pytest.raises(ValueError, match=r"moving_avg_variables\[0\].*name"):
        ema.variables_to_restore([other])  # unnamed and not averaged under a name
    ema.apply([other])  # averaged unnamed first, then under a name: the name is found
    ema.apply([("other", other)])
    assert ema.variables_to_restore([other])["other/EMA"] is other


# --- AllenNLP -------------------------------------------------------------------------------


def test_allennlp_numerator_above_the_denominator_gives_the_plain_decay():
    w = np.ones(2)
    ema = allennlp.ExponentialMovingAverage([("w", w)], decay=0.75, numerator=20.0)  # refused
    w += 4.0
    ema.apply(num_updates=1)  # min(0.75, 21 / 11) = 0.75, as AllenNLP computes it
    np.testing.assert_array_equal(ema.state_dict()["shadows"]["w"], np.full(2, 2.0), strict=True)
    with pytest.raises(ValueError, match="denominator"):
        allennlp.ExponentialMovingAverage([("w", w)], numerator=20.0, denominator=0.0)


def test_allennlp_count_below_minus_numerator_names_num_updates():
    w = np.ones(2)
    ema = allennlp.ExponentialMovingAverage([("w", w)], decay=0.9, numerator=-5.0)
    w += 1.0
    with pytest.raises(ValueError, match=r"num_updates must be >= -numerator = 5\.0.*got 2"):
        ema.apply(num_updates=2)  # the decay -0.25: named "the decay at step 2" only
    np.testing.assert_array_equal(ema.state_dict()["shadows"]["w"], np.ones(2), strict=True)
    ema.apply(num_updates=5)  # the decay 0: the shadow takes the parameter
    np.testing.assert_array_equal(ema.state_dict()["shadows"]["w"], w, strict=True)
