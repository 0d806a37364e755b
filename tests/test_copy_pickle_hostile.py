"""Hostile review: the public objects copied, deep-copied and pickled as users do it in practice.

``copy.deepcopy`` to fork a run or keep a "best" EMA, ``pickle`` / ``torch.save`` of whole
objects, a spawned worker (a DataLoader's) receiving a ``Config``, ``copy.copy`` of a state,
a JAX ``EMAState`` through ``pickle``, ``jax.tree_util`` and ``copy.deepcopy``. What a user of
timm's ModelEmaV3, torch_ema or optax expects: the copy is an independent object equal to the
original at copy time (a deep copy of ``(model, ema)`` keeps the EMA tracking the copied model),
or the copy is refused with a ``TypeError`` that says what to do instead. Silent sharing, a copy
tracking the wrong model or an obscure crash are bugs: five such were found here on 2026-12-03
and fixed (a lone deep copy of a torch ``EMA`` copied its model, ``copy.copy`` shared half of
it, a copy made inside ``swap()`` stayed swapped, an ``EMABank``'s fused plan did not pickle,
the TF drop-in lost unnamed variables after a copy).
"""

from __future__ import annotations

import copy
import io
import multiprocessing
import operator
import pickle
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import presets, schedules

#: Steps at which copies must give the same decays: the first updates, interval and gate
#: boundaries of the presets below (3, 4, 10, 11), and late steps.
STEPS = (1, 2, 3, 4, 5, 7, 10, 11, 100, 1001)

SCHEDULES: dict[str, Any] = {
    "constant": schedules.constant(0.9),
    "num_updates": schedules.num_updates(0.99),
    "warmup": schedules.warmup(0.999, min_decay=0.5),
    "power_function": schedules.power_function(7.0),
    "power_function-sigma_rel": schedules.power_function(sigma_rel=0.05),
    "half_life": schedules.half_life(10.0),
    "annealing": schedules.annealing(0.01),
    "every": schedules.every(schedules.warmup(0.99), 3),
    "every-uncompensated": schedules.every(0.9, 2, compensate=False),
    "in_float32": schedules.in_float32(schedules.warmup(0.99)),
    "ramped_half_life": schedules.ramped_half_life(100.0, 0.05),
    "momentum": schedules.momentum(0.01),
    "gated": schedules.gated(schedules.constant(0.9), start=3),
}

PRESETS: dict[str, Callable[[], ema.Config]] = {
    "timm": lambda: presets.timm(0.999, use_warmup=True, update_after_step=5),
    "torch_ema": lambda: presets.torch_ema(0.99),
    "ema_pytorch": presets.ema_pytorch,
    "diffusers": lambda: presets.diffusers(use_ema_warmup=True, update_after_step=3),
    "swa_utils": lambda: presets.swa_utils(use_buffers=True),
    "ema_pytorch_karras": lambda: presets.ema_pytorch_karras(sigma_rel=0.05),
    "edm2": lambda: presets.edm2(batch_size=64),
    "torchtitan": presets.torchtitan,
    "optax": lambda: presets.optax(0.9, debias=False, accumulator_dtype="float32"),
    "keras": presets.keras,
    "tensorflow": lambda: presets.tensorflow(0.99, num_updates=5, zero_debias=True),
    "allennlp": lambda: presets.allennlp(num_updates=3),
    "paddle": lambda: presets.paddle(thres_steps=10),
    "mmedit": lambda: presets.mmedit(interval=3, update_buffers=True),
    "config": lambda: ema.Config(
        schedule=schedules.every(schedules.warmup(0.99), 4),
        init="zeros",
        dtype="float64",
        interval=2,
        non_float="freeze",
        guard_finite=True,
    ),
}

COPIES: dict[str, Callable[[Any], Any]] = {
    **{
        f"pickle-{p}": (lambda x, p=p: pickle.loads(pickle.dumps(x, protocol=p)))
        for p in range(pickle.HIGHEST_PROTOCOL + 1)
    },
    "deepcopy": copy.deepcopy,
    "copy": copy.copy,
}


def _decays(schedule_or_config: Any) -> list[tuple[float, float]]:
    return [schedule_or_config.decay_and_rate(t) for t in STEPS]


def _torch() -> ModuleType:
    return pytest.importorskip("torch")


# --- Config, schedules, presets -----------------------------------------------------------------


@pytest.mark.parametrize("how", sorted(COPIES))
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_a_copied_or_pickled_schedule_is_equal_and_gives_the_same_decays(
    name: str, how: str
) -> None:
    """Every schedule comes back from pickle (each protocol), deepcopy and copy equal, with the
    same hash, and gives the same (decay, rate) at every step."""
    schedule = SCHEDULES[name]
    back = COPIES[how](schedule)
    assert back == schedule and hash(back) == hash(schedule)
    assert _decays(back) == _decays(schedule)


@pytest.mark.parametrize("how", sorted(COPIES))
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_copied_or_pickled_preset_config_is_equal_and_gives_the_same_decays(
    name: str, how: str
) -> None:
    """A preset's Config (and a hand-made one with every field set) comes back equal, hashes
    the same (a static ``jax.jit`` argument) and gives the same decays at every step."""
    config = PRESETS[name]()
    back = COPIES[how](config)
    assert back == config and hash(back) == hash(config)
    assert _decays(back) == _decays(config)


def test_configs_cross_to_a_spawned_worker_and_back() -> None:
    """A spawned worker (DataLoader workers, ``multiprocessing`` with ``spawn``) unpickles the
    Configs, gives the same decays there and sends back equal Configs."""
    configs = [make() for make in PRESETS.values()]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        back = pool.map(copy.deepcopy, configs)
        there = pool.map(operator.methodcaller("decay_and_rate", 11), configs)
    assert back == configs
    assert there == [c.decay_and_rate(11) for c in configs]


def test_a_config_with_a_lambda_schedule_is_refused_by_pickle_itself() -> None:
    """A lambda schedule cannot be pickled, as any lambda: pickle's own error names it (no
    ema-core object hides it), and a module-level function pickles."""
    with pytest.raises((pickle.PicklingError, AttributeError), match="lambda"):
        pickle.dumps(ema.Config(schedule=lambda t: 0.5))
    config = ema.Config(schedule=_half)
    assert pickle.loads(pickle.dumps(config)).decay_and_rate(3) == config.decay_and_rate(3)


def _half(t: Any) -> float:
    return 0.5


# --- EMAState: numpy and torch leaves -----------------------------------------------------------


def _params(kind: str) -> dict[str, Any]:
    if kind == "numpy":
        return {"w": np.linspace(0.0, 1.0, 3), "n": np.asarray(2, dtype=np.int64)}
    torch = _torch()
    dtype = torch.bfloat16 if kind == "torch-bf16" else torch.float32
    return {"w": torch.linspace(0.0, 1.0, 3, dtype=dtype), "n": torch.tensor(2)}


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    return x.float().numpy() if x.is_floating_point() else x.numpy()


def _same_tree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(_as_numpy(a[k]), _as_numpy(b[k])) for k in a)


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle-5"])
@pytest.mark.parametrize("kind", ["numpy", "torch", "torch-bf16"])
def test_a_copied_state_is_untouched_by_updates_of_the_original_and_continues_alike(
    kind: str, how: str
) -> None:
    """``update`` is pure: a shallow copy, deep copy or pickle of an EMAState keeps its values
    while the original is updated, and updated itself gives what the original gave."""
    config = ema.Config(schedule=schedules.warmup(0.99), init="zeros")
    params = _params(kind)
    state = ema.update(ema.init(params, config), params, config)
    kept = COPIES[how](state)
    before = {k: _as_numpy(v).copy() for k, v in ema.average(state, config).items()}
    moved = {k: v * 3 for k, v in params.items()}
    new = ema.update(state, moved, config)
    assert type(kept) is type(state)
    assert _same_tree(ema.average(kept, config), before)
    assert _same_tree(
        ema.average(ema.update(kept, moved, config), config), ema.average(new, config)
    )


# --- EMAState and wrappers: JAX -----------------------------------------------------------------


@pytest.fixture(scope="module")
def jax_update() -> tuple[Any, ema.Config, Any]:
    """JAX, a Config and its ``make_update``, compiled once for the module's JAX tests."""
    jax = pytest.importorskip("jax")
    from ema_core.jax import make_update

    config = ema.Config(schedule=schedules.warmup(0.99), init="zeros")
    update = make_update(config)
    update(ema.init(_jax_params(jax, 0.0), config), _jax_params(jax, 1.0))
    return jax, config, update


def _jax_params(jax: Any, value: float) -> dict[str, Any]:
    jnp = jax.numpy
    return {"w": jnp.arange(3.0) + value, "b": {"c": jnp.full((2, 2), value, jnp.bfloat16)}}


def _jax_state(jax_update: tuple[Any, ema.Config, Any]) -> Any:
    """A state after two updates of the compiled update (its arrays made by that update)."""
    jax, config, update = jax_update
    state = update(ema.init(_jax_params(jax, 0.0), config), _jax_params(jax, 0.0))
    return update(state, _jax_params(jax, 1.0))


def _same_jax(jax: Any, a: Any, b: Any) -> bool:
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in pairs)


@pytest.mark.parametrize("how", ["deepcopy", "pickle-5"])
def test_a_deep_copied_or_pickled_jax_state_outlives_the_donated_original(
    jax_update: tuple[Any, ema.Config, Any], how: str
) -> None:
    """A deep copy or pickle of a JAX EMAState holds its own buffers: after the original is
    donated to ``make_update``, the copy still updates, to what the original gave."""
    jax, config, update = jax_update
    state = _jax_state(jax_update)
    kept = COPIES[how](state)
    assert type(kept) is ema.EMAState and _same_jax(jax, kept, state)
    params = _jax_params(jax, 5.0)
    new = update(state, params)  # donates ``state``
    assert _same_jax(jax, ema.average(update(kept, params), config), ema.average(new, config))


@pytest.mark.parametrize("how", ["copy", "tree_unflatten", "tree_map"])
def test_a_shallow_copy_of_a_donated_jax_state_is_refused_with_the_donation_message(
    jax_update: tuple[Any, ema.Config, Any], how: str
) -> None:
    """``copy.copy`` and a ``jax.tree_util`` round trip share the original's buffers: after
    the original is donated, updating the copy names the donation (not JAX's bare "Array has
    been deleted")."""
    jax, _, update = jax_update
    state = _jax_state(jax_update)
    tree = jax.tree_util
    shallow = {
        "copy": copy.copy,
        "tree_unflatten": lambda s: tree.tree_unflatten(*reversed(tree.tree_flatten(s))),
        "tree_map": lambda s: tree.tree_map(lambda x: x, s),
    }[how](state)
    assert type(shallow) is ema.EMAState
    params = _jax_params(jax, 5.0)
    update(state, params)
    with pytest.raises(ValueError, match="donated"):
        update(shallow, params)


def test_a_deep_copied_make_update_is_a_working_update_of_its_own(
    jax_update: tuple[Any, ema.Config, Any],
) -> None:
    """``copy.deepcopy(make_update(config))`` gives an update that works beside the original:
    the same result, and each takes the states the other made."""
    jax, _, update = jax_update
    state = _jax_state(jax_update)
    step = int(state.step)
    twin = copy.deepcopy(update)
    params = _jax_params(jax, 5.0)
    from_twin = twin(copy.deepcopy(state), params)
    from_update = update(state, params)
    assert _same_jax(jax, from_twin, from_update)
    assert int(update(from_twin, params).step) == int(twin(from_update, params).step) == step + 2


@pytest.mark.parametrize("how", ["deepcopy", "pickle-5"])
def test_with_ema_state_and_bank_states_survive_deepcopy_and_pickle(how: str) -> None:
    """optax ``with_ema``'s state and a JAX bank's states, deep-copied or pickled, continue
    as the originals do."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    from ema_core.jax import ema_average, make_bank_update, with_ema

    config = ema.Config(schedule=schedules.warmup(0.99), init="zeros")
    params = {"w": jax.numpy.arange(3.0)}
    grads = {"w": jax.numpy.ones(3)}
    opt = with_ema(optax.sgd(0.1), config)
    opt_state = opt.update(grads, opt.init(params), params)[1]
    kept = COPIES[how](opt_state)
    assert type(kept) is type(opt_state)
    new, again = (opt.update(grads, s, params)[1] for s in (opt_state, kept))
    assert _same_jax(jax, ema_average(again, config), ema_average(new, config))
    bank = make_bank_update(sigma_rels=(0.05, 0.1), donate=False)
    states = bank(bank.init(params), params)
    assert _same_jax(jax, bank(COPIES[how](states), params), bank(states, params))


# --- torch EMA ----------------------------------------------------------------------------------


def _trained(dtype_name: str = "float32", init: str = "params") -> tuple[Any, Any]:
    """A small model with BatchNorm and its EMA after two updates (decay 0.5)."""
    torch = _torch()
    from ema_core.torch import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    ).to(getattr(torch, dtype_name))
    averager = EMA(model, config=ema.Config(schedule=0.5, init=init), buffers="copy")
    for _ in range(2):
        _bump(model, 1.0)
        averager.update()
    return model, averager


def _bump(model: Any, amount: float) -> None:
    torch = _torch()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(amount)


def _averages(averager: Any) -> dict[str, Any]:
    return {k: v.clone() for k, v in averager.average.items()}


def _same_averages(a: dict[str, Any], b: dict[str, Any]) -> bool:
    torch = _torch()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("init", ["params", "zeros"])
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_a_deep_copy_of_model_and_ema_together_forks_the_run(dtype_name: str, init: str) -> None:
    """``copy.deepcopy((model, ema))``: the copy starts equal, tracks the copied model (its
    ``swap()`` writes there), leaves the original alone, and given the same steps follows
    the original's trajectory bit for bit (bf16 params: the host engine's views are rebound)."""
    torch = _torch()
    model, averager = _trained(dtype_name, init)
    before = _averages(averager)
    model2, averager2 = copy.deepcopy((model, averager))
    assert _same_averages(_averages(averager2), before) and averager2.step == averager.step
    for m, a in ((model, averager), (model2, averager2)):
        _bump(m, 2.0)
        a.update()
    assert _same_averages(_averages(averager2), _averages(averager))
    after = _averages(averager)
    _bump(model2, 10.0)
    averager2.update()
    assert _same_averages(_averages(averager), after)
    with averager2.swap():
        assert torch.equal(model2[0].weight, averager2.average["0.weight"].to(model2[0].weight))
        assert not torch.equal(model[0].weight, model2[0].weight)


def test_torch_save_of_model_and_ema_in_one_object_keeps_the_link() -> None:
    """``torch.save({"model": m, "ema": e})`` loaded (``weights_only=False``) gives an EMA bound
    to the loaded model, continuing bit for bit as one resumed from ``state_dict``."""
    torch = _torch()
    from ema_core.torch import EMA

    model, averager = _trained()
    buffer = io.BytesIO()
    torch.save({"model": model, "ema": averager}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    resumed = EMA(copy.deepcopy(model), config=averager.config, buffers="copy")
    resumed.load_state_dict(averager.state_dict())
    for m, a in ((loaded["model"], loaded["ema"]), (resumed._bound.root, resumed)):
        _bump(m, 3.0)
        a.update()
    assert _same_averages(_averages(loaded["ema"]), _averages(resumed))
    with loaded["ema"].swap():
        assert torch.equal(loaded["model"][0].weight, loaded["ema"].average["0.weight"])


def test_a_model_deep_copied_inside_swap_holds_the_averages() -> None:
    """The "best model" idiom: ``copy.deepcopy(model)`` inside ``swap()`` holds the averages,
    and the live model gets its own weights back on exit."""
    torch = _torch()
    model, averager = _trained()
    live = model[0].weight.detach().clone()
    with averager.swap():
        best = copy.deepcopy(model)
    assert torch.equal(best[0].weight, averager.average["0.weight"])
    assert torch.equal(model[0].weight, live)


def test_a_deep_copy_of_the_ema_alone_swaps_into_the_users_model_or_is_refused() -> None:
    """``best = copy.deepcopy(ema)`` (keep the best EMA, as with torch_ema, whose deep copy
    keeps its weak references to the model's params): ``best.swap()`` must put best's averages
    into the user's model, or the deep copy must be refused with a TypeError naming
    ``state_dict``."""
    torch = _torch()
    model, averager = _trained()
    try:
        best = copy.deepcopy(averager)
    except TypeError as error:
        assert "state_dict" in str(error)
        return
    _bump(model, 5.0)  # training goes on
    with best.swap():
        assert torch.equal(model[0].weight, best.average["0.weight"])


def test_a_shallow_copy_of_an_ema_is_independent_or_refused() -> None:
    """``copy.copy(ema)`` must give an independent EMA (updating it leaves the original's
    averages as they were) or be refused with a TypeError naming ``state_dict``."""
    model, averager = _trained(init="zeros")
    before = _averages(averager)
    try:
        twin = copy.copy(averager)
    except TypeError as error:
        assert "state_dict" in str(error)
        return
    _bump(model, 1.0)
    twin.update()
    assert _same_averages(_averages(averager), before)


def test_an_ema_deep_copied_inside_swap_is_usable_after_the_block() -> None:
    """The "keep the best" idiom during evaluation: ``copy.deepcopy((model, ema))`` inside
    ``swap()`` must give an EMA that updates, swaps and loads once the block is left."""
    model, averager = _trained()
    with averager.swap():
        model2, kept = copy.deepcopy((model, averager))
    kept.load_state_dict(averager.state_dict())
    _bump(model2, 1.0)
    kept.update()
    with kept.swap():
        pass


def _bank() -> tuple[Any, Any]:
    """A model and its EMABank after two updates (the second builds the fused plans)."""
    pytest.importorskip("torch")
    from ema_core.backends.host import _numba
    from ema_core.torch import EMABank

    if not _numba.usable():
        pytest.skip("the bank's fused plans need numba")
    model, _ = _trained()
    bank = EMABank(model, sigma_rels=(0.05, 0.1))
    for _ in range(2):
        _bump(model, 1.0)
        bank.update()
    return model, bank


@pytest.mark.parametrize("how", ["deepcopy", "pickle-5"])
def test_a_bank_deep_copied_or_pickled_with_its_model_forks_the_run(how: str) -> None:
    """``copy.deepcopy((model, bank))`` / pickle after updates gives a bank tracking the
    copied model whose EMAs follow the original's bit for bit for the same steps."""
    model, bank = _bank()
    try:
        model2, bank2 = COPIES[how]((model, bank))
    except TypeError as error:
        assert "state_dict" in str(error)
        return
    assert all(e._bound.root is model2 for e in bank2)
    for m, b in ((model, bank), (model2, bank2)):
        _bump(m, 3.0)
        b.update()
    assert all(_same_averages(_averages(a), _averages(b)) for a, b in zip(bank, bank2, strict=True))


# --- compat drop-ins ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["deepcopy", "pickle-5"])
def test_allennlp_and_paddle_copied_with_their_arrays_track_the_copies(how: str) -> None:
    """AllenNLP's and Paddle's classes copied together with their parameter arrays average
    the copied arrays and leave the originals alone."""
    from ema_core.compat import allennlp, paddle

    for cls, step in (
        (allennlp.ExponentialMovingAverage, "apply"),
        (paddle.ExponentialMovingAverage, "update"),
    ):
        w = np.full(2, 4.0, dtype=np.float32)
        averager = cls([("w", w)], decay=0.5)
        getattr(averager, step)()
        w2, averager2 = COPIES[how]((w, averager))
        w2 += 4.0
        getattr(averager2, step)()
        w += 4.0
        getattr(averager, step)()
        read = (lambda a: a._shadows) if step == "apply" else (lambda a: a.average())
        assert _same_tree(read(averager2), read(averager))
        assert not np.shares_memory(read(averager2)["w"], read(averager)["w"])


def test_a_deep_copied_mmedit_ema_is_independent() -> None:
    """MMEditing's class (an ``nn.Module`` holding its own averaged copy) deep-copies into an
    independent EMA: updating the copy leaves the original's module and ``steps`` alone."""
    torch = _torch()
    from ema_core.compat import mmedit

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    averager = mmedit.ExponentialMovingAverage(model, momentum=0.5, update_buffers=True)
    averager.update_parameters(model)
    twin = copy.deepcopy(averager)
    weight = averager.module[0].weight.detach().clone()
    _bump(model, 2.0)
    twin.update_parameters(model)
    assert torch.equal(averager.module[0].weight, weight) and int(averager.steps) == 1
    assert torch.allclose(twin.module[0].weight, weight + 1.0) and int(twin.steps) == 2


def test_a_deep_copied_tensorflow_ema_of_named_variables_is_independent() -> None:
    """TF's class with named variables: a deep copy continues from the same shadows and
    leaves the original's alone."""
    from ema_core.compat import tensorflow

    w = np.ones(2, dtype=np.float32)
    averager = tensorflow.ExponentialMovingAverage(0.5)
    averager.apply([("w", w)])
    twin = copy.deepcopy(averager)
    w += 2.0
    twin.apply([("w", w)])
    assert np.array_equal(averager.average("w"), np.ones(2)) and np.array_equal(
        twin.average("w"), np.full(2, 2.0)
    )


@pytest.mark.parametrize("how", ["deepcopy", "pickle-5"])
def test_tensorflow_ema_copied_with_its_unnamed_arrays_keeps_averaging_them(how: str) -> None:
    """``copy.deepcopy((w, ema))`` with an unnamed array: applying the copied array must
    update its copied shadow, as applying ``w`` updates the original's."""
    from ema_core.compat import tensorflow

    w = np.ones(2, dtype=np.float32)
    averager = tensorflow.ExponentialMovingAverage(0.5)
    averager.apply([w])
    w2, twin = COPIES[how]((w, averager))
    w += 2.0
    averager.apply([w])
    w2 += 2.0
    twin.apply([w2])
    assert np.array_equal(twin.average(w2), averager.average(w))
