"""make_update under hostile but realistic inputs: host scalars in the state, malformed scalars,
guard_finite, and refusals that must leave the donated state alive."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core.jax import _chunked, make_update  # noqa: E402

HALF = ema.Config(schedule=0.5)
CHUNK = 4  # chunks of 4 here (1024 in use: the same code, slow to compile)
MANY = CHUNK + 2  # more arrays than one compiled call takes: the chunked path


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_chunked, "CHUNK", CHUNK)


def _tree(n: int) -> dict[str, jax.Array]:
    return {f"k{i:05d}": jnp.full((2,), float(i)) for i in range(n)}


@pytest.mark.parametrize("n", [1, MANY], ids=["single", "chunked"])
@pytest.mark.parametrize("step", [3, np.int64(3), np.asarray(3)], ids=["int", "np-int64", "np-0d"])
def test_a_host_step_advances(n: int, step: object) -> None:
    params = _tree(n)
    state = ema.init(params, HALF)._replace(step=step)
    update = make_update(HALF)
    state = update(state, params)
    assert int(state.step) == 4
    state = update(state, params)
    assert int(state.step) == 5


@pytest.mark.parametrize("n", [1, MANY], ids=["single", "chunked"])
def test_a_host_float_weight_moves(n: int) -> None:
    config = ema.Config(schedule=0.5, init="zeros")
    params = _tree(n)
    state = ema.init(params, config)._replace(weight=0.0)
    state = make_update(config)(state, params)
    assert float(state.weight) == 0.5
    np.testing.assert_array_equal(ema.average(state, config)["k00000"], params["k00000"])


@pytest.mark.parametrize("n", [1, MANY], ids=["single", "chunked"])
@pytest.mark.parametrize(
    ("weight", "error", "words"),
    [
        (np.ones(2, np.float32), ValueError, "shape (2,)"),
        (np.asarray(1, np.int32), TypeError, "int32"),
        ("1.0", TypeError, "str"),
    ],
    ids=["1-d", "int", "str"],
)
def test_a_malformed_weight_is_refused_before_donation(
    n: int, weight: object, error: type, words: str
) -> None:
    params = _tree(n)
    state = ema.init(params, HALF)
    state = make_update(HALF)(state, params)  # committed, donatable arrays
    bad = state._replace(weight=jnp.asarray(weight) if not isinstance(weight, str) else weight)
    with pytest.raises(error, match=r"state\.weight") as info:
        make_update(HALF)(bad, params)
    assert words in str(info.value)
    assert not state.shadow["k00000"].is_deleted()
    assert not state.step.is_deleted()


@pytest.mark.parametrize("n", [1, MANY], ids=["single", "chunked"])
def test_a_bool_step_is_refused(n: int) -> None:
    params = _tree(n)
    state = ema.init(params, HALF)._replace(step=True)
    with pytest.raises(TypeError, match=r"state\.step"):
        make_update(HALF)(state, params)


@pytest.mark.parametrize("n", [1, MANY], ids=["single", "chunked"])
def test_guard_finite_refuses_non_finite_params_before_donation(n: int) -> None:
    config = ema.Config(schedule=0.5, guard_finite=True)
    update = make_update(config)
    params = _tree(n)
    state = update(ema.init(params, config), params)
    bad = dict(params, k00000=jnp.asarray([1.0, np.nan]))
    with pytest.raises(ValueError, match=r"params\['k00000'\].*NaN or infinite"):
        update(state, bad)
    assert not state.shadow["k00000"].is_deleted()
    state = update(state, params)  # finite params still update
    assert int(state.step) == 2


def test_guard_finite_under_an_outer_jit_is_named() -> None:
    config = ema.Config(schedule=0.5, guard_finite=True)
    update = make_update(config)
    params = _tree(1)
    state = ema.init(params, config)
    with pytest.raises(ValueError, match=r"guard_finite=True.*traced.*apply_if_finite"):
        jax.jit(update)(state, params)
