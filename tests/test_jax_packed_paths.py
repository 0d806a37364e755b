"""The two ways ``make_update`` runs a ``PackedState``: up to ``CHUNK`` params in one compiled
call that donates the whole state (the decay, every block and every loose shadow), and past it
a head, one call per block into a new buffer and the loose shadows in donated chunks. Both give
the unpacked update's bits; each donates what it says and nothing when it refuses."""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core.jax import (  # noqa: E402
    PackedState,
    _packed,
    _packed_update,
    make_update,
    pack,
    unpack,
)
from tests.two_cpu_devices import run_on_two_cpu_devices  # noqa: E402

CONFIG = ema.Config(schedule=ema.schedules.warmup(0.99, power=0.75))


def _params(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)

    def f(*shape: int, dtype: Any = jnp.float32) -> Any:
        return jnp.asarray(rng.standard_normal(shape), dtype)

    return {
        "big": f(70, 70),
        "wide": f(3, 40, 40, dtype=jnp.bfloat16),
        "small": [f(5) for _ in range(6)],
        "half": f(4, dtype=jnp.float16),
        "count": jnp.asarray(seed, jnp.int32),
    }


def _deleted(state: PackedState) -> dict[str, bool]:
    return {
        "step": state.step.is_deleted(),
        "flats": any(x.is_deleted() for x in state.flats),
        "loose": any(x.is_deleted() for x in state.loose),
        "weight": state.weight.is_deleted(),
    }


def _bits(a: Any, b: Any) -> None:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))


WHOLE = {"step": True, "flats": True, "loose": True, "weight": True}
CHUNKS = {"step": False, "flats": False, "loose": True, "weight": False}
KEPT = dict.fromkeys(WHOLE, False)


@pytest.mark.parametrize(
    ("chunk", "donate", "gone"),
    [(1024, True, WHOLE), (3, True, CHUNKS), (1024, False, KEPT), (3, False, KEPT)],
    ids=["one-call", "chunks", "one-call-kept", "chunks-kept"],
)
def test_both_paths_give_the_unpacked_bits_and_donate_what_they_say(
    monkeypatch: pytest.MonkeyPatch, chunk: int, donate: bool, gone: dict[str, bool]
) -> None:
    monkeypatch.setattr(_packed_update, "CHUNK", chunk)  # 10 params: past 3, chunks
    monkeypatch.setattr(_packed, "BLOCK", 4)  # 7 small shadows: two blocks
    plain, update_plain = ema.init(_params(0), CONFIG), make_update(CONFIG)
    packed, update = (
        pack(ema.init(_params(0), CONFIG), most=100),
        make_update(CONFIG, donate=donate),
    )
    assert len(packed.flats) == 2 and len(packed.loose) == 3  # big, wide, count
    for seed in range(1, 5):
        before = packed
        packed = update(packed, _params(seed))
        plain = update_plain(plain, _params(seed))
        _bits(unpack(packed), plain)
        assert _deleted(before) == gone
    assert int(packed.step) == 4


@pytest.mark.parametrize("chunk", [1024, 3], ids=["one-call", "chunks"])
def test_a_deleted_param_of_a_block_is_named_and_nothing_is_donated(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(_packed_update, "CHUNK", chunk)
    update = make_update(CONFIG)
    packed = update(pack(ema.init(_params(0), CONFIG), most=100), _params(1))
    dead = _params(2)
    dead["small"][2].delete()
    with pytest.raises(ValueError, match=r"params\['small'\]\[2\] was deleted"):
        update(packed, dead)
    assert _deleted(packed) == KEPT
    assert int(update(packed, _params(2)).step) == 2  # the same state goes on


def test_pack_copies_the_step_and_weight_too() -> None:
    """The one-call path donates the step and the weight: ``pack`` copies them, so the state
    given to it stays whole."""
    state = make_update(CONFIG)(ema.init(_params(0), CONFIG), _params(1))
    packed = pack(state, most=100)
    assert packed.step is not state.step and packed.weight is not state.weight
    make_update(CONFIG)(packed, _params(2))
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))
    assert int(state.step) == 1


def test_params_on_another_device_are_named_on_both_paths() -> None:
    """A param committed to another device than the state's is named with nothing donated:
    on the one-call path and on a block's call when that call fails, and for a loose param of
    the longer path before its first donated chunk."""
    run_on_two_cpu_devices(
        textwrap.dedent(
            """
            import jax, jax.numpy as jnp
            import ema_core as ema
            from ema_core.jax import _packed_update, make_update, pack
            d0, d1 = jax.devices()[:2]
            config = ema.Config(schedule=0.5)
            big = {"big": jnp.zeros((70, 70)), "big2": jnp.zeros((80, 80))}
            params = {**big, "small": [jnp.zeros(3) for _ in range(4)]}
            for chunk in (1024, 1):  # one call; then a head, blocks and two loose chunks
                _packed_update.CHUNK = chunk
                update = make_update(config)
                state = jax.device_put(ema.init(params, config), d1)
                packed = update(pack(state), jax.device_put(params, d1))
                for name in ("big2", "small"):  # big2: the second loose chunk
                    moved = jax.device_put(params, d1)
                    if name == "big2":
                        moved["big2"] = jax.device_put(moved["big2"], d0)
                    else:
                        moved["small"][2] = jax.device_put(moved["small"][2], d0)
                    try:
                        update(packed, moved)
                        raise AssertionError("not refused")
                    except ValueError as err:
                        want = "params['big2']" if name == "big2" else "params['small'][2]"
                        assert f"{want} is on" in str(err), (chunk, name, err)
                        assert "nothing was donated" in str(err), err
                    leaves = jax.tree_util.tree_leaves(packed)
                    assert not any(x.is_deleted() for x in leaves), (chunk, name)
                assert int(update(packed, jax.device_put(params, d1)).step) == 2
            print("PATHS-DEVICES-OK")
            """
        ),
        "PATHS-DEVICES-OK",
    )


@pytest.mark.parametrize("chunk", [1024, 3], ids=["one-call", "chunks"])
def test_inside_an_outer_jit_with_donation_equals_outside(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """``jax.jit(make_update(config))`` on a packed state (the donating update traced inside
    another jit: its donations are the outer call's business) gives the bits of the update
    called outside, on both paths, with no warning."""
    monkeypatch.setattr(_packed_update, "CHUNK", chunk)
    outside = make_update(CONFIG)(pack(ema.init(_params(0), CONFIG), most=100), _params(1))
    inside = jax.jit(make_update(CONFIG))(pack(ema.init(_params(0), CONFIG), most=100), _params(1))
    _bits(unpack(inside), unpack(outside))
    assert int(inside.step) == 1
