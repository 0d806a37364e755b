"""Hostile probe of the four drop-in classes the way a user porting old code calls them: odd
call orders, counters given as numpy / torch / JAX scalars or as live 0-d arrays, parameters that
require grad or are views into one flat buffer, zero-size and half-precision parameters, JAX's
immutable arrays, pickling and deep copies mid-run, and save / resume bit for bit. Where the
README calls a class equivalent to its preset, the two are compared bit for bit."""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ema_core
from ema_core import presets
from ema_core.compat import allennlp, paddle, tensorflow

torch = pytest.importorskip("torch")
mmedit = pytest.importorskip("ema_core.compat.mmedit")

_RNG = np.random.default_rng(20261203)
STEPS = [(_RNG.standard_normal(5) * 3).astype(np.float32) for _ in range(9)]


def _jnp() -> Any:
    return pytest.importorskip("jax.numpy")


def _counters() -> list[Any]:
    """The same count 3 as each framework's integer scalar."""
    out: list[Any] = [np.int64(3), np.array(3, dtype=np.int32), torch.tensor(3)]
    return [*out, _jnp().asarray(3)]


# ---- AllenNLP --------------------------------------------------------------------------------


def test_allennlp_shadows_of_grad_params_stay_out_of_autograd() -> None:
    """Shadows of parameters that require grad never require grad nor hold a graph, and the
    parameters stay leaves that require grad through assign / restore."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    ema = allennlp.ExponentialMovingAverage(lin.named_parameters(), decay=0.9)
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.apply(num_updates=2)
    shadows = ema.state_dict()["shadows"]
    assert all(not s.requires_grad and s.grad_fn is None for s in ema._shadows.values())
    ema.assign_average_value()
    assert lin.weight.is_leaf and lin.weight.requires_grad
    assert torch.equal(lin.weight, shadows["weight"])
    ema.restore()
    assert lin.weight.is_leaf and lin.weight.requires_grad


def test_allennlp_count_as_any_frameworks_integer_scalar_matches_the_int() -> None:
    """``apply(num_updates=...)`` with a numpy, torch or JAX integer scalar moves the shadows
    exactly as the Python int does."""

    def run(count: Any) -> np.ndarray:
        w = STEPS[0].copy()
        ema = allennlp.ExponentialMovingAverage([("w", w)], decay=0.99)
        w[...] = STEPS[1]
        ema.apply(num_updates=count)
        return ema.state_dict()["shadows"]["w"]

    want = run(3)
    for count in _counters():
        assert np.array_equal(run(count), want), type(count)


def test_allennlp_jax_assign_and_restore_rebind_bit_for_bit() -> None:
    """With JAX, ``assign_average_value()`` returns the averages and ``restore()`` the values of
    the last ``apply(parameters=...)``; ``parameters`` follows each rebinding; numpy arrays
    driven the same way give the same bits."""
    jnp = _jnp()
    ema_j = allennlp.ExponentialMovingAverage({"w": jnp.asarray(STEPS[0])}, decay=0.75)
    w = STEPS[0].copy()
    ema_n = allennlp.ExponentialMovingAverage({"w": w}, decay=0.75)
    for s in STEPS[1:4]:
        ema_j.apply(parameters={"w": jnp.asarray(s)})
        w[...] = s
        ema_n.apply()
    averaged = ema_j.assign_average_value()["w"]
    assert ema_j.parameters["w"] is averaged
    assert np.array_equal(np.asarray(averaged), ema_n.assign_average_value()["w"])
    restored = ema_j.restore()["w"]
    assert ema_j.parameters["w"] is restored
    assert np.array_equal(np.asarray(restored), STEPS[3])
    assert np.array_equal(ema_n.restore()["w"], STEPS[3])


def test_allennlp_pickled_mid_run_continues_bit_for_bit() -> None:
    """A pickled copy made mid-run, fed the same values, ends with the same shadows."""
    w = np.zeros(5, np.float32)
    ema = allennlp.ExponentialMovingAverage({"w": w}, decay=0.7)
    for n, s in enumerate(STEPS[:4]):
        w[...] = s
        ema.apply(num_updates=n)
    twin = pickle.loads(pickle.dumps(ema))
    w2 = twin.parameters["w"]
    for n, s in enumerate(STEPS[4:], 4):
        w[...] = s
        ema.apply(num_updates=n)
        w2[...] = s
        twin.apply(num_updates=n)
    assert np.array_equal(ema.state_dict()["shadows"]["w"], twin.state_dict()["shadows"]["w"])


def test_allennlp_deepcopy_mid_assign_restores_the_copy_only() -> None:
    """``copy.deepcopy((params, ema))`` between ``assign_average_value()`` and ``restore()``:
    the copy's restore gives the copied parameters their trained values and leaves the
    original's parameters (still holding the averages) alone."""
    w = np.zeros(5, np.float32)
    ema = allennlp.ExponentialMovingAverage({"w": w}, decay=0.5)
    w[...] = STEPS[1]
    ema.apply()
    averaged = ema.assign_average_value()["w"].copy()
    w_copy, ema_copy = copy.deepcopy((w, ema))
    ema_copy.restore()
    assert np.array_equal(w_copy, STEPS[1])
    assert np.array_equal(w, averaged)
    ema.restore()
    assert np.array_equal(w, STEPS[1])


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_allennlp_views_into_one_flat_buffer(framework: str) -> None:
    """Parameters that are offset and transposed views into one flat buffer (as flat-parameter
    wrappers make them) average, assign and restore exactly, element by element."""
    mod: Any = np if framework == "numpy" else torch
    flat = mod.arange(24, dtype=mod.float32)
    a, b = flat[2:14].reshape(3, 4), flat[14:].reshape(2, 5).T
    first = {"a": a + 0, "b": b + 0}
    ema = allennlp.ExponentialMovingAverage({"a": a, "b": b}, decay=0.5)
    flat += 8.0
    ema.apply()
    ema.assign_average_value()
    for key, view in (("a", a), ("b", b)):
        assert np.array_equal(np.asarray(view), np.asarray(first[key] + 4.0))
    ema.restore()
    assert np.array_equal(np.asarray(flat[:2]), [8.0, 9.0])  # outside both views
    for key, view in (("a", a), ("b", b)):
        assert np.array_equal(np.asarray(view), np.asarray(first[key] + 8.0))


def test_allennlp_tied_weights_of_a_module_get_one_shadow() -> None:
    """A module whose two layers share a weight (named once by ``named_parameters``) keeps one
    shadow for it, and assign / restore reach both layers through the shared tensor."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=False), torch.nn.Linear(3, 3))
    model[1].weight = model[0].weight
    ema = allennlp.ExponentialMovingAverage(model.named_parameters(), decay=0.5)
    assert sorted(ema.parameters) == ["0.weight", "1.bias"]
    trained = model[0].weight.detach() + 2.0
    with torch.no_grad():
        model[0].weight.add_(2.0)
    ema.apply()
    ema.assign_average_value()
    assert torch.equal(model[1].weight, trained - 1.0)
    ema.restore()
    assert torch.equal(model[1].weight, trained)


# ---- Paddle ----------------------------------------------------------------------------------


def _paddle_trained() -> tuple[np.ndarray, paddle.ExponentialMovingAverage, np.ndarray]:
    """Parameters after two updates, with the averages ``apply()`` writes."""
    w = STEPS[0].copy()
    ema = paddle.ExponentialMovingAverage({"w": w}, decay=0.5)
    ema.update()
    w[...] = STEPS[1]
    ema.update()
    return w, ema, ema.average()["w"]


def test_paddle_nested_apply_left_by_an_exception_restores_once() -> None:
    """An error raised in the inner of two nested ``with apply()`` blocks reaches the caller,
    the outer block puts the trained values back, and nothing stays pending."""
    w, ema, averages = _paddle_trained()
    with pytest.raises(KeyError), ema.apply(), ema.apply() as inner:
        assert np.array_equal(inner["w"], averages)
        raise KeyError("eval failed")
    assert np.array_equal(w, STEPS[1])
    with pytest.raises(RuntimeError, match=r"restore\(\) needs an earlier apply"):
        ema.restore()
    assert np.array_equal(w, STEPS[1])


def test_paddle_jax_apply_yields_the_averages_then_rebinds_the_trained_values() -> None:
    """With JAX parameters the ``with apply()`` block yields the averages (those of a numpy
    run, to the ulp: XLA and numpy may round the bias correction differently) and
    ``parameters`` holds the trained values, bit for bit, after it."""
    jnp = _jnp()
    ema = paddle.ExponentialMovingAverage({"w": jnp.zeros(5)}, decay=0.5)
    w = np.zeros(5, np.float32)
    ema_n = paddle.ExponentialMovingAverage({"w": w}, decay=0.5)
    for s in STEPS[:3]:
        ema.update(parameters={"w": jnp.asarray(s)})
        w[...] = s
        ema_n.update()
    with ema.apply() as averaged:
        assert ema.parameters["w"] is averaged["w"]
        np.testing.assert_array_max_ulp(np.asarray(averaged["w"]), ema_n.average()["w"], 1)
    assert np.array_equal(np.asarray(ema.parameters["w"]), STEPS[2])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_paddle_half_params_keep_a_float32_average_written_in_their_dtype(dtype: str) -> None:
    """fp16 / bf16 torch parameters: the saved average is float32, ``apply()`` writes it
    rounded to the parameter's dtype, and the trained values come back bit for bit."""
    torch_dtype = getattr(torch, dtype)
    w = torch.linspace(0, 1, 5, dtype=torch_dtype)
    ema = paddle.ExponentialMovingAverage([("w", w)], decay=0.9)
    ema.update()
    with torch.no_grad():
        w.add_(1.0)
    trained = w.clone()
    ema.update()
    assert ema.state_dict()["ema"]["w"].dtype == torch.float32
    with ema.apply() as applied:
        assert applied["w"].dtype == torch_dtype
        assert torch.equal(applied["w"], ema.average()["w"].to(torch_dtype))
    assert torch.equal(w, trained)


def test_paddle_live_counter_matches_the_preset_bit_for_bit() -> None:
    """``thres_steps`` as a 0-d numpy array the caller increments in place gives the same
    averages as ``presets.paddle(thres_steps=<first value>)`` through the functional API."""
    counter = np.array(1)
    w = np.zeros(5, np.float32)
    ema = paddle.ExponentialMovingAverage({"w": w}, decay=0.999, thres_steps=counter)
    config = presets.paddle(0.999, thres_steps=1)
    state = ema_core.init({"w": w}, config)
    for s in STEPS:
        w[...] = s
        ema.update()
        counter += 1
        state = ema_core.update(state, {"w": s}, config)
        assert np.array_equal(ema.average()["w"], ema_core.average(state, config)["w"])


def test_paddle_counter_as_any_frameworks_integer_scalar_matches_the_int() -> None:
    """``thres_steps`` given as a numpy, torch or JAX integer scalar is read as the int."""

    def run(count: Any) -> np.ndarray:
        w = STEPS[0].copy()
        ema = paddle.ExponentialMovingAverage({"w": w}, decay=0.99, thres_steps=count)
        ema.update()
        w[...] = STEPS[1]
        ema.update()
        return ema.average()["w"]

    want = run(3)
    for count in _counters():
        assert np.array_equal(run(count), want), type(count)


def test_paddle_state_resumes_bit_for_bit_through_pickle() -> None:
    """A state saved mid-run (pickled) and loaded into a fresh instance continues exactly as
    the run that was never interrupted."""

    def run(split: int) -> np.ndarray:
        w = np.zeros(5, np.float32)
        ema = paddle.ExponentialMovingAverage({"w": w}, decay=0.9, thres_steps=4)
        for i, s in enumerate(STEPS):
            if i == split:
                saved = pickle.loads(pickle.dumps(ema.state_dict()))
                ema = paddle.ExponentialMovingAverage({"w": w}, decay=0.9, thres_steps=4)
                ema.load_state_dict(saved)
            w[...] = s
            ema.update()
        return ema.average()["w"]

    assert np.array_equal(run(4), run(len(STEPS)))


def test_paddle_deepcopy_while_an_apply_is_pending() -> None:
    """A deep copy taken after ``apply(need_restore=False)`` has its own pending backup: its
    ``restore()`` puts the trained values into its own parameters only."""
    w, ema, averages = _paddle_trained()
    with ema.apply(need_restore=False):
        pass
    w_copy, ema_copy = copy.deepcopy((w, ema))
    ema_copy.restore()
    assert np.array_equal(w_copy, STEPS[1])
    assert np.array_equal(w, averages)
    ema.restore()
    assert np.array_equal(w, STEPS[1])


# ---- TensorFlow ------------------------------------------------------------------------------


def test_tf_var_list_growing_between_applies() -> None:
    """A variable first named in a later ``apply`` gets its shadow then, at the counter's value
    then (as a fresh instance at that count), while the earlier ones keep moving."""
    counter = np.array(0)
    x, y = STEPS[0].copy(), STEPS[1].copy()
    ema = tensorflow.ExponentialMovingAverage(0.99, num_updates=counter, zero_debias=True)
    ema.apply([("x", x)])
    counter += 1
    x[...] = STEPS[2]
    ema.apply([("x", x), ("y", y)])
    fresh = tensorflow.ExponentialMovingAverage(0.99, num_updates=1, zero_debias=True)
    fresh.apply([("y", y)])
    assert np.array_equal(ema.average("y"), fresh.average("y"))
    alone = tensorflow.ExponentialMovingAverage(0.99, num_updates=counter, zero_debias=True)
    counter[...] = 0
    alone.apply([("x", STEPS[0].copy())])
    counter += 1
    alone.apply([("x", STEPS[2].copy())])
    assert np.array_equal(ema.average("x"), alone.average("x"))
    assert ema.state_dict()["local_steps"] == {"x": 2, "y": 1}


def test_tf_average_of_a_variable_never_applied() -> None:
    """``average`` of an array or name never applied is None; ``average_name`` of a name works
    before any apply (TF's naming), of an unnamed array it is a ValueError."""
    ema = tensorflow.ExponentialMovingAverage(0.5, name="ema")
    x = STEPS[0].copy()
    ema.apply([("x", x)])
    stranger = STEPS[1].copy()
    assert ema.average(stranger) is None
    assert ema.average("y") is None
    assert ema.average_name("y") == "y/ema"
    assert ema.average_name(x) == "x/ema"
    with pytest.raises(ValueError, match="average_name needs a named variable"):
        ema.average_name(stranger)


def test_tf_variables_to_restore_with_and_without_moving_avg_variables() -> None:
    """Without an argument every named averaged variable maps from its average's name; with
    one, the listed ones do and the other named ones keep their own names (TF's mapping);
    the values are the variables themselves."""
    ema = tensorflow.ExponentialMovingAverage(0.5)
    x, y, z = (s.copy() for s in STEPS[:3])
    ema.apply([("x", x), ("y", y)])
    every = ema.variables_to_restore()
    assert every.keys() == {"x/ExponentialMovingAverage", "y/ExponentialMovingAverage"}
    assert every["x/ExponentialMovingAverage"] is x
    some = ema.variables_to_restore([x])
    assert some.keys() == {"x/ExponentialMovingAverage", "y"}
    assert some["y"] is y
    assert ema.variables_to_restore([]).keys() == {"x", "y"}
    later = ema.variables_to_restore([("z", z)])
    assert later.keys() == {"z/ExponentialMovingAverage", "x", "y"}
    assert later["z/ExponentialMovingAverage"] is z


@pytest.mark.parametrize("zero_debias", [False, True])
@pytest.mark.parametrize("make_counter", [lambda: np.array(1), lambda: torch.tensor(1)])
def test_tf_live_counter_matches_the_preset_bit_for_bit(
    zero_debias: bool, make_counter: Callable[[], Any]
) -> None:
    """``num_updates`` as a 0-d numpy array or torch tensor the caller increments in place gives
    the averages of ``presets.tensorflow(num_updates=<first value>)``, step by step."""
    counter = make_counter()
    ema = tensorflow.ExponentialMovingAverage(0.999, num_updates=counter, zero_debias=zero_debias)
    config = presets.tensorflow(0.999, num_updates=1, zero_debias=zero_debias)
    state = ema_core.init({"w": STEPS[0]}, config)
    for s in STEPS:
        ema.apply([("w", s.copy())])
        counter += 1
        state = ema_core.update(state, {"w": s}, config)
        assert np.array_equal(ema.average("w"), ema_core.average(state, config)["w"])


def test_tf_zero_debias_state_resumes_bit_for_bit() -> None:
    """A ``zero_debias`` state (shadows, biased values, per-variable apply counts) deep-copied
    mid-run and loaded into a fresh instance continues exactly as the uninterrupted run, the
    loaded shadows waiting for the apply that names them."""

    def run(split: int) -> tuple[np.ndarray, np.ndarray]:
        ema = tensorflow.ExponentialMovingAverage(0.9, zero_debias=True)
        for i, s in enumerate(STEPS):
            if i == split:
                saved = copy.deepcopy(ema.state_dict())
                ema = tensorflow.ExponentialMovingAverage(0.9, zero_debias=True)
                ema.load_state_dict(saved)
                assert ema.variables_to_restore() == {}  # loaded, not applied yet
            ema.apply([("w", s.copy()), ("v", -s)])
        return ema.average("w"), ema.average("v")

    for got, want in zip(run(5), run(len(STEPS)), strict=True):
        assert np.array_equal(got, want)


def test_tf_deepcopy_with_unnamed_variables_follows_the_copies() -> None:
    """``copy.deepcopy((variables, ema))`` with unnamed variables: the copy's shadows follow the
    copied arrays, and both runs stay equal and independent."""
    a = STEPS[0].copy()
    ema = tensorflow.ExponentialMovingAverage(0.5)
    ema.apply([a])
    a_copy, ema_copy = copy.deepcopy((a, ema))
    for s in STEPS[1:4]:
        a[...] = s
        ema.apply([a])
        a_copy[...] = s
        ema_copy.apply([a_copy])
    assert len(ema_copy._slots) == 1
    assert np.array_equal(ema_copy.average(a_copy), ema.average(a))
    assert ema.average(a) is not ema_copy.average(a_copy)


def test_tf_pickled_named_ema_continues_bit_for_bit() -> None:
    """A pickled named EMA (its variables pickled with it) continues with new arrays under the
    same names exactly as the original."""
    ema = tensorflow.ExponentialMovingAverage(0.9, num_updates=7)
    for s in STEPS[:3]:
        ema.apply({"w": s.copy()})
    twin = pickle.loads(pickle.dumps(ema))
    for s in STEPS[3:]:
        ema.apply({"w": s.copy()})
        twin.apply({"w": s.copy()})
    assert np.array_equal(ema.average("w"), twin.average("w"))


def test_tf_jax_named_variables_zero_debias() -> None:
    """JAX variables named by a dict (a new array each step) find their shadows; the debiased
    average equals that of the same numpy run to the ulp (XLA and numpy may round the
    correction differently)."""
    jnp = _jnp()
    ema_j = tensorflow.ExponentialMovingAverage(0.5, zero_debias=True)
    ema_n = tensorflow.ExponentialMovingAverage(0.5, zero_debias=True)
    for s in STEPS[:4]:
        ema_j.apply({"w": jnp.asarray(s)})
        ema_n.apply({"w": s.copy()})
    np.testing.assert_array_max_ulp(np.asarray(ema_j.average("w")), ema_n.average("w"), 1)
    assert list(ema_j.state_dict()["shadows"]) == ["w"]


def test_tf_module_params_that_require_grad() -> None:
    """A torch module's parameters (requiring grad) get shadows that neither require grad nor
    hold a graph, with or without ``zero_debias``; the parameters are not written."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    for zero_debias in (False, True):
        ema = tensorflow.ExponentialMovingAverage(0.9, zero_debias=zero_debias)
        before = lin.weight.detach().clone()
        ema.apply(lin)
        ema.apply(lin)
        shadow = ema.average(lin.weight)
        assert not shadow.requires_grad and shadow.grad_fn is None
        assert torch.equal(lin.weight, before)


def test_tf_the_same_array_named_then_unnamed_has_one_shadow() -> None:
    """A variable applied once by name and later as the array itself (``model.parameters()``
    after ``model``) is one variable in TF: ``average(x)`` and ``average("x")`` follow every
    apply of it."""
    x = np.zeros(2, np.float32)
    ema = tensorflow.ExponentialMovingAverage(0.5)
    ema.apply([("x", x)])
    x += 2.0
    ema.apply([x])
    x += 2.0
    ema.apply([x])
    want = np.full(2, 2.5, np.float32)  # TF: 0, then 0.5 * 0 + 0.5 * 2, then 0.5 * 1 + 0.5 * 4
    assert np.array_equal(ema.average(x), want)
    assert np.array_equal(ema.average("x"), want)


# ---- MMEditing -------------------------------------------------------------------------------


def _bn_model() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def _train_step(model: Any, k: int) -> None:
    """Move the parameters and the BatchNorm statistics and integer counter (written directly:
    a CPU ``batch_norm`` call costs tens of milliseconds here)."""
    gen = torch.Generator().manual_seed(k)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen))
        norm = model[1]
        norm.running_mean.lerp_(torch.randn(4, generator=gen), 0.1)
        norm.running_var.lerp_(torch.rand(4, generator=gen) + 0.5, 0.1)
        norm.num_batches_tracked.add_(1)


def _through_state_dict(ema: Any, model: Any, update_buffers: bool) -> Any:
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    fresh = mmedit.ExponentialMovingAverage(
        model, momentum=0.3, interval=3, update_buffers=update_buffers
    )
    fresh.load_state_dict(torch.load(buffer))
    return fresh


@pytest.mark.parametrize("update_buffers", [False, True])
@pytest.mark.parametrize("how", ["state_dict", "pickle", "deepcopy"])
def test_mmedit_resume_mid_interval_bit_for_bit(update_buffers: bool, how: str) -> None:
    """Saved through ``state_dict`` / ``torch.save``, pickled or deep-copied between two interval
    updates, the EMA continues exactly as the uninterrupted one (and as a hand-written mmengine
    loop with ``lerp_``), buffers and ``steps`` included."""

    def run(split: int) -> dict[str, Any]:
        model = _bn_model()
        ema = mmedit.ExponentialMovingAverage(
            model, momentum=0.3, interval=3, update_buffers=update_buffers
        )
        for k in range(8):
            if k == split and how == "state_dict":
                ema = _through_state_dict(ema, model, update_buffers)
            elif k == split:
                ema = pickle.loads(pickle.dumps(ema)) if how == "pickle" else copy.deepcopy(ema)
            _train_step(model, k)
            ema.update_parameters(model)
        return ema.state_dict()

    got, want = run(4), run(99)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    reference = _mmengine_loop(update_buffers)
    assert all(torch.equal(got["module." + k], v) for k, v in reference.items())


def _mmengine_loop(update_buffers: bool) -> dict[str, Any]:
    """mmengine 0.10's ``update_parameters`` with ``lerp_`` (momentum 0.3, interval 3), written
    from its source, on the same training steps."""
    model = _bn_model()
    avg = copy.deepcopy(model).requires_grad_(False)
    for steps in range(8):
        _train_step(model, steps)
        src = model.state_dict() if update_buffers else dict(model.named_parameters())
        mine = avg.state_dict() if update_buffers else dict(avg.named_parameters())
        for key, p_avg in mine.items():
            if steps == 0:
                p_avg.data.copy_(src[key].data)
            elif steps % 3 == 0 and p_avg.dtype.is_floating_point:
                p_avg.data.lerp_(src[key].data, 0.3)
        if not update_buffers:
            for b_avg, b_src in zip(avg.buffers(), model.buffers(), strict=True):
                b_avg.data.copy_(b_src.data)
    return avg.state_dict()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_mmedit_half_and_double_models_match_mmengines_lerp(dtype: str) -> None:
    """fp16 / bf16 / float64 models blend as mmengine's ``lerp_`` in their own dtype, bit for
    bit, with the parameters requiring grad in the model and not in the averaged copy."""
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 16).to(torch_dtype)
    ema = mmedit.ExponentialMovingAverage(model, momentum=0.3)
    avg = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    for k in range(6):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=gen).to(torch_dtype))
        ema.update_parameters(model)
        for mine, theirs in zip(avg.parameters(), model.parameters(), strict=True):
            mine.data.copy_(theirs.data) if k == 0 else mine.data.lerp_(theirs.data, 0.3)
    for mine, theirs in zip(avg.parameters(), ema.module.parameters(), strict=True):
        assert theirs.dtype == torch_dtype and not theirs.requires_grad
        assert torch.equal(mine, theirs)
    assert all(p.requires_grad for p in model.parameters())


def test_mmedit_zero_size_parameters() -> None:
    """A module with a zero-size parameter beside a normal one updates, saves and loads."""
    model = torch.nn.Module()
    model.empty = torch.nn.Parameter(torch.zeros(0, 3))
    model.full = torch.nn.Parameter(torch.ones(2))
    ema = mmedit.ExponentialMovingAverage(model, momentum=0.5)
    ema.update_parameters(model)
    with torch.no_grad():
        model.full.add_(2.0)
    ema.update_parameters(model)
    assert ema.module.empty.shape == (0, 3)
    assert torch.equal(ema.module.full, torch.full((2,), 2.0))
    fresh = mmedit.ExponentialMovingAverage(model, momentum=0.5)
    fresh.load_state_dict(ema.state_dict())
    assert int(fresh.steps) == 2
    assert torch.equal(fresh.module.full, ema.module.full)


# ---- zero-size arrays in the array classes ---------------------------------------------------


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_array_classes_take_zero_size_parameters(framework: str) -> None:
    """A zero-size parameter beside a normal one goes through every method of the three array
    classes, state round trips included."""
    make: Callable[[Any], Any] = {
        "numpy": np.asarray,
        "torch": torch.from_numpy,
        "jax": lambda a: _jnp().asarray(a),
    }[framework]
    params = {"e": make(np.zeros((0, 3), np.float32)), "w": make(STEPS[0].copy())}
    al = allennlp.ExponentialMovingAverage(dict(params), decay=0.5)
    al.apply(parameters=dict(params))
    al.assign_average_value()
    assert tuple(al.restore()["e"].shape) == (0, 3)
    al.load_state_dict(al.state_dict())
    pd = paddle.ExponentialMovingAverage(dict(params), decay=0.5)
    pd.update(parameters=dict(params))
    with pd.apply() as applied:
        assert np.array_equal(np.asarray(applied["w"]), STEPS[0])
    pd.load_state_dict(pd.state_dict())
    tf = tensorflow.ExponentialMovingAverage(0.5, zero_debias=True)
    tf.apply(dict(params))
    tf.apply(dict(params))
    assert tuple(tf.average("e").shape) == (0, 3)
    tf.load_state_dict(tf.state_dict())


def test_tf_the_same_array_unnamed_then_named_keeps_one_shadow_under_the_name() -> None:
    """The other order: an array averaged unnamed, then by name, is still one variable (its
    shadow is found by the name afterwards); a second name for it, or the array twice in one
    ``var_list`` (named and not), is a ValueError and changes nothing."""
    x = np.zeros(2, np.float32)
    ema = tensorflow.ExponentialMovingAverage(0.5)
    ema.apply([x])
    x += 2.0
    ema.apply([("x", x)])
    want = np.full(2, 1.0, np.float32)
    assert np.array_equal(ema.average("x"), want) and np.array_equal(ema.average(x), want)
    with pytest.raises(ValueError, match=r"var_list\[0\] names 'x''s array 'y'"):
        ema.apply([("y", x)])
    with pytest.raises(ValueError, match=r"var_list\[1\] repeats var_list\[0\]'s array"):
        ema.apply([("x", x), x])
    with pytest.raises(ValueError, match="one array twice"):  # x by its slot, another as "x"
        ema.apply([("x", np.ones(2, np.float32)), x])
    assert np.array_equal(ema.average("x"), want)
    assert ema.average("y") is None
