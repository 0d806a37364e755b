"""MMEditing drop-in on a torch module with BatchNorm buffers and interval=3: against the
documented formula, against mmengine itself, and its sync/forward/avg_func methods."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tests.peers import make_model, require, train_steps, ulps

torch = pytest.importorskip("torch")
mmedit = pytest.importorskip("ema_core.compat.mmedit")


@pytest.mark.parametrize("update_buffers", [False, True])
def test_interval_3_against_the_documented_formula(update_buffers):
    model = make_model()
    ema = mmedit.ExponentialMovingAverage(model, 0.1, interval=3, update_buffers=update_buffers)
    ref = {k: v.detach().double().clone() for k, v in model.state_dict().items()}
    for t in train_steps(model, 30):
        ema.update_parameters(model)
        state = model.state_dict()
        for key, value in state.items():
            is_param = key in dict(model.named_parameters())
            averaged = is_param or (update_buffers and value.dtype.is_floating_point)
            if t == 1 or (not averaged and not (update_buffers and not is_param)):
                ref[key] = value.detach().double().clone()  # copies
            elif averaged and (t - 1) % 3 == 0:
                ref[key] = 0.9 * ref[key] + 0.1 * value.double()
        for key, value in ema.module.state_dict().items():
            assert ulps(value.double().numpy(), ref[key].numpy()) <= 4, f"step {t} {key}"
    assert int(ema.steps) == 30


@pytest.mark.slow  # the real mmengine
@pytest.mark.parametrize("update_buffers", [False, True])
def test_matches_mmengine(update_buffers):
    averaged_model = require("mmengine.model.averaged_model")
    model = make_model(seed=3)
    ours = mmedit.ExponentialMovingAverage(model, 0.05, interval=3, update_buffers=update_buffers)
    peer = averaged_model.ExponentialMovingAverage(
        copy.deepcopy(model), 0.05, interval=3, update_buffers=update_buffers
    )
    for t in train_steps(model, 60):
        ours.update_parameters(model)
        peer.update_parameters(model)
        theirs = peer.module.state_dict()
        for key, value in ours.module.state_dict().items():
            if value.dtype.is_floating_point:
                assert ulps(value.numpy(), theirs[key].numpy()) <= 2, f"step {t} {key}"
            else:
                assert torch.equal(value, theirs[key]), f"step {t} {key}"


def test_forward_sync_and_avg_func():
    model = make_model(batchnorm=True)
    ema = mmedit.ExponentialMovingAverage(model, momentum=0.25)
    x = torch.randn(4, 5)
    ema.eval()
    model.eval()
    assert torch.equal(ema(x), model(x))
    for _ in train_steps(model, 2):
        pass
    ema.sync_buffers(model)
    for mine, theirs in zip(ema.module.buffers(), model.buffers(), strict=True):
        assert torch.equal(mine, theirs)
    ema.sync_parameters(model)
    for key, value in model.state_dict().items():
        assert torch.equal(ema.module.state_dict()[key], value)
    avg, src = torch.zeros(3), torch.full((3,), 4.0)
    ema.avg_func(avg, src, 5)
    assert torch.equal(avg, torch.full((3,), 1.0))
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_bad_input_changes_nothing():
    model = make_model()
    with pytest.raises(ValueError, match="momentum"):
        mmedit.ExponentialMovingAverage(model, momentum=1.0)
    with pytest.raises(ValueError, match="interval"):
        mmedit.ExponentialMovingAverage(model, interval=0)
    with pytest.raises(TypeError, match="model"):
        mmedit.ExponentialMovingAverage(np.zeros(2))
    ema = mmedit.ExponentialMovingAverage(model)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with pytest.raises(ValueError, match="does not match"):
        ema.update_parameters(torch.nn.Linear(5, 8))
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, before[key])
    assert int(ema.steps) == 0
