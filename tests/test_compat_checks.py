"""Issue 13, item 2.13 in the drop-in classes: loads and updates that are checked in full
before the first write, shape mismatches that raise instead of broadcasting, and arguments
that raise TypeError/ValueError naming the argument (the presets: test_hardening_presets)."""

from __future__ import annotations

import numpy as np
import pytest

from ema_core.compat import allennlp, paddle, tensorflow


def _assert_same(arrays, before):
    assert set(arrays) == set(before)
    for key, value in arrays.items():
        np.testing.assert_array_equal(np.asarray(value), before[key], strict=True)


# --- AllenNLP -------------------------------------------------------------------------------


def _allennlp():
    params = {"a": np.ones(2), "b": np.full(3, 2.0)}
    ema = allennlp.ExponentialMovingAverage(params, decay=0.5)
    params["a"] += 4.0
    ema.apply()
    return ema, params


@pytest.mark.parametrize(
    ("bad_b", "error"),
    [
        (np.zeros(3, dtype=np.float32), TypeError),  # was cast silently
        (np.zeros(3, dtype=np.complex128), TypeError),  # was written after "a"
        (np.zeros(3, dtype=">f8"), TypeError),  # big-endian
        (np.zeros(4), ValueError),
    ],
)
def test_allennlp_load_checks_every_entry_before_writing(bad_b, error):
    ema, _ = _allennlp()
    before, state = ema.state_dict(), ema.state_dict()
    state["shadows"]["a"][...] = 7.0  # a good entry ahead of the bad one
    state["shadows"]["b"] = bad_b
    with pytest.raises(error, match=r"state_dict\['shadows'\]\['b'\]"):
        ema.load_state_dict(state)
    for key in ("shadows", "backups"):
        _assert_same(ema.state_dict()[key], before[key])


def test_allennlp_load_refuses_other_array_types_and_meta_tensors():
    torch = pytest.importorskip("torch")
    ema, _ = _allennlp()
    state = ema.state_dict()
    state["shadows"]["a"][...] = 7.0
    state["shadows"]["b"] = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(TypeError, match="Tensor"):
        ema.load_state_dict(state)
    assert ema.state_dict()["shadows"]["a"][0] == 3.0
    model = torch.nn.Linear(2, 1)
    ema = allennlp.ExponentialMovingAverage(model.named_parameters(), decay=0.5)
    state = ema.state_dict()
    state["shadows"]["weight"] = state["shadows"]["weight"] + 1.0
    state["shadows"]["bias"] = torch.empty(1, device="meta")
    with pytest.raises(ValueError, match="meta"):
        ema.load_state_dict(state)
    assert torch.equal(ema.state_dict()["shadows"]["weight"], model.weight.detach())
    with pytest.raises(TypeError, match="mapping"):
        ema.load_state_dict([("shadows", {}), ("backups", {})])


def test_allennlp_apply_keeps_the_parameters_on_a_bad_count():
    ema, params = _allennlp()
    before = ema.state_dict()["shadows"]  # copies
    with pytest.raises(ValueError, match="num_updates"):
        ema.apply(num_updates=-1, parameters={"a": np.zeros(2), "b": np.zeros(3)})
    assert ema.parameters["a"] is params["a"]  # was replaced before the count was checked
    with pytest.raises(TypeError, match=r"parameters\['b'\]"):
        ema.apply(parameters={"a": np.zeros(2), "b": np.zeros(3, dtype=np.float32)})
    assert ema.parameters["b"] is params["b"]
    _assert_same(ema.state_dict()["shadows"], before)


# --- Paddle and TensorFlow ------------------------------------------------------------------


def test_paddle_update_keeps_the_parameters_on_a_bad_counter():
    w = np.ones(2, dtype=np.float32)
    ema = paddle.ExponentialMovingAverage([("w", w)], thres_steps=lambda: -1)
    with pytest.raises(ValueError, match="thres_steps"):
        ema.update(parameters=[("w", np.zeros(2, dtype=np.float32))])
    assert ema.parameters["w"] is w
    with pytest.raises(TypeError, match="name"):
        paddle.ExponentialMovingAverage([("w", w)], name=3)
    with pytest.raises(TypeError, match="need_restore"), ema.apply(need_restore="no"):
        pass


def test_compat_counters_refuse_values_past_2_53():
    w = np.ones(2)
    with pytest.raises(ValueError, match="num_updates"):  # was an OverflowError
        tensorflow.ExponentialMovingAverage(0.9, num_updates=10**400)
    with pytest.raises(ValueError, match="thres_steps"):
        paddle.ExponentialMovingAverage([w], thres_steps=lambda: 10**400).update()
    ema = allennlp.ExponentialMovingAverage({"w": w})
    with pytest.raises(ValueError, match="num_updates"):
        ema.apply(10**400)
    np.testing.assert_array_equal(ema.state_dict()["shadows"]["w"], np.ones(2), strict=True)


def test_tensorflow_apply_keeps_no_new_shadow_when_the_update_fails():
    torch = pytest.importorskip("torch")
    ema, w = tensorflow.ExponentialMovingAverage(0.5), np.ones(2)
    ema.apply([("w", w)])
    with pytest.raises(TypeError):
        ema.apply([("new", np.ones(2)), ("w", torch.ones(2, dtype=torch.float64))])
    assert ema.average("new") is None  # was created before the update raised
    (restore,) = ema.variables_to_restore().items()
    assert restore[0] == "w/ExponentialMovingAverage" and restore[1] is w
    np.testing.assert_array_equal(ema.average("w"), np.ones(2), strict=True)


def test_tensorflow_apply_refuses_repeats_unnamed_pairs_and_non_lists():
    ema = tensorflow.ExponentialMovingAverage(0.5)
    a, b = np.ones(2), np.zeros(2)
    with pytest.raises(ValueError, match="'w'"):
        ema.apply([("w", a), ("w", b)])
    with pytest.raises(ValueError, match="same array"):
        ema.apply([a, a])
    with pytest.raises(TypeError, match="str name"):
        ema.apply([(a, b)])  # a was taken for a name and dropped
    with pytest.raises(TypeError, match="var_list"):
        ema.apply(5)
    with pytest.raises(ValueError, match="no variables"):
        ema.apply([])
    assert ema.average(a) is None and ema.average(b) is None and ema.average("w") is None
    assert ema.variables_to_restore([]) == {}
    with pytest.raises(TypeError, match="name"):
        tensorflow.ExponentialMovingAverage(0.5, name=3)
    with pytest.raises(TypeError, match="zero_debias"):
        tensorflow.ExponentialMovingAverage(0.9, zero_debias="false")


# --- MMEditing ------------------------------------------------------------------------------


def _mmedit_pair():
    torch = pytest.importorskip("torch")
    mmedit = pytest.importorskip("ema_core.compat.mmedit")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.BatchNorm1d(1))
    return torch, mmedit.ExponentialMovingAverage(model, 0.5), model


def _state(ema):
    return {k: v.detach().clone() for k, v in ema.state_dict().items()}


def _assert_state(torch, ema, before):
    for key, value in ema.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("steps", [0, 3])
def test_mmedit_shape_mismatch_raises_before_writing(steps):
    torch, ema, _ = _mmedit_pair()
    ema.steps.fill_(steps)
    before = _state(ema)
    other = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.BatchNorm1d(1))
    with pytest.raises(ValueError, match=r"'0\.weight'.*\(1, 1\).*\(1, 4\)"):
        ema.update_parameters(other)  # step 0 broadcast (1, 1) into (1, 4)
    _assert_state(torch, ema, before)


def test_mmedit_buffers_are_checked_with_the_parameters():
    torch, ema, model = _mmedit_pair()
    before = _state(ema)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].running_mean = torch.zeros(())  # was broadcast after the parameters were written
    with pytest.raises(ValueError, match="running_mean"):
        ema.update_parameters(model)
    model[1].running_mean = torch.zeros(1)
    model[1].num_batches_tracked = torch.tensor(0.5)  # was truncated into the int64 buffer
    with pytest.raises(TypeError, match="num_batches_tracked"):
        ema.sync_buffers(model)
    with pytest.raises(TypeError, match="num_batches_tracked"):
        ema.sync_parameters(model)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        ema.update_parameters(np.zeros(2))
    _assert_state(torch, ema, before)


def test_mmedit_load_state_dict_checks_every_entry_first():
    torch, ema, _ = _mmedit_pair()
    before, state = _state(ema), _state(ema)
    state["module.0.weight"] += 1.0
    state["module.0.bias"] = torch.zeros(2)  # torch loads the weight, then raises
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"module\.0\.bias"):
            ema.load_state_dict(state, strict=strict)
    state["module.0.bias"] = before["module.0.bias"]
    state["steps"] = torch.tensor(-1)
    with pytest.raises(ValueError, match="steps"):
        ema.load_state_dict(state)
    state["steps"] = torch.tensor(2.0)
    with pytest.raises(TypeError, match="steps"):
        ema.load_state_dict(state)
    _assert_state(torch, ema, before)
    state["steps"] = torch.tensor(2)
    ema.load_state_dict(state)
    assert int(ema.steps) == 2 and torch.equal(ema.module[0].weight, state["module.0.weight"])


def test_mmedit_constructor_arguments():
    _, ema, model = _mmedit_pair()
    with pytest.raises(ValueError, match="device"):
        type(ema)(model, device="no-such-device")
    with pytest.raises(TypeError, match="device"):
        type(ema)(model, device=1.5)
    with pytest.raises(TypeError, match="update_buffers"):
        type(ema)(model, update_buffers="no")


# --- bool flags and other preset arguments --------------------------------------------------
