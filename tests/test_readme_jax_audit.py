"""README "JAX in depth: one compiled update, optax, any pytree, shardings": the promises no
other test pinned. Each test quotes its claim. The multi-device sharding claims (shadow sharded
as its leaf, replicated scalars, no collective in the HLO) are pinned on 8 CPU devices by
``tests/test_jax_sharding.py``, ``tests/test_jax_leftovers_sharding.py`` and
``tests/dist_jax_worker.py``; they are not repeated here."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
import ema_core.backends.jax as backend_jax  # noqa: E402
import ema_core.jax as ema_jax  # noqa: E402
from ema_core.jax import load_state_dict, make_update, state_dict  # noqa: E402

needs_optax = pytest.mark.skipif(
    importlib.util.find_spec("optax") is None, reason="optax is not installed"
)
needs_flax = pytest.mark.skipif(
    importlib.util.find_spec("flax") is None, reason="flax is not installed"
)
needs_equinox = pytest.mark.skipif(
    importlib.util.find_spec("equinox") is None, reason="equinox is not installed"
)
needs_orbax = pytest.mark.skipif(
    importlib.util.find_spec("orbax") is None, reason="orbax is not installed"
)


def _warmup(t: int, decay: float = 0.999, power: float = 2 / 3) -> float:
    """``schedules.warmup``'s documented formula, in float64 (inv_gamma 1, min_decay 0)."""
    return min(max(1.0 - (1.0 + t) ** -power, 0.0), decay)


def _bits(x: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(x)).view(np.uint8)


# -- "ema_core.backends.jax.make_update still works too"; its kernels are used for JAX arrays --


def test_the_old_import_path_gives_the_same_functions() -> None:
    # README: "(its leaf kernels, `ema_core.backends.jax`, ...; `ema_core.backends.jax.make_update`
    # still works too)"
    for name in ("make_update", "with_ema", "ema_average", "state_dict", "load_state_dict"):
        assert getattr(backend_jax, name) is getattr(ema_jax, name), name
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = backend_jax.no_such_name


def test_an_eager_update_of_jax_arrays_runs_the_jax_leaf_kernels_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # README: "its leaf kernels, `ema_core.backends.jax`, are used as soon as JAX arrays show
    # up"; an eager update "dispatches the leaves' compiled update" (one call for all leaves)
    calls: list[int] = []
    real = backend_jax.update_leaves

    def counted(xp: Any, shadows: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(shadows))
        return real(xp, shadows, *args, **kwargs)

    monkeypatch.setattr(backend_jax, "update_leaves", counted)
    config = ema.Config(schedule=0.5)
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2)), "n": jnp.asarray(0, jnp.int32)}
    state = ema.init(params, config)
    target = {"a": jnp.full(3, 4.0), "b": jnp.full((2, 2), 2.0), "n": jnp.asarray(7, jnp.int32)}
    state = ema.update(state, target, config)
    state = ema.update(state, target, config)
    assert calls == [3, 3]
    np.testing.assert_array_equal(np.asarray(state.shadow["a"]), np.full(3, 3.0))
    np.testing.assert_array_equal(np.asarray(state.shadow["b"]), np.full((2, 2), 1.5))
    assert int(state.shadow["n"]) == 7


# -- the make_update snippet ---------------------------------------------------------------------


def test_the_make_update_snippet_lags_behind_the_params_by_the_warmup_formula() -> None:
    # README snippet: warmup(0.999), init="copy", 20 steps of +0.1; "print(int(state.step),
    # state.shadow["w"])  # the shadow lags behind params["w"] = 2.0"
    config = ema.Config(schedule=ema.schedules.warmup(0.999), init="copy")
    update = make_update(config)
    params = {"w": jnp.zeros(3)}
    state = ema.init(params, config)
    want = None
    for step in range(1, 21):
        params = {"w": params["w"] + 0.1}
        state = update(state, params)
        p = np.asarray(params["w"], np.float64)
        d = _warmup(step)
        want = p.copy() if step == 1 else d * want + (1 - d) * p  # "copy": the first copies
    assert int(state.step) == 20
    np.testing.assert_allclose(np.asarray(state.shadow["w"]), want, rtol=1e-5)
    assert np.all(np.asarray(state.shadow["w"]) < np.asarray(params["w"]) - 0.1)  # it lags


# -- optax --------------------------------------------------------------------------------------


@needs_optax
def test_the_with_ema_snippet_reads_the_exact_bias_corrected_average() -> None:
    # README snippet: with_ema(optax.adam(1e-1), warmup(0.999), init="zeros"), 100 jitted steps;
    # "ema_average(opt_state, config)  # bias-corrected average of the weights", "exact bias
    # correction": shadow / (1 - prod d_t), with the shadow started at zeros
    import optax

    from ema_core.jax import ema_average, with_ema

    config = ema.Config(schedule=ema.schedules.warmup(0.999), init="zeros")
    opt = with_ema(optax.adam(1e-1), config)

    def loss(p: Any) -> Any:
        return jnp.sum((p["w"] - 3.0) ** 2)

    @jax.jit
    def train_step(params: Any, opt_state: Any) -> Any:
        updates, opt_state = opt.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = {"w": jnp.zeros(4)}
    opt_state = opt.init(params)
    shadow, kept = np.zeros(4), 1.0  # kept: prod d_t
    for t in range(1, 101):
        params, opt_state = train_step(params, opt_state)
        d = _warmup(t)
        shadow = d * shadow + (1 - d) * np.asarray(params["w"], np.float64)
        kept *= d
        if t in (1, 2, 5, 100):
            got = np.asarray(ema_average(opt_state, config)["w"])
            np.testing.assert_allclose(got, shadow / (1 - kept), rtol=2e-6, err_msg=str(t))
            if t == 1:  # the uncorrected shadow is (1 - d_1) p_1; the read is p_1
                np.testing.assert_allclose(got, np.asarray(params["w"]), rtol=1e-6)
    assert int(opt_state.ema.step) == 100
    # an average of the weights, not the last weights (adam oscillates about 3.0)
    assert not np.allclose(np.asarray(ema_average(opt_state, config)["w"]), params["w"])


@needs_optax
def test_with_ema_first_in_a_chain_averages_the_unscaled_adam_direction() -> None:
    # README: "inside `optax.chain(with_ema(optax.scale_by_adam(), ...), optax.scale(-lr))` it
    # would average params moved by Adam's unscaled direction, not the params the chain produces"
    import optax

    from ema_core.jax import ema_average, with_ema

    config = ema.Config(schedule=0.5)
    lr = 0.01
    chain = optax.chain(with_ema(optax.scale_by_adam(), config), optax.scale(-lr))
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    grads = {"w": jnp.asarray([0.3, -1.0, 2.0])}
    updates, state = chain.update(grads, chain.init(params), params)
    adam = optax.scale_by_adam()
    direction, _ = adam.update(grads, adam.init(params), params)
    p = np.asarray(params["w"], np.float64)
    moved = p + np.asarray(direction["w"], np.float64)  # params + with_ema's own updates
    avg = np.asarray(ema_average(state, config)["w"])
    np.testing.assert_allclose(avg, 0.5 * p + 0.5 * moved, rtol=1e-6)
    produced = np.asarray(optax.apply_updates(params, updates)["w"], np.float64)
    assert not np.allclose(avg, 0.5 * p + 0.5 * produced, rtol=1e-3)


@needs_optax
def test_optax_is_imported_only_when_with_ema_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    # README: "optax is imported only when `with_ema` is called"; here ema_core.jax is imported
    # afresh while `import optax` fails: the import and every other function work, with_ema
    # raises ImportError (it imports optax when called)
    monkeypatch.setattr(ema, "jax", ema_jax)  # restored at the end, as sys.modules is
    for name in [m for m in sys.modules if m == "ema_core.jax" or m.startswith("ema_core.jax.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "optax", None)
    fresh = importlib.import_module("ema_core.jax")
    assert fresh is not ema_jax
    config = ema.Config(schedule=0.5)
    state = fresh.make_update(config)(ema.init({"w": jnp.zeros(2)}, config), {"w": jnp.ones(2)})
    assert state_dict(state)["shadow/w"].tolist() == [0.5, 0.5]
    assert sorted(fresh.state_dict(state)) == ["shadow/w", "step", "weight"]
    with pytest.raises(ValueError, match="exactly one with_ema state, found 0"):
        fresh.ema_average({"w": jnp.ones(2)}, config)
    with pytest.raises(ImportError):
        fresh.with_ema(object(), config)


# -- what the functional API averages ------------------------------------------------------------


@needs_optax
@pytest.mark.parametrize("buffers", ["average", "copy", "skip"])
def test_config_buffers_does_not_change_what_the_functional_api_averages(buffers: str) -> None:
    # README: "The functional API (`init`, `update`, `make_update`, `with_ema`) averages every
    # float leaf of the tree it is given: `Config.buffers` is for the `EMA` class and the trainer
    # integrations"
    import optax

    from ema_core.jax import ema_average, with_ema

    config = ema.Config(schedule=0.5, buffers=buffers)  # type: ignore[arg-type]
    params = {
        "w": jnp.asarray([1.0, 2.0]),
        "bn": {"mean": jnp.asarray([4.0, 0.0, 2.0])},
        "n": jnp.asarray(1, jnp.int32),
    }
    target = {
        "w": jnp.asarray([3.0, 0.0]),
        "bn": {"mean": jnp.asarray([0.0, 2.0, 2.0])},
        "n": jnp.asarray(5, jnp.int32),
    }
    half = {
        "w": [2.0, 1.0],
        "bn": [2.0, 1.0, 2.0],
    }

    def check(shadow: Any, what: str) -> None:
        np.testing.assert_array_equal(np.asarray(shadow["w"]), half["w"], err_msg=what)
        np.testing.assert_array_equal(np.asarray(shadow["bn"]["mean"]), half["bn"], err_msg=what)
        assert int(shadow["n"]) == 5, what

    check(ema.update(ema.init(params, config), target, config).shadow, "update")
    check(make_update(config, donate=False)(ema.init(params, config), target).shadow, "compiled")
    opt = with_ema(optax.sgd(1.0), config)
    grads = jax.tree_util.tree_map(lambda p, t: p - t, params, target)  # p - 1.0 * g = target
    grads["n"] = jnp.asarray(0, jnp.int32)
    _, opt_state = opt.update(grads, opt.init(params), params)
    shadow = opt_state.ema.shadow
    np.testing.assert_array_equal(np.asarray(shadow["w"]), half["w"])
    np.testing.assert_array_equal(
        np.asarray(ema_average(opt_state, config)["bn"]["mean"]), half["bn"]
    )


def _nnx_param(value: Any) -> Any:
    return importlib.import_module("flax.nnx").Param(value)


def _bad_leaves() -> list[Any]:
    """(the leaf a good state holds, the bad one, the words of the refusal)"""
    cases = [
        pytest.param(jnp.asarray, lambda: 3, r"params\['n'\] must be an array, got int", id="int"),
        pytest.param(
            jnp.asarray, lambda: "x", r"params\['n'\] must be an array, got str", id="str"
        ),
    ]
    if importlib.util.find_spec("flax") is not None:
        cases.append(
            pytest.param(
                lambda x: _nnx_param(jnp.asarray(x)),
                lambda: _nnx_param(2.0),
                r"params\['n'\]\.value must be an array, got float",
                id="nnx-param-of-a-float",
            )
        )
    return cases


@pytest.mark.parametrize(("good", "bad", "words"), _bad_leaves())
def test_make_update_refuses_a_non_array_leaf_by_path_before_donating(
    good: Any, bad: Any, words: str
) -> None:
    # README: "Every leaf must be an array: an int, a str or a `Variable` holding a Python
    # number is refused by path"; make_update donates: nothing may be deleted by the refusal
    config = ema.Config(schedule=0.5)
    state = ema.init({"w": jnp.ones(2), "n": good(1.0)}, config)
    update = make_update(config)
    with pytest.raises(TypeError, match=words):
        update(state, {"w": jnp.ones(2), "n": bad()})
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))
    state = update(state, {"w": jnp.full(2, 3.0), "n": good(5.0)})
    assert state.shadow["w"].tolist() == [2.0, 2.0]


@needs_optax
def test_with_ema_refuses_a_non_array_leaf_by_path() -> None:
    # README: "an int ... is refused by path" (with_ema is one of the functions it names)
    import optax

    from ema_core.jax import with_ema

    opt = with_ema(optax.sgd(0.1), ema.Config(schedule=0.5))
    with pytest.raises(TypeError, match=r"params\['n'\] must be an array, got int"):
        opt.init({"w": jnp.ones(2), "n": 3})


# -- structures ----------------------------------------------------------------------------------


@needs_equinox
def test_equinox_non_array_leaves_are_kept_from_the_shadow_through_make_update() -> None:
    # README: "equinox modules (arrays are averaged; static fields and non-array leaves such as
    # activation functions are kept from the shadow, untouched)": here through make_update, with
    # the params built apart (their own lambda, another Python number)
    import equinox as eqx

    class Block(eqx.Module):
        w: Any
        scale: Any
        act: Any
        tag: str = eqx.field(static=True, default="a")

    first, second = (lambda x: x), (lambda x: 2 * x)
    start = Block(jnp.zeros(3), 1.0, first)
    config = ema.Config(schedule=0.5)
    update = make_update(config)
    state = ema.init(start, config)
    for k in (4.0, 8.0):
        state = update(state, Block(jnp.full(3, k), 2.0, second))
    shadow = state.shadow
    assert type(shadow) is Block and shadow.tag == "a"
    assert shadow.act is first and shadow.scale == 1.0
    np.testing.assert_array_equal(np.asarray(shadow.w), np.full(3, 0.25 * 4.0 + 0.5 * 8.0))


@needs_equinox
@needs_optax
def test_with_ema_takes_an_equinox_model_filtered_to_its_arrays() -> None:
    # README: "every function takes ... equinox modules"; optax itself takes the model filtered
    # to its arrays (eqx.filter), and so does with_ema: the average is the same kind of module
    import equinox as eqx
    import optax

    from ema_core.jax import ema_average, with_ema

    model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.PRNGKey(0))
    params = eqx.filter(model, eqx.is_array)
    config = ema.Config(schedule=0.5)
    opt = with_ema(optax.sgd(1.0), config)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt.init(params), params)
    avg = ema_average(opt_state, config)
    assert type(avg) is type(model)
    assert jax.tree_util.tree_structure(avg) == jax.tree_util.tree_structure(params)
    for got, p in zip(
        jax.tree_util.tree_leaves(avg), jax.tree_util.tree_leaves(params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(p) - 0.5, rtol=1e-6, atol=1e-6)


# -- checkpoints ---------------------------------------------------------------------------------


@needs_orbax
@needs_optax
def test_orbax_restores_into_shape_dtype_structs_and_its_plain_dicts_are_refused(
    tmp_path: Any,
) -> None:
    # README: orbax restores an EMAState "when given a target to restore into (`opt.init(params)`
    # or `ema.init(params, config)`, or their `jax.ShapeDtypeStruct`s: without one orbax returns
    # plain dicts, which `ema_average` and `make_update` do not take)"; "Both continue
    # bit-identically"
    import optax
    import orbax.checkpoint as ocp

    from ema_core.jax import WithEMAState, ema_average, with_ema

    config = ema.Config(schedule=ema.schedules.warmup(0.99), init="zeros")
    opt = with_ema(optax.sgd(0.1), config)
    params = {"w": jnp.asarray([1.0, -2.0, 0.25])}
    grads = {"w": jnp.asarray([0.5, 0.25, -1.0])}
    _, opt_state = opt.update(grads, opt.init(params), params)
    state = make_update(config, donate=False)(ema.init(params, config), params)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "opt", opt_state)
        checkpointer.save(tmp_path / "ema", state)
        checkpointer.wait_until_finished()
        opt_back = checkpointer.restore(tmp_path / "opt", jax.eval_shape(opt.init, params))
        ema_back = checkpointer.restore(
            tmp_path / "ema", jax.eval_shape(lambda p: ema.init(p, config), params)
        )
        opt_plain = checkpointer.restore(tmp_path / "opt")
        ema_plain = checkpointer.restore(tmp_path / "ema")
    assert isinstance(opt_back, WithEMAState) and isinstance(ema_back, ema.EMAState)
    np.testing.assert_array_equal(
        _bits(ema_average(opt_back, config)["w"]), _bits(ema_average(opt_state, config)["w"])
    )
    _, a = opt.update(grads, opt_back, params)
    _, b = opt.update(grads, opt_state, params)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(_bits(x), _bits(y))
    step = make_update(config, donate=False)
    for x, y in zip(
        jax.tree_util.tree_leaves(step(ema_back, params)),
        jax.tree_util.tree_leaves(step(state, params)),
        strict=True,
    ):
        np.testing.assert_array_equal(_bits(x), _bits(y))
    assert isinstance(opt_plain, dict) and isinstance(ema_plain, dict)
    with pytest.raises(ValueError, match="exactly one with_ema state, found 0"):
        ema_average(opt_plain, config)
    with pytest.raises(TypeError, match=r"state must be an EMAState .* got dict"):
        step(ema_plain, params)


@pytest.mark.parametrize("committed", [True, False])
def test_load_state_dict_gives_flat_numpy_arrays_back_with_likes_placement(
    committed: bool,
) -> None:
    # README: "`ema_core.jax.state_dict(state)` gives flat arrays for `np.savez` and
    # `ema_core.jax.load_state_dict(arrays, like)` restores them with `like`'s dtypes and
    # shardings" (one CPU device here: the sharding and whether it is committed)
    config = ema.Config(schedule=0.5, dtype="same")
    params = {"w": jnp.asarray([1.0, 2.0]), "h": jnp.asarray([0.5, 1.5, 2.5], jnp.bfloat16)}
    if committed:
        params = jax.device_put(params, jax.devices()[0])
    state = make_update(config, donate=False)(ema.init(params, config), params)
    arrays = state_dict(state)
    assert all(type(v) is np.ndarray for v in arrays.values())
    assert sorted(arrays) == ["shadow/h", "shadow/w", "step", "weight"]
    like = ema.init(params, config)
    restored = load_state_dict(arrays, like)
    for got, want, ref in zip(
        jax.tree_util.tree_leaves(restored),
        jax.tree_util.tree_leaves(like),
        jax.tree_util.tree_leaves(state),
        strict=True,
    ):
        assert isinstance(got, jax.Array)
        assert got.dtype == want.dtype
        assert got.committed == want.committed == committed
        assert got.sharding == want.sharding
        np.testing.assert_array_equal(_bits(got), _bits(ref))
