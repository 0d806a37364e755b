"""README claims a newcomer tried on their own models and loops and found not to hold (the code
or the README was fixed since; each test quotes the README line it pins)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import ema_core as ema
from ema_core.checkpoint import check, load, save


@pytest.mark.parametrize("read", [load, check], ids=["load", "check"])
def test_a_config_that_differs_from_an_emastate_checkpoint_is_named_by_field(
    tmp_path: Path, read: Callable[..., object]
) -> None:
    """README "Errors": "a config that differs from a checkpoint's (`EMA.load_state_dict`,
    `checkpoint.load`) ...: the message names the differing fields first
    (`schedule.decay: 0.5 in this EMA, 0.9 in state_dict`)". Pins it for an `EMAState` file."""
    path = tmp_path / "ema.safetensors"
    saved = ema.Config(0.9)
    save(path, ema.init({"w": np.ones(3, np.float32)}, saved), saved)
    like = ema.init({"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError) as caught:
        read(path, like, config=ema.Config(0.5))
    message = str(caught.value)
    assert "schedule.decay" in message
    assert message.index("schedule.decay") < message.index("Config(")


@pytest.mark.parametrize(
    "make",
    [
        lambda: ema.presets.optax(np.float32(0.9)),
        lambda: ema.Config(np.float32(0.5)),
        lambda: ema.schedules.warmup(np.float32(0.9)),
    ],
    ids=["preset", "config", "schedule"],
)
def test_a_numpy_float32_hyperparameter_is_refused_with_what_to_pass(
    make: Callable[[], object],
) -> None:
    """README "Coming from another EMA": a hyperparameter given as a numpy float32 scalar is a
    ``TypeError``, "pass ``float(x)``": the message says so."""
    with pytest.raises(TypeError, match=r"float32.*pass float\(x\)"):
        make()


def test_an_average_read_under_make_update_is_donated_with_the_state_unless_copied() -> None:
    """README "Choices": under ``make_update`` the arrays ``average`` returns are donated with
    the state at the next update (JAX's "Array has been deleted"); a ``jnp.copy`` of them
    keeps its values."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    from ema_core.jax import make_update

    config = ema.Config(schedule=0.5, init="copy")
    update = make_update(config)
    params = {"w": jnp.full(3, 2.0)}
    state = update(ema.init(params, config), params)
    read = ema.average(state, config)
    kept = jax.tree_util.tree_map(jnp.copy, read)
    state = update(state, {"w": jnp.full(3, 4.0)})
    with pytest.raises(RuntimeError, match="deleted"):
        np.asarray(read["w"])
    np.testing.assert_array_equal(np.asarray(kept["w"]), np.full(3, 2.0, np.float32))
    np.testing.assert_array_equal(np.asarray(state.shadow["w"]), np.full(3, 3.0, np.float32))
