"""ema-core inside real JAX training loops: ``with_ema`` composed with optax's wrappers
(``masked``, ``multi_transform``, ``chain``, ``inject_hyperparams``, ``apply_if_finite``,
``MultiSteps`` with a skip rule, ``contrib.reduce_on_plateau``), unusual params trees (``None``,
empty dicts, integer counters, ``FrozenDict``), the train step under ``lax.scan``, ``pmap``,
``shard_map`` and buffer donation, a state taken to the host and back, and flax nnx / linen
training with the EMA swapped in for evaluation and out again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")
nnx = pytest.importorskip("flax.nnx")

import ema_core as ema  # noqa: E402
from ema_core.jax import ema_average, with_ema  # noqa: E402

ZEROS = ema.Config(schedule=ema.schedules.warmup(0.99), init="zeros")
HALF = ema.Config(schedule=ema.schedules.constant(0.5))
GRADS = [{"w": jnp.full(2, g), "b": jnp.full(3, -g)} for g in (-1.0, 3.0, 0.5, -2.0)]


def _params() -> dict[str, Any]:
    return {"w": jnp.zeros(2), "b": jnp.ones(3)}


def _step(opt: Any) -> Callable[..., Any]:
    def step(params: Any, state: Any, grads: Any) -> Any:
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def _loop(opt: Any, step: Callable[..., Any], grads: list[Any] = GRADS) -> tuple[Any, Any]:
    params = _params()
    state = opt.init(params)
    for g in grads:
        params, state = step(params, state, g)
    return params, state


def _same(a: Any, b: Any) -> bool:
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    return tree_a == tree_b and all(
        np.array_equal(np.asarray(x), np.asarray(y)) and x.dtype == y.dtype
        for x, y in zip(leaves_a, leaves_b, strict=True)
    )


def _by_hand(params_seen: list[Any], config: ema.Config) -> Any:
    """The EMA of a trajectory of params, by the traced ``ema.update`` (a jitted step's decays)."""
    update = jax.jit(ema.update, static_argnums=2)
    state = ema.init(params_seen[0], config)
    for p in params_seen[1:]:
        state = update(state, p, config)
    return ema.average(state, config)


# ---------------------------------------------------------------- optax composition


def test_masked_with_ema_averages_only_the_masked_leaves() -> None:
    """Inside ``optax.masked`` the EMA sees only the masked leaves: their average is the EMA of
    their trajectory, the others are optax's ``MaskedNode`` (no shadow for frozen leaves)."""
    opt = optax.masked(with_ema(optax.sgd(1.0), ZEROS), {"w": True, "b": False})
    params, state = _loop(opt, jax.jit(_step(opt)))
    average = ema_average(state, ZEROS)
    assert isinstance(average["b"], optax.MaskedNode)
    trajectory = [{"w": jnp.zeros(2)}]
    for g in GRADS:
        trajectory.append({"w": trajectory[-1]["w"] - g["w"]})
    assert jnp.array_equal(params["w"], trajectory[-1]["w"])
    assert jnp.array_equal(average["w"], _by_hand(trajectory, ZEROS)["w"])


def test_multi_transform_finds_one_with_ema_and_refuses_two() -> None:
    """One ``with_ema`` per label group is found inside ``multi_transform``; two groups with an
    EMA each are ambiguous for ``ema_average``, a ``ValueError`` naming the count."""
    labels = {"w": "ema", "b": "frozen"}
    one = optax.multi_transform(
        {"ema": with_ema(optax.sgd(1.0), HALF), "frozen": optax.set_to_zero()}, labels
    )
    _, state = _loop(one, jax.jit(_step(one)))
    assert isinstance(ema_average(state, HALF)["b"], optax.MaskedNode)
    assert int(state.inner_states["ema"].inner_state.ema.step) == len(GRADS)
    two = optax.multi_transform(
        {"ema": with_ema(optax.sgd(1.0), HALF), "frozen": with_ema(optax.set_to_zero(), HALF)},
        labels,
    )
    _, state = _loop(two, jax.jit(_step(two)))
    with pytest.raises(ValueError, match=r"exactly one with_ema state, found 2"):
        ema_average(state, HALF)


def test_a_multisteps_group_beside_a_plain_one_moves_the_ema_once_per_accumulated_step() -> None:
    """README "Choices": a call counts as a step only when every ``MultiSteps`` inside
    stepped; with one group accumulating 2 micro-batches beside a plain group, the EMA moves
    every second call while the plain group's params change at every call."""
    labels = {"w": "acc", "b": "plain"}
    inner = optax.multi_transform(
        {"acc": optax.MultiSteps(optax.sgd(1.0), 2), "plain": optax.sgd(1.0)}, labels
    )
    opt = with_ema(inner, HALF)
    params, state = _loop(opt, jax.jit(_step(opt)))
    assert int(state.ema.step) == len(GRADS) // 2
    expected_b = 1.0 - sum(float(g["b"][0]) for g in GRADS)  # sgd(1.0) at every call
    np.testing.assert_array_equal(np.asarray(params["b"]), np.full(3, expected_b, np.float32))


def test_with_ema_last_in_a_chain_equals_with_ema_of_the_chain() -> None:
    """README: wrap the whole optimizer or put ``with_ema`` last; both average the params the
    chain produces, bit for bit under jit."""
    last = optax.chain(optax.clip_by_global_norm(1.0), with_ema(optax.adam(0.1), ZEROS))
    whole = with_ema(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1)), ZEROS)
    p_last, s_last = _loop(last, jax.jit(_step(last)))
    p_whole, s_whole = _loop(whole, jax.jit(_step(whole)))
    assert _same(p_last, p_whole)
    assert _same(ema_average(s_last, ZEROS), ema_average(s_whole, ZEROS))


def test_inject_hyperparams_learning_rate_changed_mid_run() -> None:
    """A learning rate changed between steps through ``inject_hyperparams``' state moves the
    params by the new rate, and the EMA follows the params actually produced."""
    opt = with_ema(optax.inject_hyperparams(optax.sgd)(learning_rate=1.0), HALF)
    step = jax.jit(_step(opt))
    params = _params()
    state = opt.init(params)
    seen = [params]
    for i, g in enumerate(GRADS):
        state.inner.hyperparams["learning_rate"] = jnp.asarray(0.5**i)
        params, state = step(params, state, g)
        seen.append(params)
    expected_w = -sum(0.5**i * g["w"] for i, g in enumerate(GRADS))
    assert jnp.allclose(params["w"], expected_w)
    assert _same(ema_average(state, HALF), _by_hand(seen, HALF))


def test_apply_if_finite_around_with_ema_keeps_the_ema_at_a_skipped_step() -> None:
    """``apply_if_finite(with_ema(...))``: a non-finite gradient keeps the whole inner state,
    the EMA included (no NaN reaches the shadow, the step is not counted)."""
    opt = optax.apply_if_finite(with_ema(optax.sgd(1.0), ZEROS), max_consecutive_errors=5)
    step = jax.jit(_step(opt))
    params = _params()
    state = opt.init(params)
    params, state = step(params, state, GRADS[0])
    before = jax.tree_util.tree_map(jnp.copy, ema_average(state, ZEROS))
    bad = {"w": jnp.array([1.0, jnp.nan]), "b": jnp.ones(3)}
    params_after, state = step(params, state, bad)
    assert _same(params_after, params)
    assert int(state.inner_state.ema.step) == 1
    assert _same(ema_average(state, ZEROS), before)


def test_multisteps_that_skips_a_non_finite_micro_batch_does_not_move_the_ema() -> None:
    """``MultiSteps(..., should_skip_update_fn=skip_not_finite)`` drops a NaN micro-batch; the
    EMA around it counts only the optimizer steps that happened."""
    accumulate = optax.MultiSteps(optax.sgd(1.0), 2, should_skip_update_fn=optax.skip_not_finite)
    opt = with_ema(accumulate, ZEROS)
    nan = {"w": jnp.full(2, jnp.nan), "b": jnp.ones(3)}
    grads = [GRADS[0], nan, GRADS[1], nan, GRADS[2], GRADS[3]]
    params, state = _loop(opt, jax.jit(_step(opt)), grads)
    assert int(state.ema.step) == 2
    mean_1 = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, GRADS[0], GRADS[1])
    mean_2 = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, GRADS[2], GRADS[3])
    p1 = jax.tree_util.tree_map(jnp.subtract, _params(), mean_1)
    p2 = jax.tree_util.tree_map(jnp.subtract, p1, mean_2)
    assert _same(params, p2)
    assert _same(ema_average(state, ZEROS), _by_hand([_params(), p1, p2], ZEROS))


def test_init_copy_around_multisteps_copies_at_the_first_real_step() -> None:
    """``init="copy"`` copies at the schedule's first update, which is the first optimizer
    step, not the first micro-batch."""
    config = ema.Config(schedule=0.9, init="copy")
    opt = with_ema(optax.MultiSteps(optax.sgd(1.0), 2), config)
    params, state = _loop(opt, jax.jit(_step(opt)), GRADS[:2])
    assert int(state.ema.step) == 1
    assert _same(ema_average(state, config), params)


def test_extra_args_reach_reduce_on_plateau_inside_with_ema() -> None:
    """``with_ema`` forwards extra arguments (``value=``) to a chain that needs them
    (``optax.contrib.reduce_on_plateau``); the plateau's scale reaches the params and the EMA."""
    contrib = pytest.importorskip("optax.contrib")
    opt = with_ema(
        optax.chain(optax.sgd(1.0), contrib.reduce_on_plateau(patience=0, factor=0.5)), HALF
    )
    params = _params()
    state = opt.init(params)
    seen = [params]

    @jax.jit
    def step(params: Any, state: Any, grads: Any) -> Any:
        updates, state = opt.update(grads, state, params, value=jnp.asarray(1.0))
        return optax.apply_updates(params, updates), state

    for g in GRADS:
        params, state = step(params, state, g)
        seen.append(params)
    assert float(state.inner[1].scale) < 1.0  # the plateau did act
    assert _same(ema_average(state, HALF), _by_hand(seen, HALF))


def test_update_without_params_is_refused() -> None:
    """``opt.update(grads, state)`` without params cannot know the new weights: a
    ``ValueError`` that says how to call it; the state passed in stays usable."""
    opt = with_ema(optax.sgd(1.0), HALF)
    state = opt.init(_params())
    with pytest.raises(ValueError, match=r"with_ema needs the params.*params=None"):
        opt.update(GRADS[0], state)
    _, state = opt.update(GRADS[0], state, _params())
    assert int(state.ema.step) == 1


# ---------------------------------------------------------------- params trees


def test_none_leaves_and_empty_dicts_pass_through() -> None:
    """A params tree with ``None`` and ``{}`` (a layer without bias, an empty module) trains
    under adam; the average keeps them in place and averages the arrays."""
    opt = with_ema(optax.adam(0.1), ZEROS)
    params = {"w": jnp.zeros(2), "bias": None, "empty": {}}
    state = opt.init(params)
    step = jax.jit(_step(opt))
    seen = [params]
    for g in GRADS:
        params, state = step(params, state, {"w": g["w"], "bias": None, "empty": {}})
        seen.append(params)
    average = ema_average(state, ZEROS)
    assert average["bias"] is None and average["empty"] == {}
    update = jax.jit(ema.update, static_argnums=2)
    by_hand = ema.init(seen[0], ZEROS)
    for p in seen[1:]:
        by_hand = update(by_hand, p, ZEROS)
    assert jnp.array_equal(average["w"], ema.average(by_hand, ZEROS)["w"])


def test_an_integer_counter_in_params_takes_the_applied_value() -> None:
    """An int32 step counter kept in the params is never averaged: the EMA holds what
    ``optax.apply_updates`` made of it (cast back to int32) at every step."""
    opt = with_ema(optax.sgd(1.0), HALF)
    params = {"w": jnp.zeros(2), "count": jnp.asarray(0, jnp.int32)}
    state = opt.init(params)
    step = jax.jit(_step(opt))
    for g in GRADS:
        params, state = step(params, state, {"w": g["w"], "count": jnp.asarray(-1, jnp.int32)})
        average = ema_average(state, HALF)
        assert average["count"].dtype == jnp.int32
        assert int(average["count"]) == int(params["count"])
    assert int(params["count"]) == len(GRADS)


def test_frozendict_params_give_a_frozendict_average() -> None:
    """flax linen's ``FrozenDict`` params: the average is a ``FrozenDict`` of the same keys."""
    frozen_dict = pytest.importorskip("flax.core").FrozenDict
    opt = with_ema(optax.sgd(1.0), HALF)
    params = frozen_dict(_params())
    state = opt.init(params)
    params, state = jax.jit(_step(opt))(params, state, frozen_dict(GRADS[0]))
    average = ema_average(state, HALF)
    assert isinstance(average, frozen_dict)
    # the first step from w = 0 with decay 0.5: halfway to the new params
    assert jnp.array_equal(average["w"], params["w"] / 2)


def test_reading_right_after_init() -> None:
    """Before any step the average is the params (``init="params"``) or the zeros
    (``init="zeros"``, weight 0: documented), never NaN from 0 / 0."""
    params = _params()
    assert _same(ema_average(with_ema(optax.sgd(1.0), HALF).init(params), HALF), params)
    zeros = ema_average(with_ema(optax.sgd(1.0), ZEROS).init(params), ZEROS)
    assert _same(zeros, jax.tree_util.tree_map(jnp.zeros_like, params))


# ---------------------------------------------------------------- loops and transforms


def test_scan_over_training_steps_equals_the_jitted_loop() -> None:
    """The opt_state carried through ``lax.scan`` gives the jitted Python loop's bits."""
    opt = with_ema(optax.MultiSteps(optax.adam(0.1), 2), ZEROS)
    stacked = jax.tree_util.tree_map(lambda *g: jnp.stack(g), *GRADS)

    def body(carry: Any, grads: Any) -> Any:
        return _step(opt)(*carry, grads), None

    params0 = _params()
    (p_scan, s_scan), _ = jax.jit(lambda c: jax.lax.scan(body, c, stacked))(
        (params0, opt.init(params0))
    )
    p_loop, s_loop = _loop(opt, jax.jit(_step(opt)))
    assert _same(p_scan, p_loop)
    assert _same(ema_average(s_scan, ZEROS), ema_average(s_loop, ZEROS))


def test_a_train_step_donating_params_and_opt_state() -> None:
    """``jax.jit(step, donate_argnums=(0, 1))``: the EMA never aliases the params, so both can
    be donated, and the result is the undonated step's, bit for bit."""
    opt = with_ema(optax.adam(0.1), ZEROS)
    donated = jax.jit(_step(opt), donate_argnums=(0, 1))
    p_don, s_don = _loop(opt, donated)
    p_keep, s_keep = _loop(opt, jax.jit(_step(opt)))
    assert _same(p_don, p_keep)
    assert _same(ema_average(s_don, ZEROS), ema_average(s_keep, ZEROS))


def test_pmap_and_shard_map_over_one_device_equal_jit() -> None:
    """The train step under ``pmap`` (replicated over one device) and ``shard_map`` (a 1-device
    mesh, everything replicated) gives the jitted step's EMA."""
    from jax.sharding import Mesh, PartitionSpec

    opt = with_ema(optax.sgd(0.1), ZEROS)
    _, s_jit = _loop(opt, jax.jit(_step(opt)))
    expected = ema_average(s_jit, ZEROS)

    def add_axis(tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda a: a[None], tree)

    pmapped = jax.pmap(_step(opt))
    params = add_axis(_params())
    state = add_axis(opt.init(_params()))
    for g in GRADS:
        params, state = pmapped(params, state, add_axis(g))
    # read as pmap users do, after unreplicating (the replicated weight is not 0-d)
    unreplicated = jax.tree_util.tree_map(lambda a: a[0], state)
    assert _same(ema_average(unreplicated, ZEROS), expected)

    mesh = Mesh(np.array(jax.devices()[:1]), ("d",))
    sharded = jax.jit(
        jax.shard_map(_step(opt), mesh=mesh, in_specs=PartitionSpec(), out_specs=PartitionSpec())
    )
    _, s_shard = _loop(opt, sharded)
    assert _same(ema_average(s_shard, ZEROS), expected)


def test_a_state_taken_to_the_host_and_back_continues_bit_for_bit() -> None:
    """``jax.device_get`` (a checkpoint's numpy state) is readable as it is, and after
    ``jax.device_put`` the training continues with the uninterrupted run's bits."""
    opt = with_ema(optax.adam(0.1), ZEROS)
    step = jax.jit(_step(opt))
    params, state = _loop(opt, step, GRADS[:2])
    host_params, host_state = jax.device_get((params, state))
    assert _same(
        jax.tree_util.tree_map(jnp.asarray, ema_average(host_state, ZEROS)),
        ema_average(state, ZEROS),
    )
    resumed_p, resumed_s = jax.device_put((host_params, host_state))
    for g in GRADS[2:]:
        params, state = step(params, state, g)
        resumed_p, resumed_s = step(resumed_p, resumed_s, g)
    assert _same(resumed_p, params)
    assert _same(ema_average(resumed_s, ZEROS), ema_average(state, ZEROS))


# ---------------------------------------------------------------- flax nnx and linen


class _Net(nnx.Module):  # type: ignore[misc]
    def __init__(self, rngs: Any) -> None:
        self.lin = nnx.Linear(3, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(4, 1, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        return self.out(self.drop(self.bn(self.lin(x))))


#: one transformation for every nnx optimizer here: it is static in the optimizer's graph, so
#: sharing it lets ``nnx.jit`` reuse one compiled step
_NNX_TX = with_ema(optax.adam(1e-2), ZEROS)
_X = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3)
_Y = jnp.sin(_X[:, :1])


@nnx.jit  # type: ignore[misc]
def _nnx_step(model: Any, optimizer: Any) -> Any:
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(_X) - _Y) ** 2))(model)
    optimizer.update(model, grads)
    return loss


def test_nnx_optimizer_carries_the_ema_of_the_params_only() -> None:
    """``nnx.Optimizer(model, with_ema(tx), wrt=nnx.Param)`` with BatchNorm and dropout: the
    average holds the Params only (batch stats stay the live model's) and is the EMA of the
    Params the steps produced."""
    model = _Net(nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(model, _NNX_TX, wrt=nnx.Param)
    seen = [jax.tree_util.tree_map(jnp.copy, nnx.state(model, nnx.Param))]
    for _ in range(4):
        _nnx_step(model, optimizer)
        seen.append(jax.tree_util.tree_map(jnp.copy, nnx.state(model, nnx.Param)))
    average = ema_average(optimizer.opt_state, ZEROS)
    paths = {p for p, _ in jax.tree_util.tree_leaves_with_path(average)}
    assert paths == {p for p, _ in jax.tree_util.tree_leaves_with_path(seen[-1])}
    assert not jnp.array_equal(model.bn.mean[...], jnp.zeros(4))  # batch stats did move
    expected = _by_hand(seen, ZEROS)
    got = [np.asarray(a) for a in jax.tree_util.tree_leaves(average)]
    assert all(
        np.array_equal(g, np.asarray(e))
        for g, e in zip(got, jax.tree_util.tree_leaves(expected), strict=True)
    )


def test_nnx_swap_the_average_in_for_eval_and_back() -> None:
    """Evaluate with the averages put in by ``nnx.update``, then put the saved live Params
    back: the live weights are bit-exact, still ``nnx.Param``, and training continues."""
    model = _Net(nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(model, _NNX_TX, wrt=nnx.Param)
    for _ in range(3):
        _nnx_step(model, optimizer)
    live = jax.tree_util.tree_map(jnp.copy, nnx.state(model, nnx.Param))
    stats = jax.tree_util.tree_map(jnp.copy, nnx.state(model, nnx.BatchStat))
    average = ema_average(optimizer.opt_state, ZEROS)
    nnx.update(model, average)
    model.eval()
    assert type(model.lin.kernel) is nnx.Param
    assert jnp.array_equal(model.lin.kernel[...], average["lin"]["kernel"][...])
    model(_X)
    model.train()
    nnx.update(model, live)
    assert _same(nnx.state(model, nnx.Param), live)
    assert _same(nnx.state(model, nnx.BatchStat), stats)
    _nnx_step(model, optimizer)
    assert int(optimizer.opt_state.ema.step) == 4


def test_nnx_split_merge_roundtrip_keeps_the_ema() -> None:
    """``nnx.split`` of model and optimizer, then ``nnx.merge``: the merged optimizer's EMA
    is the same, and both continue to the same bits."""
    model = _Net(nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(model, _NNX_TX, wrt=nnx.Param)
    _nnx_step(model, optimizer)
    graphdef, state = nnx.split((model, optimizer))
    model2, optimizer2 = nnx.merge(graphdef, jax.tree_util.tree_map(jnp.copy, state))
    assert _same(ema_average(optimizer2.opt_state, ZEROS), ema_average(optimizer.opt_state, ZEROS))
    _nnx_step(model, optimizer)
    _nnx_step(model2, optimizer2)
    assert _same(ema_average(optimizer2.opt_state, ZEROS), ema_average(optimizer.opt_state, ZEROS))


def test_nnx_optimizer_state_saved_and_restored_keeps_the_ema() -> None:
    """The checkpoint route of an nnx optimizer, ``nnx.state(optimizer)`` then ``nnx.update``
    into a fresh one, brings the ``with_ema`` state back bit for bit; the flattened ``State``
    itself holds no ``with_ema`` state (a ``ValueError`` saying so, not a wrong read)."""
    model = _Net(nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(model, _NNX_TX, wrt=nnx.Param)
    _nnx_step(model, optimizer)
    saved = jax.device_get(nnx.state(optimizer))
    with pytest.raises(ValueError, match=r"exactly one with_ema state, found 0 in a State"):
        ema_average(saved["opt_state"], ZEROS)
    fresh = nnx.Optimizer(_Net(nnx.Rngs(1, dropout=2)), _NNX_TX, wrt=nnx.Param)
    nnx.update(fresh, jax.device_put(saved))
    assert int(fresh.opt_state.ema.step) == 1
    assert _same(ema_average(fresh.opt_state, ZEROS), ema_average(optimizer.opt_state, ZEROS))


def test_linen_train_state_carries_the_ema() -> None:
    """flax linen ``TrainState.create(..., tx=with_ema(tx, config))``: ``apply_gradients``
    moves the EMA, read by ``ema_average(state.opt_state, config)``."""
    train_state = pytest.importorskip("flax.training.train_state")
    linen = pytest.importorskip("flax.linen")
    module = linen.Dense(2)
    params = module.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
    state = train_state.TrainState.create(
        apply_fn=module.apply, params=params, tx=with_ema(optax.sgd(0.1), HALF)
    )
    seen = [state.params]

    @jax.jit
    def step(state: Any) -> Any:
        def loss(p: Any) -> Any:
            return jnp.sum(state.apply_fn({"params": p}, _X) ** 2)

        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    for _ in range(3):
        state = step(state)
        seen.append(state.params)
    assert _same(ema_average(state.opt_state, HALF), _by_hand(seen, HALF))
