"""What a JAX new-user walkthrough found in the API: a ``"zeros"`` state compiled a jitted step
twice, every resume traced it again (a weak-typed step), a donated state read as JAX's bare
"Array has been deleted", ``config=`` was refused as a keyword, and four messages lacked the way
out (a float for a Config, a non-array leaf, numpy leaves beside JAX ones)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")

import ema_core as ema  # noqa: E402
import ema_core.checkpoint  # noqa: E402
from ema_core.jax import ema_average, make_update, with_ema  # noqa: E402
from tests.xla_compiles import counting_compiles  # noqa: E402

INITS = ("zeros", "params", "copy")


def _count_compiles(run: Any, calls: int = 5) -> int:
    """XLA compilations over ``calls`` calls of ``run``."""
    with counting_compiles() as seen:
        for _ in range(calls):
            run()
    return len(seen)


# --- 1: every part of init's state takes the params' commitment ---------------------------------


@pytest.mark.parametrize("init", INITS)
def test_a_jitted_update_compiles_once_for_every_init(init: str) -> None:
    config = ema.Config(0.99, init=init)
    params = {"w": jnp.ones(8), "b": jnp.zeros(3)}  # uncommitted, on the default device
    box = [jax.block_until_ready(ema.init(params, config))]
    assert not any(x.committed for x in jax.tree_util.tree_leaves(box[0]))
    step = jax.jit(lambda state, p: ema.update(state, p, config))

    def run() -> None:
        box[0] = step(box[0], params)

    assert _count_compiles(run) == 1


@pytest.mark.parametrize("init", INITS)
def test_a_with_ema_train_step_compiles_once_for_every_init(init: str) -> None:
    opt = with_ema(optax.sgd(0.1), ema.Config(0.99, init=init))

    @jax.jit
    def step(params: Any, state: Any) -> Any:
        updates, state = opt.update(params, state, params)
        return optax.apply_updates(params, updates), state

    params = {"w": jnp.ones(8)}
    box = [params, jax.block_until_ready(opt.init(params))]

    def run() -> None:
        box[0], box[1] = step(box[0], box[1])

    assert _count_compiles(run) == 1


# --- 2: init's step and weight have explicit (strong) dtypes ------------------------------------


def _strong(state: ema.EMAState) -> ema.EMAState:
    """The same values with strong dtypes, as a checkpoint load (or orbax) gives them back."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)), state)


@pytest.mark.parametrize("init", INITS)
def test_a_state_rebuilt_with_strong_dtypes_is_not_traced_again(init: str) -> None:
    config = ema.Config(0.99, init=init)
    traces: list[int] = []

    @jax.jit
    def step(state: ema.EMAState, params: Any) -> ema.EMAState:
        traces.append(1)
        return ema.update(state, params, config)

    params = {"w": jnp.ones(4)}
    state = ema.init(params, config)
    assert not state.step.weak_type and not state.weight.weak_type
    step(state, params)
    strong = jax.block_until_ready(_strong(state))
    compiles = _count_compiles(lambda: step(strong, params), calls=1)
    assert len(traces) == 1 and compiles == 0


def test_init_step_is_the_default_integer_of_each_namespace_and_mode() -> None:
    params = {"w": jnp.ones(2)}
    assert ema.init(params).step.dtype == jax.dtypes.canonicalize_dtype(np.int64)
    with jax.enable_x64(True):
        state = ema.init({"w": jnp.ones(2)})
        assert (state.step.dtype, state.weight.dtype) == (jnp.int64, jnp.float64)
    state = ema.init({"w": np.ones(2, np.float32)}, ema.Config(0.9, init="zeros"))
    assert (state.step.dtype, state.weight.dtype) == (np.int64, np.float64)


def test_torch_init_keeps_int64_step_and_float64_weight() -> None:
    torch = pytest.importorskip("torch")
    state = ema.init({"w": torch.ones(2)})
    assert (state.step.dtype, state.weight.dtype) == (torch.int64, torch.float64)


# --- 3: reading a donated state ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("init", "name"), [("params", r"state\.weight"), ("zeros", r"state\.shadow\['w'\]")]
)
def test_average_of_a_donated_state_names_what_was_deleted(init: str, name: str) -> None:
    config = ema.Config(0.9, init=init)
    params = {"w": jnp.ones(3)}
    old = ema.init(params, config)
    make_update(config)(old, params)  # donates old
    assert old.weight.is_deleted()
    with pytest.raises(ValueError, match=rf"^{name} was deleted.*donat.*returned"):
        ema.average(old, config)


def test_ema_average_of_a_donated_opt_state_names_its_weight() -> None:
    config = ema.Config(0.9)
    opt = with_ema(optax.sgd(0.1), config)

    @functools.partial(jax.jit, donate_argnums=(1,))
    def step(params: Any, state: Any) -> Any:
        updates, state = opt.update(params, state, params)
        return optax.apply_updates(params, updates), state

    params = {"w": jnp.ones(3)}
    old = opt.init(params)
    step(params, old)
    assert old.ema.weight.is_deleted()
    with pytest.raises(ValueError, match=r"^opt_state's EMA weight was deleted: .*donated"):
        ema_average(old, config)


# --- 4: config is a keyword everywhere -----------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [ema.init, ema.update, ema.average, make_update, with_ema, ema_average, ema.checkpoint.save],
)
def test_config_is_positional_or_keyword(fn: Any) -> None:
    kind = inspect.signature(fn).parameters["config"].kind
    assert kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


def test_config_given_as_a_keyword_is_used(tmp_path: Any) -> None:
    config = ema.Config(0.5, init="zeros")
    params = {"w": jnp.full(2, 4.0)}
    state = ema.update(ema.init(params, config=config), params, config=config)
    assert float(state.weight) == 0.5
    assert ema.average(state, config=config)["w"].tolist() == [4.0, 4.0]
    assert float(make_update(config=config)(ema.init(params, config), params).weight) == 0.5
    opt = with_ema(optax.sgd(0.0), config=config)
    opt_state = opt.update(params, opt.init(params), params)[1]
    assert ema_average(opt_state, config=config)["w"].tolist() == [4.0, 4.0]
    path = ema.checkpoint.save(tmp_path / "s.safetensors", state, config=config)
    assert ema.checkpoint.load(path, state, config=config).step == 1


# --- 5-7: the messages name the way out ----------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [make_update, lambda c: with_ema(optax.sgd(0.1), c), lambda c: ema.init({}, c)],
    ids=["make_update", "with_ema", "init"],
)
def test_a_float_config_says_how_to_make_one(call: Any) -> None:
    with pytest.raises(TypeError, match=r"got float: use ema_core\.Config\(0\.99\)$"):
        call(0.99)
    with pytest.raises(TypeError, match=r"got function: use ema_core\.Config\(schedule=\.\.\.\)"):
        call(lambda t: 0.9)


def test_a_non_array_leaf_says_to_convert_it_or_leave_it_out() -> None:
    params = {"w": jnp.ones(3), "n_layers": 2}
    fix = (
        r"must be an array, got int: convert it \(np\.asarray, jnp\.asarray, torch\.as_tensor\) "
        r"or leave it out of the tree you average "
        r"\(for flax nnx: nnx\.state\(model, nnx\.Param\)\)$"
    )
    with pytest.raises(TypeError, match=rf"^params\['n_layers'\] {fix}"):
        ema.init(params)
    with pytest.raises(TypeError, match=rf"^shadow\['n_layers'\] {fix}"):
        ema.ema_update(params, params, 1)


def test_numpy_state_beside_jax_params_names_both_sides_and_device_put() -> None:
    params = {"w": jnp.ones(2)}
    host = jax.device_get(ema.init(params))
    with pytest.raises(TypeError) as info:
        ema.update(host, params)
    text = str(info.value)
    assert text.startswith(
        "params['w'] (ArrayImpl) is an array of jax.numpy, but state.shadow['w'] (ndarray) is of "
        "array_api_compat.numpy: all leaves must come from one namespace; "
    )
    assert "goes back with jax.device_put(state)" in text and " a ArrayImpl" not in text


def test_numpy_beside_torch_leaves_names_both_without_the_jax_hint() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError) as info:
        ema.ema_update(
            {"a": np.zeros(2), "b": np.zeros(2)}, {"a": np.ones(2), "b": torch.ones(2)}, 1
        )
    text = str(info.value)
    assert text.startswith("params['b'] (Tensor) is an array of array_api_compat.torch, but ")
    assert text.endswith(
        "(ndarray) is of array_api_compat.numpy: all leaves must come from one namespace"
    )
    assert "device_put" not in text


def test_a_state_loaded_from_flat_arrays_does_not_compile_the_step_again() -> None:
    """``ema_core.jax.load_state_dict`` gives each array ``like``'s commitment: a resumed,
    jitted step on uncommitted params compiles no more after its warm-up."""
    jax = pytest.importorskip("jax")
    from ema_core.jax import load_state_dict, state_dict

    config = ema.Config(schedule=0.9)
    params = {"w": jax.numpy.ones(3)}
    step = jax.jit(lambda s, p: ema.update(s, p, config))
    state = step(ema.init(params, config), params)
    resumed = load_state_dict(state_dict(state), ema.init(params, config))
    with counting_compiles() as compiles:
        for _ in range(3):
            resumed = step(resumed, params)
    assert compiles == []
