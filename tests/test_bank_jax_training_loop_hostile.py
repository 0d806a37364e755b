"""The JAX bank (``make_bank_update``) inside real training loops: a jitted optax train step with
the bank updated inside or outside the jit, donation, ``lax.scan`` over the steps, bf16 params
with float32 shadows, params that change between calls, a resume from the host or a checkpoint
file (with ``snapshot_every`` mid-period), snapshots during training then ``reconstruct``, reads
interleaved with updates, and params sharded over two CPU devices."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")

import ema_core as ema  # noqa: E402
from ema_core.jax import make_bank_update, make_update  # noqa: E402
from ema_core.posthoc import list_snapshots, reconstruct  # noqa: E402
from tests.two_cpu_devices import run_on_two_cpu_devices  # noqa: E402

SIGMAS = (0.05, 0.10)
MIXED = (
    ema.Config(schedule=ema.schedules.power_function(sigma_rel=0.05), init="copy"),
    ema.Config(schedule=ema.schedules.warmup(0.99), init="zeros", interval=2, compensate=False),
    ema.Config(schedule=0.9, dtype="same"),
)
OPT = optax.sgd(1e-2, momentum=0.9)
N = 8  # training steps of the shared reference runs


def _params(dtype: Any = jnp.float32) -> dict[str, Any]:
    """A small model: a weight matrix, a bias and a nested block."""
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.standard_normal((4, 3)), dtype),
        "b": jnp.asarray(rng.standard_normal(3), dtype),
        "block": {"k": jnp.asarray(rng.standard_normal(5), dtype)},
    }


def _batches(n: int) -> list[Any]:
    """``n`` inputs; a shorter run's inputs are the first of a longer one's."""
    rng = np.random.default_rng(1)
    return [jnp.asarray(rng.standard_normal(4), jnp.float32) for _ in range(n)]


def _loss(params: Any, x: Any) -> Any:
    """A loss that moves every leaf, computed in float32 for bf16 params too."""
    out = x.astype(params["w"].dtype) @ params["w"] + params["b"]
    return jnp.sum(out.astype(jnp.float32) ** 2) + jnp.sum(params["block"]["k"] ** 2)


def _sgd(params: Any, opt_state: Any, x: Any) -> tuple[Any, Any]:
    """One optax step: the params and optimizer state after it."""
    grads = jax.grad(_loss)(params, x)
    updates, opt_state = OPT.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _bits(tree: Any) -> list[tuple[Any, Any, bytes]]:
    """Every leaf as (dtype, shape, bytes), for bit-for-bit comparison."""
    return [
        (np.asarray(x).dtype, np.asarray(x).shape, np.asarray(x).tobytes())
        for x in jax.tree_util.tree_leaves(tree)
    ]


@functools.cache
def _trajectory(n: int, dtype: Any = jnp.float32) -> tuple[Any, ...]:
    """The params after each of ``n`` jitted optax steps (computed once per length and dtype)."""
    step = jax.jit(_sgd)
    params = _params(dtype)
    opt_state, seen = OPT.init(params), []
    for x in _batches(n):
        params, opt_state = step(params, opt_state, x)
        seen.append(params)
    return tuple(seen)


@functools.cache
def _bank() -> Any:
    """One donating bank of ``MIXED`` shared by the tests (each new bank compiles again)."""
    return make_bank_update(MIXED)


@functools.cache
def _keeping_bank() -> Any:
    """The same bank with ``donate=False``: the reference for calls on states kept alive."""
    return make_bank_update(MIXED, donate=False)


@functools.cache
def _outside_run(n: int, dtype: Any = jnp.float32) -> Any:
    """The reference: the bank called outside the jit after each optax step."""
    bank = _bank()
    states = bank.init(_params(dtype))
    for params in _trajectory(n, dtype):
        states = bank(states, params)
    return states


@functools.cache
def _separate(n: int, dtype: Any = jnp.float32) -> Any:
    """The same trajectory tracked by K separate ``make_update`` s."""
    updates = [make_update(c, donate=False) for c in MIXED]
    states = [ema.init(_params(dtype), c) for c in MIXED]
    for params in _trajectory(n, dtype):
        states = [u(s, params) for u, s in zip(updates, states, strict=True)]
    return states


def test_bank_inside_a_donating_train_step_equals_the_bank_outside_the_jit() -> None:
    """A train step jitted with the params, optax state and bank states all donated gives the
    bits of the optax step followed by the bank outside the jit, and of K ``make_update`` s."""
    bank = _bank()

    def train_step(params: Any, opt_state: Any, states: Any, x: Any) -> Any:
        params, opt_state = _sgd(params, opt_state, x)
        return params, opt_state, bank(states, params)

    train_step = jax.jit(train_step, donate_argnums=(0, 1, 2))
    params = _params()
    opt_state, states = OPT.init(params), bank.init(params)
    for x in _batches(N):
        before = jax.tree_util.tree_leaves(states)
        params, opt_state, states = train_step(params, opt_state, states, x)
        assert all(leaf.is_deleted() for leaf in before)
    assert _bits(params) == _bits(_trajectory(N)[-1])
    assert _bits(states) == _bits(_outside_run(N)) == _bits(_separate(N))


def test_lax_scan_over_the_steps_starting_from_init_equals_the_python_loop() -> None:
    """``bank.init`` states are a valid ``lax.scan`` carry (the update returns the carry's
    dtypes and weak types), and the scanned run equals the Python loop bit for bit."""
    bank = _bank()

    def body(carry: Any, x: Any) -> tuple[Any, None]:
        params, opt_state, states = carry
        params, opt_state = _sgd(params, opt_state, x)
        return (params, opt_state, bank(states, params)), None

    params = _params()
    carry = (params, OPT.init(params), bank.init(params))
    (params, _, states), _ = jax.jit(lambda c, xs: jax.lax.scan(body, c, xs))(
        carry, jnp.stack(_batches(N))
    )
    assert [int(s.step) for s in states] == [N] * 3
    assert _bits(params) == _bits(_trajectory(N)[-1])
    assert _bits(states) == _bits(_outside_run(N))


def test_bf16_params_train_with_float32_shadows_bit_for_bit() -> None:
    """bf16 params: the default configs keep float32 shadows and averages, ``dtype="same"``
    keeps bf16 and every step stays int32."""
    states = _outside_run(N, jnp.bfloat16)
    params = _trajectory(N, jnp.bfloat16)[-1]
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params))
    shadow_dtypes = [{x.dtype for x in jax.tree_util.tree_leaves(s.shadow)} for s in states]
    assert shadow_dtypes == [{jnp.dtype("float32")}] * 2 + [{jnp.dtype("bfloat16")}]
    assert all(s.step.dtype == jnp.int32 for s in states)
    averages = _bank().averages(states)
    assert {x.dtype for x in jax.tree_util.tree_leaves(averages[:2])} == {jnp.dtype("float32")}


def _bad_params() -> dict[str, Any]:
    """Params a training loop could hand over by mistake, each changed in one way."""
    good = _params()
    return {
        "extra key": {**good, "c": jnp.ones(2)},
        "missing key": {"w": good["w"], "b": good["b"]},
        "list for dict": [good["w"], good["b"], good["block"]],
        "shape": {**good, "w": good["w"].T},
        "int for float": {**good, "b": jnp.arange(3)},
        "str leaf": {**good, "block": {"k": "weights"}},
    }


@pytest.mark.parametrize("case", list(_bad_params()))
def test_params_that_changed_are_refused_and_the_run_goes_on_as_if_never_called(case: str) -> None:
    """Params whose structure, shape or dtype changed mid-run are a ValueError/TypeError naming
    ``params``; no state is donated, and the run continues to the bits of a run without it."""
    bank = _bank()
    states = bank.init(_params())
    for i, params in enumerate(_trajectory(N)):
        if i == 2:
            with pytest.raises((ValueError, TypeError), match=r"params"):
                bank(states, _bad_params()[case])
            assert not any(a.is_deleted() for a in jax.tree_util.tree_leaves(states))
        states = bank(states, params)
    assert _bits(states) == _bits(_outside_run(N))


def test_resume_from_a_pickled_host_copy_mid_snapshot_period_equals_the_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """States taken to the host (``jax.device_get``), pickled and given to a new bank between
    two snapshot steps continue bit for bit, and the snapshots the new bank writes (its host
    count read from the resumed steps) are the uninterrupted run's files byte for byte."""
    folder = tmp_path / "snapshots"
    first = make_bank_update(sigma_rels=SIGMAS, snapshot_every=3, snapshot_dir=folder)

    def run(resume_at: int | None) -> Any:
        bank, states = first, first.init(_params())  # init states are new to the bank
        for i, params in enumerate(_trajectory(N), start=1):
            states = bank(states, params)
            if i == resume_at:  # a new process: a new bank and states from the pickle
                states = pickle.loads(pickle.dumps(jax.device_get(states)))
                bank = make_bank_update(sigma_rels=SIGMAS, snapshot_every=3, snapshot_dir=folder)
        return states

    whole = run(None)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    for p in folder.iterdir():
        p.unlink()
    resumed = run(4)
    assert _bits(resumed) == _bits(whole)
    assert sorted({i.step for i in list_snapshots(folder)}) == [3, 6]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files


def test_resume_through_checkpoint_files_continues_bit_for_bit(tmp_path: Path) -> None:
    """Each EMA saved with ``ema_core.checkpoint.save`` and loaded into a fresh bank's ``init``
    states continues the run to the bits of the uninterrupted one."""
    from ema_core.checkpoint import load, save

    bank = _bank()
    states = bank.init(_params())
    for params in _trajectory(N)[:5]:
        states = bank(states, params)
    for k, (state, config) in enumerate(zip(states, MIXED, strict=True)):
        save(tmp_path / f"ema-{k}.safetensors", state, config)
    fresh = _bank()  # a new process would build it anew; the loaded states are new to it
    like = fresh.init(_params())
    states = tuple(
        load(tmp_path / f"ema-{k}.safetensors", s, config=c)
        for k, (s, c) in enumerate(zip(like, MIXED, strict=True))
    )
    for params in _trajectory(N)[5:]:
        states = fresh(states, params)
    assert _bits(states) == _bits(_outside_run(N))


def test_snapshots_during_training_reconstruct_into_the_params_tree(tmp_path: Path) -> None:
    """Snapshots written every 2 steps of a bf16 run reconstruct, with ``like=params``, into
    the params' own tree of bf16 JAX arrays; at a tracked sigma_rel the result is that EMA's
    average to bf16 precision."""
    bank = make_bank_update(sigma_rels=SIGMAS, snapshot_every=2, snapshot_dir=tmp_path)
    states = bank.init(_params(jnp.bfloat16))
    for params in _trajectory(N, jnp.bfloat16):
        states = bank(states, params)
    assert len(list_snapshots(tmp_path)) == 8
    assert list_snapshots(tmp_path)[0].names == ("b", "block/k", "w")
    rebuilt = reconstruct(tmp_path, [0.10, 0.07], like=params)
    assert jax.tree_util.tree_structure(rebuilt[0.10]) == jax.tree_util.tree_structure(params)
    assert all(
        isinstance(x, jax.Array) and x.dtype == jnp.bfloat16
        for x in jax.tree_util.tree_leaves(rebuilt)
    )
    averages = bank.averages(states)
    for got, want in zip(
        jax.tree_util.tree_leaves(rebuilt[0.10]),
        jax.tree_util.tree_leaves(averages[1]),
        strict=True,
    ):
        np.testing.assert_allclose(
            np.asarray(got, np.float32), np.asarray(want), rtol=2**-7, atol=1e-3
        )


def test_a_snapshot_bank_inside_jit_or_scan_is_refused_by_name(tmp_path: Path) -> None:
    """A bank with ``snapshot_every`` writes files: called under ``jax.jit`` or ``lax.scan`` it
    is a TypeError saying to call it outside jax.jit."""
    bank = make_bank_update(sigma_rels=SIGMAS, snapshot_every=2, snapshot_dir=tmp_path / "s")
    params = _params()
    states = bank.init(params)
    with pytest.raises(TypeError, match=r"outside jax\.jit"):
        jax.jit(bank)(states, params)
    with pytest.raises(TypeError, match=r"outside jax\.jit"):
        jax.lax.scan(lambda s, _: (bank(s, params), None), states, None, length=2)
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())
    assert not any(a.is_deleted() for a in jax.tree_util.tree_leaves(states))


def test_reads_interleaved_with_donating_updates_leave_the_run_unchanged() -> None:
    """Copied ``averages`` read after every donating update do not change the run, and the last
    read equals the K ``make_update`` s' averages; the shadow-aliasing read of a donated state
    is then the documented ValueError naming the deleted weight."""
    bank = _bank()
    states = bank.init(_params())
    reads: list[Any] = []
    for params in _trajectory(N):
        states = bank(states, params)
        reads.append(jax.tree_util.tree_map(jnp.copy, bank.averages(states)))
    assert _bits(states) == _bits(_outside_run(N))
    want = [ema.average(s, c) for s, c in zip(_separate(N), MIXED, strict=True)]
    assert _bits(reads[-1]) == _bits(want)
    old, states = states, bank(states, params)
    with pytest.raises(ValueError, match=r"weight was deleted"):
        bank.averages(old)


def test_a_list_of_states_is_taken_and_a_tuple_comes_back() -> None:
    """States kept in a list (as a user's checkpoint loader may build them) are updated as the
    tuple would be; the bank returns a tuple."""
    bank = _bank()
    states = bank.init(_params())
    for params in _trajectory(N):
        states = bank(list(states), params)
        assert isinstance(states, tuple)
    assert _bits(states) == _bits(_outside_run(N))


def test_training_restarted_from_an_ema_average_that_aliases_its_shadow() -> None:
    """Params taken from ``bank.averages`` (the shadow arrays themselves, see "Choices") and
    given back to the donating bank, as a restart from the EMA weights does, are copied before
    donating: the call equals one with a copy of them, and the states it returns are alive."""
    bank = _bank()
    states = bank.init(_params())
    for params in _trajectory(N)[:3]:
        states = bank(states, params)
    params = bank.averages(states)[0]
    assert params["w"] is states[0].shadow["w"]  # the documented aliasing
    copied = jax.tree_util.tree_map(jnp.copy, params)
    want = _keeping_bank()(states, copied)
    got = bank(states, params)
    assert _bits(got) == _bits(want)
    assert _bits(bank(got, copied)) == _bits(_keeping_bank()(want, copied))


def _shared_states(how: str) -> tuple[Any, ...]:
    """Two states that share arrays: one state warm-starting both EMAs, or states built by hand
    around one step array."""
    params = _params()
    if how == "one state twice":
        return (ema.init(params, SHARED[0]),) * 2
    step = jnp.asarray(0)
    return tuple(ema.EMAState(step, ema.init(params, c).shadow, jnp.asarray(1.0)) for c in SHARED)


SHARED = (ema.Config(schedule=0.9), ema.Config(schedule=0.5))


@pytest.mark.parametrize("how", ["one state twice", "one step array"])
def test_states_sharing_arrays_are_updated_or_refused_by_name(how: str) -> None:
    """States that share arrays (every EMA warm-started from one loaded state, ``(state,) * K``,
    or hand-built around one ``jnp.asarray(0)`` step) are either updated as separate copies
    would be (copied before donating, as a shadow that is the params' own arrays is), or
    refused by a ValueError naming ``states[1]``; nothing is donated either way."""
    bank = make_bank_update(SHARED)
    states = _shared_states(how)
    try:
        out = bank(states, _params())
    except ValueError as error:
        assert "states[1]" in str(error)
        assert not any(a.is_deleted() for a in jax.tree_util.tree_leaves(states))
        return
    fresh = _shared_states(how)
    want = [make_update(c, donate=False)(s, _params()) for c, s in zip(SHARED, fresh, strict=True)]
    assert _bits(out) == _bits(want)


def test_one_ema_reset_to_the_params_mid_run_is_copied_before_donating() -> None:
    """timm's reset of one EMA to the current weights (``state._replace(shadow=params)``), then
    the donating bank's update with those params, leaves the params alive and equals a reset
    to a copy of them."""
    bank = _bank()
    trajectory = _trajectory(N)
    states = bank.init(_params())
    for params in trajectory[:4]:
        states = bank(states, params)
    params = trajectory[4]
    copied = states[1]._replace(shadow=jax.tree_util.tree_map(jnp.copy, params))
    want = _keeping_bank()((states[0], copied, states[2]), params)
    got = bank((states[0], states[1]._replace(shadow=params), states[2]), params)
    assert not any(a.is_deleted() for a in jax.tree_util.tree_leaves(params))
    assert _bits(got) == _bits(want)


def test_a_numpy_float64_shadow_swapped_in_after_an_update_is_refused() -> None:
    """README "Errors": a numpy float64 shadow leaf given to a JAX bank while x64 is off is a
    TypeError naming the leaf (jit would narrow it), also when the user swapped it into a state
    the bank returned (``state._replace(shadow=...)``, a reset to the weights)."""
    if jax.config.jax_enable_x64:
        pytest.skip("x64 is on")
    bank = make_bank_update(sigma_rels=SIGMAS)
    params = {"w": jnp.arange(3.0)}
    states = bank(bank.init(params), params)
    reset = {"w": np.full(3, 1 / 3)}  # numpy float64, e.g. loaded pretrained weights
    states = tuple(s._replace(shadow=reset) for s in states)
    with pytest.raises(TypeError, match=r"states\[0\]\.shadow\['w'\] has dtype float64"):
        bank(states, params)


def test_make_update_of_a_state_holding_one_array_twice_updates_each_name() -> None:
    """A single ``make_update`` state whose shadow holds one committed array under two names
    (an EMA built by hand from one loaded tensor) is updated as two separate arrays would be:
    the repeat is copied before donating, never JAX's "donate the same buffer twice"."""
    params = {"a": jnp.ones(3), "b": jnp.full(3, 2.0)}
    copies = {"a": jnp.arange(3.0), "b": jnp.arange(3.0)}
    apart = ema.EMAState(jnp.asarray(0), copies, jnp.asarray(1.0))
    want = make_update(ema.Config(schedule=0.5), donate=False)(apart, params)
    shared = jax.device_put(jnp.arange(3.0), jax.devices()[0])
    state = ema.EMAState(jnp.asarray(0), {"a": shared, "b": shared}, jnp.asarray(1.0))
    got = make_update(ema.Config(schedule=0.5))(state, params)
    assert _bits(got) == _bits(want)


def test_make_update_refuses_a_numpy_float64_shadow_swapped_in_beside_its_own_step() -> None:
    """``make_update``'s state after an update with a numpy float64 shadow swapped in (the
    step is the one it returned) is the TypeError an unknown state gets, not narrowed."""
    if jax.config.jax_enable_x64:
        pytest.skip("x64 is on")
    update = make_update(ema.Config(schedule=0.5))
    params = {"w": jnp.arange(3.0)}
    state = update(ema.init(params, ema.Config(schedule=0.5)), params)
    reset = state._replace(shadow={"w": np.full(3, 1 / 3)})
    with pytest.raises(TypeError, match=r"state\.shadow\['w'\] has dtype float64"):
        update(reset, params)
    assert not reset.step.is_deleted()  # refused before the donating call


TWO_DEVICES = """
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ema_core as ema
from ema_core.jax import make_bank_update

mesh = Mesh(np.array(jax.devices()), ("d",))
split, whole = NamedSharding(mesh, P("d")), NamedSharding(mesh, P())
opt = optax.sgd(0.1)
rng = np.random.default_rng(0)
host = {"w": rng.standard_normal((4, 3)).astype(np.float32),
        "b": rng.standard_normal(3).astype(np.float32)}

def sgd(params, opt_state, x):
    grads = jax.grad(lambda p: jnp.sum((x @ p["w"] + p["b"]) ** 2))(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

bank = make_bank_update(sigma_rels=(0.05, 0.10))
params = {"w": jax.device_put(host["w"], split), "b": jax.device_put(host["b"], whole)}
opt_state, states = opt.init(params), bank.init(params)
step = jax.jit(sgd)
seen = []
for i in range(6):
    params, opt_state = step(params, opt_state, jnp.full(4, 0.1 * i, jnp.float32))
    states = bank(states, params)
    seen.append(jax.device_get(params))
for s in states:
    assert s.shadow["w"].sharding.is_equivalent_to(split, 2), s.shadow["w"].sharding
    assert s.shadow["b"].sharding.is_equivalent_to(whole, 1), s.shadow["b"].sharding
one = make_bank_update(sigma_rels=(0.05, 0.10))
want = one.init(jax.device_put(host, jax.devices()[0]))
for p in seen:
    want = one(want, jax.device_put(p, jax.devices()[0]))
for a, b in zip(jax.tree.leaves(states), jax.tree.leaves(want)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
print("TWO DEVICES OK")
"""


def test_params_sharded_over_two_cpu_devices_keep_their_shardings_and_bits() -> None:
    """Params split over two CPU devices (one sharded, one replicated leaf): every shadow keeps
    its param's sharding, and the EMAs equal a bank fed the same params on one device."""
    run_on_two_cpu_devices(TWO_DEVICES, "TWO DEVICES OK")
