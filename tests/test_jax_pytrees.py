"""JAX pytrees through ema_update, init/update and make_update: plain and flax linen dicts,
flax nnx State, equinox modules (arrays averaged, static fields untouched)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core.jax import make_update  # noqa: E402
from tests.conftest import assert_close, to_numpy  # noqa: E402

needs_flax = pytest.mark.skipif(
    importlib.util.find_spec("flax") is None, reason="flax is not installed"
)
needs_equinox = pytest.mark.skipif(
    importlib.util.find_spec("equinox") is None, reason="equinox is not installed"
)

DECAY = 0.75


def _linen():
    from flax.core import FrozenDict

    rng = np.random.default_rng(0)
    return FrozenDict(
        {"params": {"Dense_0": {"kernel": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)}}}
    )


def _nnx():
    from flax import nnx

    return nnx.state(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Param)


def _equinox():
    import equinox as eqx

    return eqx.nn.MLP(3, 2, 5, 2, key=jax.random.PRNGKey(0))


def _plain():
    rng = np.random.default_rng(1)
    return {
        "w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
        "layers": [jnp.asarray(rng.standard_normal(5), jnp.float32), None],
        "count": jnp.asarray(3, jnp.int32),
    }


MAKERS = {
    "plain": pytest.param(_plain, id="plain"),
    "linen": pytest.param(_linen, id="flax-linen", marks=needs_flax),
    "nnx": pytest.param(_nnx, id="flax-nnx", marks=needs_flax),
    "equinox": pytest.param(_equinox, id="equinox", marks=needs_equinox),
}


def _shifted(tree, k):
    """The same tree with every float array moved by k (integers moved by k too)."""
    return jax.tree_util.tree_map(
        lambda x: x + jnp.asarray(k).astype(x.dtype) if isinstance(x, jax.Array) else x, tree
    )


def _arrays(tree):
    return [x for x in jax.tree_util.tree_leaves(tree) if isinstance(x, jax.Array)]


def _reference(start, targets):
    """float64 EMA with constant DECAY, leaf by leaf (integer leaves copied)."""
    out = [to_numpy(x).astype(np.float64) for x in _arrays(start)]
    for target in targets:
        for i, p in enumerate(_arrays(target)):
            p64 = to_numpy(p).astype(np.float64)
            is_float = jnp.issubdtype(p.dtype, jnp.floating)
            out[i] = out[i] + (1 - DECAY) * (p64 - out[i]) if is_float else p64
    return out


def _check_same_kind(result, like):
    assert type(result) is type(like)
    assert jax.tree_util.tree_structure(result) == jax.tree_util.tree_structure(like)
    static = [x for x in jax.tree_util.tree_leaves(like) if not isinstance(x, jax.Array)]
    static_out = [x for x in jax.tree_util.tree_leaves(result) if not isinstance(x, jax.Array)]
    assert all(a is b for a, b in zip(static_out, static, strict=True))  # untouched


@pytest.mark.parametrize("make", MAKERS.values())
def test_ema_update_round_trip(make):
    params = make()
    targets = [_shifted(params, k) for k in (1.0, 2.0, 4.0)]
    shadow = params
    for t, target in enumerate(targets, 1):
        shadow = ema.ema_update(shadow, target, t, decay=DECAY)
    _check_same_kind(shadow, params)
    for got, want in zip(_arrays(shadow), _reference(params, targets), strict=True):
        assert_close(got, want, "float32")


@pytest.mark.parametrize("make", MAKERS.values())
def test_update_and_make_update_round_trip(make):
    params = make()
    config = ema.Config(schedule=DECAY)
    targets = [_shifted(params, k) for k in (1.0, 3.0)]
    by_hand, compiled = ema.init(params, config), ema.init(params, config)
    step = make_update(config)
    for target in targets:
        by_hand = ema.update(by_hand, target, config)
        compiled = step(compiled, target)
    for state in (by_hand, compiled):
        _check_same_kind(state.shadow, params)
        assert int(state.step) == len(targets)
        for got, want in zip(_arrays(state.shadow), _reference(params, targets), strict=True):
            assert_close(got, want, "float32")
    for a, b in zip(_arrays(by_hand.shadow), _arrays(compiled.shadow), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("make", MAKERS.values())
def test_average_returns_the_same_structure(make):
    params = make()
    config = ema.Config(schedule=0.5, init="zeros")
    state = ema.update(ema.init(params, config), params, config)
    avg = ema.average(state, config)
    _check_same_kind(avg, params)
    for got, want in zip(_arrays(avg), _arrays(params), strict=True):
        assert_close(got, to_numpy(want), "float32")  # debiased average of a constant


@needs_flax
def test_nnx_state_keeps_variables_and_names_paths():
    from flax import nnx

    params = _nnx()
    state = ema.init(params)
    assert isinstance(state.shadow["kernel"], nnx.Param)
    other = nnx.state(nnx.Linear(3, 5, rngs=nnx.Rngs(0)), nnx.Param)
    with pytest.raises(ValueError, match=r"params\['bias'\]\.value has shape \(5,\)"):
        ema.update(state, other)


@needs_equinox
def test_equinox_mismatch_names_the_path_and_changes_nothing():
    import equinox as eqx

    key = jax.random.PRNGKey(0)
    model = {"a": eqx.nn.Linear(3, 4, key=key), "b": eqx.nn.Linear(3, 4, key=key)}
    state = ema.init(model)
    before = [np.asarray(x) for x in _arrays(state.shadow)]
    wider = {"a": model["a"], "b": eqx.nn.Linear(3, 5, key=key)}
    with pytest.raises(
        TypeError, match=r"params\['b'\]: expected a Linear, got Linear with other static"
    ):
        ema.update(state, wider)
    no_bias = {"a": model["a"], "b": eqx.nn.Linear(3, 4, use_bias=False, key=key)}
    with pytest.raises(TypeError, match=r"params\['b'\]"):
        ema.update(state, no_bias)
    deeper = eqx.nn.MLP(3, 2, 5, 3, key=key)
    with pytest.raises(TypeError, match="expected a MLP, got MLP with other static fields"):
        ema.update(ema.init(_equinox()), deeper)
    for a, b in zip(_arrays(state.shadow), before, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


@needs_equinox
def test_equinox_models_built_apart_match():
    """Two models with the same structure hold different static objects (lambdas); the shadow
    keeps its own."""
    one, two = _equinox(), _equinox()
    shadow = ema.ema_update(one, two, 1, decay=0.0)
    assert shadow.final_activation is one.final_activation
    for a, b in zip(_arrays(shadow), _arrays(two), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_non_array_leaf_in_a_dict_is_still_rejected():
    with pytest.raises(TypeError, match=r"params\['x'\] must be an array, got str"):
        ema.ema_update({"x": jnp.ones(1)}, {"x": "oops"}, 1)


def test_eager_update_is_the_jitted_update():
    """The eager path runs compiled; it must equal ema_update traced inside a user's jit."""
    params = _plain()
    target = _shifted(params, 2.5)
    eager = ema.ema_update(params, target, 3, decay=0.9)
    traced = jax.jit(lambda s, p, t: ema.ema_update(s, p, t, decay=0.9))(
        params, target, jnp.asarray(3)
    )
    for a, b in zip(_arrays(eager), _arrays(traced), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
