"""make_update: one compilation for every step, donated buffers reused, same numbers as update."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core import schedules  # noqa: E402
from ema_core.jax import make_update  # noqa: E402
from tests.conftest import assert_close, assert_same_bits_nan_aside  # noqa: E402
from tests.xla_compiles import counting_compiles  # noqa: E402


@pytest.fixture
def compilations():
    """A list that grows by one per XLA compilation while the test runs."""
    with counting_compiles() as seen:
        yield seen


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.standard_normal((16, 8)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(8), jnp.bfloat16),
        "n": jnp.asarray(0, jnp.int32),
    }


def _targets(steps):
    return [jax.tree_util.tree_map(lambda x, i=i: x + i, _params()) for i in range(steps)]


def test_compiles_once_over_50_steps(compilations):
    config = ema.Config(schedule=schedules.warmup(0.999), init="copy")
    step = make_update(config)
    targets = _targets(50)  # built before counting starts
    state = ema.init(_params(), config)
    jax.block_until_ready((targets, state))
    compilations.clear()
    for target in targets:
        state = step(state, target)
    jax.block_until_ready(state)
    assert int(state.step) == 50
    assert len(compilations) == 1


def test_output_buffers_alias_the_donated_inputs():
    step = make_update(ema.Config(schedule=0.9))
    params = _params()
    state = step(ema.init(params), params)  # a steady-state (committed) state
    before = jax.tree_util.tree_leaves(state)
    pointers = [x.unsafe_buffer_pointer() for x in before]
    state = step(state, params)
    assert all(x.is_deleted() for x in before)
    assert [x.unsafe_buffer_pointer() for x in jax.tree_util.tree_leaves(state)] == pointers


def test_a_donated_state_passed_again_is_named():
    """The old state after a donating update: a ValueError that says what happened and the two
    ways out (JAX's own error says only that an array was deleted); the new state still works."""
    step = make_update(ema.Config(schedule=0.9))
    params = _params()
    old = step(ema.init(params), params)
    new = step(old, params)
    with pytest.raises(ValueError, match=r"state was donated .* donate=False"):
        step(old, params)
    assert int(step(new, params).step) == 3


def test_donate_false_keeps_the_input_state():
    step = make_update(ema.Config(schedule=0.9), donate=False)
    params = _params()
    state = ema.init(params)
    new = step(state, jax.tree_util.tree_map(lambda x: x + 1, params))
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))
    assert int(state.step) == 0
    assert int(new.step) == 1


@pytest.mark.parametrize("init", ["params", "copy", "zeros"])
def test_equals_update_by_hand_and_the_reference(init):
    config = ema.Config(schedule=schedules.num_updates(0.99), init=init)
    step = make_update(config)
    targets = _targets(6)
    compiled, by_hand = ema.init(_params(), config), ema.init(_params(), config)
    shadow = np.asarray(_params()["w"], np.float64) * (init != "zeros")
    weight = 0.0 if init == "zeros" else 1.0
    for t, target in enumerate(targets, 1):
        compiled = step(compiled, target)
        by_hand = ema.update(by_hand, target, config)
        d = 0.0 if (init == "copy" and t == 1) else min(0.99, (1 + t) / (10 + t))
        shadow = shadow + (1 - d) * (np.asarray(target["w"], np.float64) - shadow)
        weight = d * weight + (1 - d)
    for a, b in zip(
        jax.tree_util.tree_leaves(compiled), jax.tree_util.tree_leaves(by_hand), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert compiled.shadow["b"].dtype == jnp.float32  # bf16 params, float32 shadow
    assert int(compiled.shadow["n"]) == int(targets[-1]["n"])
    assert_close(compiled.shadow["w"], shadow, "float32", ulps=16)
    assert_close(ema.average(compiled, config)["w"], shadow / weight, "float32", ulps=16)


def test_decay_one_keeps_and_zero_copies_bit_exactly():
    params = _params()
    target = jax.tree_util.tree_map(lambda x: x + 3, params)
    keep = make_update(ema.Config(schedule=1.0))(ema.init(params), target)
    np.testing.assert_array_equal(np.asarray(keep.shadow["w"]), np.asarray(params["w"]))
    copy = make_update(ema.Config(schedule=0.0))(ema.init(params), target)
    np.testing.assert_array_equal(np.asarray(copy.shadow["w"]), np.asarray(target["w"]))
    np.testing.assert_array_equal(
        np.asarray(copy.shadow["b"]), np.asarray(target["b"].astype(jnp.float32))
    )


def test_bad_arguments_raise_before_anything_runs():
    with pytest.raises(TypeError, match=r"config must be an ema_core\.Config, got float"):
        make_update(0.9)
    with pytest.raises(TypeError, match="donate must be True or False, got 'yes'"):
        make_update(donate="yes")
    step = make_update()
    params = _params()
    state = ema.init(params)
    with pytest.raises(ValueError, match=r"params\['w'\] has shape \(3,\)"):
        step(state, {**params, "w": jnp.ones(3)})
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))


def test_a_host_decay_just_below_one_still_blends():
    """1 - 1e-9 rounds to 1 in float32; the update must still move by its rate (1e-9)."""
    if jnp.result_type(float) == jnp.float64:
        pytest.skip("x64 is on: the decay is not rounded")
    shadow, params = {"w": jnp.zeros(2)}, {"w": jnp.full(2, 1e6)}
    out = ema.ema_update(shadow, params, 1, decay=1 - 1e-9)
    assert_close(out["w"], np.full(2, 1e-3), "float32")


def _complex(real, imag):
    out = np.empty(real.shape, np.complex64)
    out.real, out.imag = real, imag
    return out


@pytest.mark.parametrize("decay", [0.0, 0.3, 0.5, 0.7, 0.999, 1.0])
def test_fast_leaf_math_equals_the_generic_path(decay):
    """The JAX blend (fewer operations) is pinned bit for bit to the generic Array API code,
    special values included, for every shadow/params dtype pair (a NaN's sign and payload
    aside: XLA builds and CPUs differ there)."""
    from ema_core.backends import generic
    from ema_core.backends.jax import _leaves

    rng = np.random.default_rng(3)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -5.5, 3e4], np.float32)
    pairs = [("float32", "float32"), ("float32", "bfloat16"), ("float16", "float16")]
    pairs += [("float32", "float16"), ("complex64", "complex64")]
    shadows, params = [], []
    for s_dtype, p_dtype in pairs:
        s = np.concatenate([special, rng.standard_normal(24).astype(np.float32), special[::-1]])
        p = np.concatenate([special[::-1], rng.standard_normal(24).astype(np.float32), special])
        if s_dtype == "complex64":
            s, p = _complex(s, p), _complex(p, -s)
        shadows.append(jnp.asarray(s).astype(s_dtype))
        params.append(jnp.asarray(p).astype(p_dtype))
    shadows.append(jnp.arange(5, dtype=jnp.int32))
    params.append(jnp.arange(5, 10, dtype=jnp.int32))
    kinds = ("float",) * len(pairs) + ("exact",)
    d, r = jnp.float32(decay), jnp.float32(1.0 - decay)

    @jax.jit
    def reference(s, p, d, r):
        return generic.update_leaves(jnp, s, p, kinds, d, r, non_float="copy", writes=[False] * 6)

    fast = _leaves.update_compiled(
        tuple(shadows), tuple(params), d, r, kinds=kinds, non_float="copy"
    )
    for got, want in zip(fast, reference(shadows, params, d, r), strict=True):
        assert_same_bits_nan_aside(got, want)


@pytest.fixture
def small_chunks(monkeypatch):
    """Trees of more than 3 arrays take the chunked path (chunks of 3 leaves)."""
    from ema_core.jax import _chunked

    monkeypatch.setattr(_chunked, "CHUNK", 3)


def _many(k=0.0):
    rng = np.random.default_rng(7)
    tree = {f"l{i}": jnp.asarray(rng.standard_normal(8) + k, jnp.float32) for i in range(10)}
    tree["h"] = jnp.asarray(rng.standard_normal(8) + k, jnp.bfloat16)
    tree["n"] = jnp.asarray(int(k), jnp.int32)
    return tree


@pytest.mark.parametrize("donate", [True, False])
def test_chunked_path_equals_the_single_jit(monkeypatch, compilations, donate):
    """Chunks of 3 leaves against one jit of the whole update: the same bits, and a second run
    over the same signatures compiles nothing."""
    from ema_core.jax import _chunked

    config = ema.Config(schedule=schedules.warmup(0.99), init="zeros")
    targets = [_many(k) for k in range(1, 8)]
    whole = make_update(config, donate=donate)
    single = ema.init(_many(), config)
    for target in targets:
        single = whole(single, target)
    monkeypatch.setattr(_chunked, "CHUNK", 3)
    step = make_update(config, donate=donate)
    runs = []
    for _ in range(2):
        state = ema.init(_many(), config)
        jax.block_until_ready(state)
        before = len(compilations)
        for target in targets:
            state = step(state, target)
        runs.append((state, len(compilations) - before))
    assert runs[0][1] >= 2  # the head and the chunk kernels were compiled ...
    assert runs[1][1] == 0  # ... once
    for a, b in zip(
        jax.tree_util.tree_leaves(runs[1][0]), jax.tree_util.tree_leaves(single), strict=True
    ):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_chunked_path_validates_before_donating(small_chunks):
    step = make_update(ema.Config(schedule=0.9))
    state = step(ema.init(_many()), _many(1.0))
    bad = {**_many(2.0), "l9": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"params\['l9'\] has shape \(3,\)"):
        step(state, bad)
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))
    state = step(state, _many(2.0))
    assert int(state.step) == 2


def test_make_update_runs_inside_an_outer_jit():
    """A make_update function called on tracers (inside the user's own ``jax.jit``) gives the
    same state as called eagerly: the state's placement is not read from a tracer."""
    update = make_update(ema.Config(schedule=0.9))
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    state = ema.init(params)

    @jax.jit
    def outer(state, params):
        return update(state, jax.tree.map(lambda x: x * 2.0, params))

    inside = outer(state, params)
    eager = update(ema.init(params), jax.tree.map(lambda x: x * 2.0, params))
    assert all(
        bool(jnp.array_equal(a, b))
        for a, b in zip(jax.tree.leaves(inside), jax.tree.leaves(eager), strict=True)
    )
