"""AllenNLP drop-in: step-by-step trajectory against its documented formula on every backend,
assign/restore, state_dict, torch modules, and bad input that changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from ema_core.compat.allennlp import ExponentialMovingAverage
from tests.conftest import Name, assert_close, to_numpy


def _values(rng, steps):
    return [
        {"a": rng.standard_normal((3, 2)).astype(np.float32), "b": rng.standard_normal(4)}
        for _ in range(steps + 1)
    ]


def test_trajectory_matches_the_documented_formula(backend):
    rng = np.random.default_rng(0)
    steps = _values(rng, 40)
    params = backend.tree(steps[0])
    ema = ExponentialMovingAverage(list(params.items()), decay=0.99, numerator=2.0)
    ref = {k: v.astype(np.float64) for k, v in steps[0].items()}
    for t, values in enumerate(steps[1:], start=1):
        num_updates = None if t % 3 == 0 else t
        new = backend.tree(values)
        if backend.name is Name.JAX:
            ema.apply(num_updates, parameters=new)
        else:
            for key in params:
                params[key][...] = new[key]
            ema.apply(num_updates)
        d = 0.99 if num_updates is None else min(0.99, (2.0 + t) / (10.0 + t))
        for key, value in ref.items():
            ref[key] = d * value + (1 - d) * values[key]
    shadows = ema.state_dict()["shadows"]
    # "b" is float64 (float32 under JAX without x64), "a" float32
    wide = "float32" if backend.name is Name.JAX else "float64"
    assert_close(shadows["a"], ref["a"], "float32", ulps=8, what="a")
    assert_close(shadows["b"], ref["b"], wide, ulps=64, what="b")


def test_assign_and_restore_round_trip_exactly(backend):
    rng = np.random.default_rng(1)
    start = _values(rng, 1)
    params = backend.tree(start[0])
    ema = ExponentialMovingAverage(list(params.items()), decay=0.5)
    moved = backend.tree(start[1])
    ema.apply(parameters=moved)
    live = {k: to_numpy(v) for k, v in ema.parameters.items()}
    averaged = ema.assign_average_value()
    for key in live:
        want = 0.5 * start[0][key] + 0.5 * start[1][key]
        assert_close(averaged[key], want, "float32", what=key)
        if backend.name is not Name.JAX:
            assert averaged[key] is moved[key]  # written in place
    restored = ema.restore()
    for key, value in live.items():
        assert np.array_equal(to_numpy(restored[key]), value)


def test_torch_module_parameters_in_place():
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    ema = ExponentialMovingAverage(model.named_parameters(), decay=0.9)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.apply()
    ema.assign_average_value()
    assert torch.allclose(model.weight, before + 0.1)
    assert model.weight.requires_grad and model.weight.grad is None
    ema.restore()
    assert torch.equal(model.weight, before + 1.0)


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(2)
    steps = _values(rng, 6)
    params = {k: v.copy() for k, v in steps[0].items()}
    one = ExponentialMovingAverage(params.items(), decay=0.8)
    two = ExponentialMovingAverage(params.items(), decay=0.8)
    for t, values in enumerate(steps[1:4], start=1):
        for key, value in params.items():
            value[...] = values[key]
        one.apply(t)
    two.load_state_dict(one.state_dict())
    for t, values in enumerate(steps[4:], start=4):
        for key, value in params.items():
            value[...] = values[key]
        one.apply(t)
        two.apply(t)
    for key in params:
        assert np.array_equal(one.state_dict()["shadows"][key], two.state_dict()["shadows"][key])


def test_bad_input_raises_and_changes_nothing():
    w = np.ones(3)
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage([("w", w)], decay=1.5)
    with pytest.raises(TypeError, match=r"parameters\[0\]"):
        ExponentialMovingAverage([w])
    ema = ExponentialMovingAverage([("w", w)], decay=0.5)
    w += 1.0
    with pytest.raises(ValueError, match="num_updates"):
        ema.apply(num_updates=-1)
    with pytest.raises(ValueError, match="missing"):
        ema.apply(parameters={"v": w})
    with pytest.raises(ValueError, match="state_dict"):
        ema.load_state_dict({"shadows": {}})
    assert np.array_equal(ema.state_dict()["shadows"]["w"], np.ones(3))
