"""Fixes to the drop-in classes found by a bug hunt: meta parameters refused when a class is
built (AllenNLP, Paddle, MMEditing), AllenNLP's pending backups kept in its state dict, the
TensorFlow and Paddle errors naming the argument as it was given, and read-only numpy
parameters refused before any write."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ema_core.compat import allennlp, paddle, tensorflow

# --- meta parameters, refused when the class is built ----------------------------------------


def _meta_linear() -> Any:
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        return torch.nn.Linear(2, 2)


def test_allennlp_refuses_a_meta_parameter_when_built() -> None:
    model = _meta_linear()
    with pytest.raises(ValueError, match=r"parameters\['weight'\] is on the meta device.*to_empty"):
        allennlp.ExponentialMovingAverage(model.named_parameters(), decay=0.5)


def test_paddle_refuses_a_meta_parameter_when_built() -> None:
    model = _meta_linear()
    with pytest.raises(ValueError, match=r"parameters\['weight'\] is on the meta device.*to_empty"):
        paddle.ExponentialMovingAverage(model, decay=0.5)


def test_mmedit_takes_a_meta_model_materialized_with_its_holder_but_updates_no_meta() -> None:
    """mmagic builds its ``generator_ema`` inside the model, which may be built on the meta
    device and materialized whole (``to_empty``, then a checkpoint): the EMA's own copy is
    materialized with it. An update while either side is still meta is refused (it did
    nothing, without a word)."""
    torch = pytest.importorskip("torch")
    from ema_core.compat import mmedit

    with torch.device("meta"):
        holder = torch.nn.Module()
        holder.net = torch.nn.Linear(2, 2)
        holder.ema = mmedit.ExponentialMovingAverage(holder.net, momentum=0.5)
    with pytest.raises(ValueError, match=r"the EMA's module\['weight'\] is on the meta device"):
        holder.ema.update_parameters(holder.net)
    holder.to_empty(device="cpu")
    with torch.no_grad():
        holder.net.weight.fill_(2.0)
        holder.net.bias.fill_(1.0)
        holder.ema.steps.zero_()
    holder.ema.update_parameters(holder.net)  # the first call copies
    with torch.no_grad():
        holder.net.weight.fill_(4.0)
    holder.ema.update_parameters(holder.net)
    assert torch.equal(holder.ema.module.weight, torch.full((2, 2), 3.0))
    with pytest.raises(ValueError, match=r"model\['weight'\] is on the meta device"):
        holder.ema.update_parameters(_meta_linear())


def test_a_materialized_model_still_gets_its_average() -> None:
    torch = pytest.importorskip("torch")
    model = _meta_linear().to_empty(device="cpu")
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(2.0)
    ema = allennlp.ExponentialMovingAverage(model.named_parameters(), decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.apply()
    ema.assign_average_value()
    assert torch.equal(model.weight.detach(), torch.full((2, 2), 2.0))


# --- AllenNLP: the pending backups travel with the state dict ---------------------------------


def _allennlp_in_evaluation() -> tuple[np.ndarray, allennlp.ExponentialMovingAverage]:
    """A parameter trained to 4 from 0, averaged with decay 0.5 (average 2), averages assigned."""
    w = np.zeros(3)
    ema = allennlp.ExponentialMovingAverage([("w", w)], decay=0.5)
    w += 4.0
    ema.apply()
    ema.assign_average_value()
    assert w.tolist() == [2.0, 2.0, 2.0]
    return w, ema


def test_allennlp_state_saved_before_restore_is_restored_after_loading() -> None:
    w, ema = _allennlp_in_evaluation()
    state = ema.state_dict()
    assert state["pending"] is True and state["stale"] is False
    w2 = w.copy()  # the model checkpoint holds the averages, as AllenNLP's trainer saves it
    other = allennlp.ExponentialMovingAverage([("w", w2)], decay=0.5)
    other.load_state_dict(state)
    assert other.restore()["w"] is w2
    assert w2.tolist() == [4.0, 4.0, 4.0]
    with pytest.raises(RuntimeError, match="restore"):
        other.restore()


def test_allennlp_assign_after_loading_a_pending_state_keeps_its_backup() -> None:
    w, ema = _allennlp_in_evaluation()
    w2 = w.copy()
    other = allennlp.ExponentialMovingAverage([("w", w2)], decay=0.5)
    other.load_state_dict(ema.state_dict())
    other.assign_average_value()  # the params hold averages: the loaded backup stays
    other.restore()
    assert w2.tolist() == [4.0, 4.0, 4.0]


def test_allennlp_stale_state_restores_and_backs_up_afresh() -> None:
    w, ema = _allennlp_in_evaluation()
    w[...] = 6.0  # trained on after a forgotten restore()
    ema.apply()
    state = ema.state_dict()
    assert state["pending"] is True and state["stale"] is True
    w2 = w.copy()
    other = allennlp.ExponentialMovingAverage([("w", w2)], decay=0.5)
    other.load_state_dict(state)
    other.assign_average_value()  # stale: backs up the trained 6.0
    other.restore()
    assert w2.tolist() == [6.0, 6.0, 6.0]
    other.load_state_dict(state)
    other.restore()  # the loaded backup itself, as AllenNLP restores what it loaded
    assert w2.tolist() == [4.0, 4.0, 4.0]


def test_allennlp_state_saved_with_nothing_pending_keeps_restore_refused() -> None:
    w = np.zeros(2)
    ema = allennlp.ExponentialMovingAverage([("w", w)], decay=0.5)
    other = allennlp.ExponentialMovingAverage([("w", w.copy())], decay=0.5)
    other.load_state_dict(ema.state_dict())
    with pytest.raises(RuntimeError, match="assign_average_value"):
        other.restore()


def test_allennlp_state_from_an_older_version_restores_its_backups() -> None:
    w, ema = _allennlp_in_evaluation()
    state = {k: v for k, v in ema.state_dict().items() if k in ("shadows", "backups")}
    w2 = w.copy()
    other = allennlp.ExponentialMovingAverage([("w", w2)], decay=0.5)
    other.load_state_dict(state)
    other.restore()
    assert w2.tolist() == [4.0, 4.0, 4.0]


@pytest.mark.parametrize("key", ["pending", "stale"])
def test_allennlp_load_refuses_a_flag_that_is_not_a_bool(key: str) -> None:
    _, ema = _allennlp_in_evaluation()
    state = ema.state_dict()
    state[key] = 1
    state["shadows"]["w"][...] = 9.0
    fresh = allennlp.ExponentialMovingAverage([("w", np.zeros(3))], decay=0.5)
    with pytest.raises(TypeError, match=rf"state_dict\['{key}'\] must be a bool, got 1"):
        fresh.load_state_dict(state)
    assert fresh.state_dict()["shadows"]["w"].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(RuntimeError):
        fresh.restore()


# --- errors name the argument as it was given -------------------------------------------------


def test_tf_names_an_unnamed_variable_by_its_position() -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(2, 2)
    ema = tensorflow.ExponentialMovingAverage(0.9)
    ema.apply(list(model.parameters()))
    before = ema.average(model.weight).clone()
    model.double()
    with pytest.raises(TypeError, match=r"^var_list\[0\] has dtype torch.float64"):
        ema.apply(list(model.parameters()))
    assert torch.equal(ema.average(model.weight), before)


def test_tf_names_a_meta_variable_by_its_position() -> None:
    torch = pytest.importorskip("torch")
    ema = tensorflow.ExponentialMovingAverage(0.5)
    with pytest.raises(ValueError, match=r"^var_list\[1\] is on the meta device"):
        ema.apply([torch.ones(2), torch.ones(2, device="meta")])


def test_tf_names_mixed_frameworks_and_sparse_tensors_as_var_list() -> None:
    torch = pytest.importorskip("torch")
    ema = tensorflow.ExponentialMovingAverage(0.5)
    match = r"^var_list\[1\] \(Tensor\) .* but var_list\[0\] \(ndarray\)"
    with pytest.raises(TypeError, match=match):
        ema.apply([np.ones(2, np.float32), torch.ones(2)])
    with pytest.raises(TypeError, match=r"^var_list\[0\] is a torch.sparse_coo tensor"):
        ema.apply([torch.eye(2).to_sparse()])
    with pytest.raises(TypeError, match=r"^var_list\['s'\] is a torch.sparse_coo tensor"):
        ema.apply({"s": torch.eye(2).to_sparse()})


def test_tf_variables_to_restore_names_its_own_argument() -> None:
    ema = tensorflow.ExponentialMovingAverage(0.5)
    ema.apply([("w", np.ones(2, np.float32))])
    with pytest.raises(TypeError, match=r"^moving_avg_variables\[0\] must be an array, got str"):
        ema.variables_to_restore(["w"])
    with pytest.raises(TypeError, match=r"^moving_avg_variables must be arrays"):
        ema.variables_to_restore(5)


def test_paddle_names_its_parameters_argument_when_built() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"^parameters\['b'\] \(Tensor\)"):
        paddle.ExponentialMovingAverage({"w": np.ones(2), "b": torch.ones(2)})
    with pytest.raises(TypeError, match=r"^parameters\['w'\] is a torch.sparse_coo tensor"):
        paddle.ExponentialMovingAverage({"w": torch.eye(2).to_sparse()})


# --- read-only numpy parameters: refused before any write -------------------------------------


def _read_only(value: float) -> np.ndarray:
    w = np.full(3, value)
    w.flags.writeable = False
    return w


def test_allennlp_assign_refuses_a_read_only_parameter_before_writing() -> None:
    a, w = np.zeros(2), _read_only(0.0)
    ema = allennlp.ExponentialMovingAverage({"a": a, "w": w}, decay=0.5)
    ema.apply(parameters={"a": np.full(2, 4.0), "w": _read_only(4.0)})
    a_now = ema.parameters["a"]
    with pytest.raises(ValueError, match=r"parameters\['w'\] is a read-only ndarray"):
        ema.assign_average_value()
    assert a_now.tolist() == [4.0, 4.0]  # not written with its average, 2.0
    assert ema.state_dict()["pending"] is False
    assert ema.state_dict()["backups"]["a"].tolist() == [0.0, 0.0]
    with pytest.raises(RuntimeError):
        ema.restore()


def test_allennlp_restore_refuses_a_parameter_made_read_only_and_stays_pending() -> None:
    w = np.zeros(3)
    ema = allennlp.ExponentialMovingAverage({"w": w}, decay=0.5)
    w += 4.0
    ema.apply()
    ema.assign_average_value()
    w.flags.writeable = False
    with pytest.raises(ValueError, match=r"parameters\['w'\] is a read-only ndarray"):
        ema.restore()
    w.flags.writeable = True
    assert ema.restore()["w"] is w
    assert w.tolist() == [4.0, 4.0, 4.0]


def test_paddle_apply_refuses_a_read_only_parameter_before_writing() -> None:
    a, w = np.full(2, 4.0), _read_only(4.0)
    ema = paddle.ExponentialMovingAverage({"a": a, "w": w}, decay=0.5)
    ema.update()
    a[...] = 8.0
    refused = pytest.raises(ValueError, match=r"parameters\['w'\] is a read-only ndarray")
    with refused, ema.apply():
        pass
    assert a.tolist() == [8.0, 8.0]  # not the average, 4.0
    with pytest.raises(RuntimeError):
        ema.restore()  # nothing left pending


def test_jax_parameters_are_still_rebound() -> None:
    jnp = pytest.importorskip("jax.numpy")
    ema = allennlp.ExponentialMovingAverage({"w": jnp.zeros(2)}, decay=0.5)
    ema.apply(parameters={"w": jnp.full(2, 4.0)})
    assert ema.assign_average_value()["w"].tolist() == [2.0, 2.0]
    assert ema.restore()["w"].tolist() == [4.0, 4.0]
    p = paddle.ExponentialMovingAverage({"w": jnp.full(2, 4.0)}, decay=0.5)
    p.update()
    with p.apply() as averaged:
        assert averaged["w"].tolist() == [4.0, 4.0]


@pytest.mark.parametrize("cls", ["allennlp", "paddle"])
def test_a_numpy_scalar_parameter_is_rebound_not_refused_as_read_only(cls: str) -> None:
    """A numpy scalar cannot be written in place, as a JAX array cannot: its average comes
    back rebound (it was refused as a read-only array)."""
    if cls == "allennlp":
        ema = allennlp.ExponentialMovingAverage({"s": np.float32(2.0)}, decay=0.5)
        ema.apply(parameters={"s": np.float32(4.0)})
        averaged = ema.assign_average_value()
    else:
        ema = paddle.ExponentialMovingAverage({"s": np.float32(2.0)}, decay=0.5)
        ema.update(parameters={"s": np.float32(4.0)})
        with ema.apply() as averaged:
            pass
    want = 3.0 if cls == "allennlp" else 4.0  # Paddle: zero-started, read bias-corrected
    assert isinstance(averaged["s"], np.float32) and float(averaged["s"]) == want
