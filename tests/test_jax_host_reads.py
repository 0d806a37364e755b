"""The compiled JAX updates (``make_update`` on an ``EMAState`` and on a ``PackedState``, and
``make_bank_update``) read no array's value on the host in steady updates: a step the update
made itself is trusted. Reading a CPU array's value waits for the computation behind it (the
previous update), so one read per update would stop the host from queueing the next update
while the last one runs. A step the update did not make is still read and range-checked."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core.jax import make_bank_update, make_update, pack  # noqa: E402

CONFIG = ema.Config(schedule=0.9)


def _params(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.standard_normal((40, 40)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(5), jnp.bfloat16),
        "n": [jnp.asarray(rng.standard_normal(3), jnp.float32) for _ in range(4)],
    }


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the values of JAX arrays read on the host (``ArrayImpl._value``: what ``int``,
    ``float`` and ``np.asarray`` of a JAX array go through)."""
    from jax._src import array as jax_array

    value = jax_array.ArrayImpl._value
    count = [0]

    def counted(self: Any) -> Any:
        count[0] += 1
        return value.fget(self)

    monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(counted))
    yield count


def _updates() -> dict[str, tuple[Callable[[Any, Any], Any], Any]]:
    params = _params(0)
    bank = make_bank_update([CONFIG, ema.Config(schedule=0.5)])
    return {
        "unpacked": (make_update(CONFIG), ema.init(params, CONFIG)),
        "packed": (make_update(CONFIG), pack(ema.init(params, CONFIG))),
        "bank": (bank, bank.init(params)),
    }


@pytest.mark.parametrize("name", ["unpacked", "packed", "bank"])
def test_steady_updates_read_nothing_on_the_host(name: str, host_reads: list[int]) -> None:
    update, state = _updates()[name]
    state = update(state, _params(1))  # the first call checks the step it was given
    before = host_reads[0]
    for seed in range(2, 7):
        state = update(state, _params(seed))
    assert host_reads[0] == before, f"{host_reads[0] - before} host reads in 5 updates"
    steps = [s.step for s in state] if name == "bank" else [state.step]
    assert [int(t) for t in steps] == [6] * len(steps)


@pytest.mark.parametrize("name", ["unpacked", "packed"])
def test_a_step_it_did_not_make_is_still_read_and_checked(name: str, host_reads: list[int]) -> None:
    update, state = _updates()[name]
    state = update(state, _params(1))
    before = host_reads[0]
    state = update(state._replace(step=jnp.asarray(1, jnp.int32)), _params(2))  # made by hand
    assert host_reads[0] > before
    assert int(state.step) == 2
    bad = state._replace(step=jnp.asarray(-1, jnp.int32))
    with pytest.raises(ValueError, match=r"state\.step"):
        update(bad, _params(3))
    arrays = jax.tree_util.tree_leaves(bad)
    assert not any(x.is_deleted() for x in arrays)  # refused before anything was donated


def test_a_packed_step_from_another_update_is_checked() -> None:
    first, second = make_update(CONFIG), make_update(CONFIG)
    state = first(pack(ema.init(_params(0), CONFIG)), _params(1))
    state = second(state, _params(2))  # not made by `second`: read, valid
    assert int(state.step) == 2
    state = first(state, _params(3))  # `first` made an older step, not this one
    assert int(state.step) == 3
