"""``make_update(config).lower(state, params)`` takes a ``PackedState`` too (it refused one,
saying "state must be an EMAState"): the lowered call is the packed update's one compiled
call over the flat buffers, checked as the update checks its arguments."""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core.jax import make_update, pack  # noqa: E402


def _params() -> dict[str, object]:
    return {f"p{i}": jnp.full((3,), float(i)) for i in range(5)}


def test_lower_of_a_packed_state_is_its_one_compiled_call() -> None:
    config = ema.Config(schedule=0.9)
    params = _params()
    update = make_update(config)
    state = pack(ema.init(params, config))
    text = update.lower(state, params).compile().as_text()
    assert "all-reduce" not in text and "fusion" in text
    before = [x.copy() for x in state.flats]
    new = update(state, params)  # lowering donated nothing: the state still updates
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(new.flats, before, strict=True))


def test_lower_of_a_packed_state_checks_the_params_by_path() -> None:
    config = ema.Config(schedule=0.9)
    params = _params()
    state = pack(ema.init(params, config))
    with pytest.raises(ValueError, match=r"p4"):
        make_update(config).lower(state, {**params, "p4": jnp.ones(4)})
