"""A ``PackedState`` handed where an ``EMAState`` is expected (``average``, ``update``, a bank,
a checkpoint, ``pack`` again) is refused with the way out (``unpack``), and a packed state
fetched with ``jax.device_get`` unpacks to an ``EMAState`` of numpy arrays, as the unpacked
state would fetch, that ``make_update`` takes on again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core import checkpoint  # noqa: E402
from ema_core.jax import PackedState, make_bank_update, make_update, pack, unpack  # noqa: E402

CONFIG = ema.Config(schedule=0.75)
HINT = r"a packed state: ema_core\.jax\.unpack\(state\) gives its EMAState"


def _params(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.standard_normal((70, 70)), jnp.float32),  # loose
        "b": jnp.asarray(rng.standard_normal(5), jnp.bfloat16),  # packed
        "c": jnp.asarray(rng.standard_normal((2, 3)), jnp.float32),  # packed
        "n": jnp.asarray(seed, jnp.int32),  # loose (an integer)
    }


def _packed() -> PackedState:
    return make_update(CONFIG)(pack(ema.init(_params(0), CONFIG)), _params(1))


def test_where_an_ema_state_is_expected_the_hint_names_unpack(tmp_path: Path) -> None:
    state = _packed()
    calls = {
        "average": lambda: ema.average(state, CONFIG),
        "update": lambda: ema.update(state, _params(2), CONFIG),
        "bank": lambda: make_bank_update([CONFIG])([state], _params(2)),
        "checkpoint": lambda: checkpoint.save(tmp_path / "ema.safetensors", state, CONFIG),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=HINT):
            call()
        assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state)), name
    assert not list(tmp_path.iterdir())
    with pytest.raises(TypeError, match=r"got PackedState \(already packed\)"):
        pack(state)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"state must be an EMAState.*got dict$"):
        ema.average({"step": 1}, CONFIG)  # no hint for what is not a packed state


def test_a_fetched_packed_state_unpacks_to_numpy_and_updates_on() -> None:
    state = _packed()
    on_device = unpack(state)
    host = jax.device_get(state)
    before = [np.array(x) for x in (*host.flats, *host.loose)]
    fetched = unpack(host)
    assert type(fetched.shadow["w"]) is np.ndarray and type(fetched.shadow["b"]) is np.ndarray
    for key, x in on_device.shadow.items():
        y = fetched.shadow[key]
        assert y.shape == x.shape and y.dtype == x.dtype, key
        np.testing.assert_array_equal(y, np.asarray(x))
    fetched.shadow["c"][0, 0] = 123.0  # a copy: the fetched flat buffer is not written
    fetched.shadow["w"][0, 0] = 123.0
    for x, kept in zip((*host.flats, *host.loose), before, strict=True):
        np.testing.assert_array_equal(x, kept)
    update = make_update(CONFIG)
    again = update(unpack(jax.device_get(state)), _params(2))  # numpy state: placed, updated
    expected = make_update(CONFIG)(on_device, _params(2))
    for key in expected.shadow:
        np.testing.assert_array_equal(
            np.asarray(again.shadow[key]), np.asarray(expected.shadow[key])
        )
    assert int(again.step) == int(expected.step) == 2


def test_arrays_swapped_into_a_packed_state_are_refused_by_name() -> None:
    update = make_update(CONFIG)
    state = update(pack(ema.init(_params(0), CONFIG)), _params(1))
    shapes = state.layout.shapes
    w = state.layout.loose.index(next(i for i, s in enumerate(shapes) if s == (70, 70)))
    loose, flats = list(state.loose), list(state.flats)
    swaps = {
        rf"state\.loose\[{w}\] has shape \(4900,\) and dtype float16, but the packed layout "
        r"holds shape \(4900,\) and dtype float32": state._replace(
            loose=tuple(jnp.zeros(4900, jnp.float16) if j == w else x for j, x in enumerate(loose))
        ),
        rf"state\.loose\[{w}\] has shape \(5,\)": state._replace(
            loose=tuple(jnp.zeros(5) if j == w else x for j, x in enumerate(loose))
        ),
        r"state\.flats\[0\] has shape \(7,\)": state._replace(
            flats=(jnp.zeros(7, flats[0].dtype), *flats[1:])
        ),
        r"holds 1 flat buffers and 1 loose shadows, but its layout \d+ and 2": state._replace(
            flats=flats[:1], loose=tuple(loose[:1])
        ),
    }
    for message, bad in swaps.items():
        with pytest.raises(ValueError, match=message):
            update(bad, _params(2))
        assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(bad)), message
    unraveled = state._replace(
        loose=tuple(x.reshape(70, 70) if j == w else x for j, x in enumerate(loose))
    )
    after = update(unraveled, _params(2))  # a leaf in its own shape: the layout before raveling
    assert int(after.step) == 2


def test_a_packed_state_saves_and_loads_as_its_ema_state(tmp_path: Path) -> None:
    """``state_dict`` of a packed state is that of the ``EMAState`` it packs (names by path), so
    one ``.npz`` file loads into either form; loaded into a packed ``like`` (even one whose
    buffers were donated since), it comes back in ``like``'s layout and updates on."""
    from ema_core.jax import load_state_dict, state_dict

    update = make_update(CONFIG)
    packed = update(pack(ema.init(_params(0), CONFIG), most=100), _params(1))
    saved = state_dict(packed)
    plain = unpack(packed)
    assert saved.keys() == state_dict(plain).keys() and "shadow/w" in saved
    for name, value in state_dict(plain).items():
        np.testing.assert_array_equal(saved[name], value)
    np.savez(tmp_path / "ema.npz", **saved)
    arrays = dict(np.load(tmp_path / "ema.npz"))
    like = update(packed, _params(2))  # packed's arrays are donated now (the flat buffer that
    # state_dict read through numpy is not: JAX does not donate a buffer numpy still sees)
    assert packed.step.is_deleted() and packed.weight.is_deleted() and packed.loose[0].is_deleted()
    back = load_state_dict(arrays, packed)
    assert isinstance(back, PackedState) and back.layout == packed.layout
    assert [x.shape for x in back.loose] == [x.shape for x in like.loose]
    for got, want in zip(
        jax.tree_util.tree_leaves(unpack(back)), jax.tree_util.tree_leaves(plain), strict=True
    ):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    unpacked = load_state_dict(arrays, unpack(like))  # the same file, into an EMAState
    assert isinstance(unpacked, ema.EMAState) and int(unpacked.step) == 1
    again = make_update(CONFIG)(back, _params(2))
    expected = make_update(CONFIG)(plain, _params(2))
    for got, want in zip(
        jax.tree_util.tree_leaves(unpack(again)), jax.tree_util.tree_leaves(expected), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_unpack_gives_copies_that_either_update_leaves_whole() -> None:
    """``unpack``'s arrays are its own (a loose 1-d shadow reshaped to the shape it has, the
    step and the weight were the packed state's very arrays): donating updates of the packed
    state leave an unpacked copy taken before whole, and the other way round."""
    params = {**_params(1), "v": jnp.arange(5000.0)}  # a 1-d loose leaf: its shape kept
    packed = make_update(CONFIG)(pack(ema.init(params, CONFIG)), params)
    taken = unpack(packed)
    before = jax.tree_util.tree_map(np.asarray, taken)
    update = make_update(CONFIG)
    for step in range(2, 4):
        packed = update(packed, _params(step) | {"v": params["v"] + step})
    for x, y in zip(
        jax.tree_util.tree_leaves(taken), jax.tree_util.tree_leaves(before), strict=True
    ):
        assert not x.is_deleted()
        np.testing.assert_array_equal(np.asarray(x), y)
    kept = jax.tree_util.tree_map(np.asarray, packed)
    taken = update(taken, params)  # the unpacked state donated: the packed one stays whole
    assert int(taken.step) == 2
    for x, y in zip(
        jax.tree_util.tree_leaves(packed), jax.tree_util.tree_leaves(kept), strict=True
    ):
        assert not x.is_deleted()
        np.testing.assert_array_equal(np.asarray(x), y)
