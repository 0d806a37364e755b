"""flax nnx states against hostile inputs: a ``Variable``'s value is always data, never a static
part of the structure, so a Python number held by a ``Param`` is refused by its path (it was
kept as it was, silently, however the model's value moved)."""

from __future__ import annotations

from typing import Any

import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
nnx = pytest.importorskip("flax.nnx")

import ema_core as ema  # noqa: E402

CONFIG = ema.Config(schedule=ema.schedules.constant(0.5))


class Model(nnx.Module):  # type: ignore[misc]
    def __init__(self, scale: Any) -> None:
        self.w = nnx.Param(jnp.ones(2))
        self.scale = nnx.Param(scale)


@pytest.mark.parametrize("value", [1.0, 2, True, 1j])
def test_a_python_number_in_a_param_is_refused_by_its_path(value: Any) -> None:
    with pytest.raises(TypeError, match=r"params\['scale'\]\.value must be an array, got"):
        ema.init(nnx.state(Model(value), nnx.Param), CONFIG)


def test_the_stateless_update_does_not_keep_a_stale_number() -> None:
    """Both sides held a Python float: the shadow kept 1.0 whatever the params said."""
    shadow = nnx.state(Model(1.0), nnx.Param)
    params = nnx.state(Model(5.0), nnx.Param)
    with pytest.raises(TypeError, match=r"shadow\['scale'\]\.value must be an array, got float"):
        ema.ema_update(shadow, params, 0, decay=0.5)


def test_arrays_in_variables_of_every_kind_still_update() -> None:
    """Param, BatchStat and a custom Variable holding arrays: averaged or copied as usual."""

    class Counter(nnx.Variable):  # type: ignore[misc]
        pass

    class Net(nnx.Module):  # type: ignore[misc]
        def __init__(self, v: float) -> None:
            self.w = nnx.Param(jnp.full(2, v))
            self.stat = nnx.BatchStat(jnp.full(3, v))
            self.count = Counter(jnp.array(int(v), jnp.int32))

    state = ema.init(nnx.state(Net(1.0)), CONFIG)
    state = ema.update(state, nnx.state(Net(3.0)), CONFIG)
    shadow = state.shadow
    assert type(shadow["w"]) is nnx.Param and type(shadow["count"]) is Counter
    assert jnp.array_equal(shadow["w"][...], jnp.full(2, 2.0))
    assert jnp.array_equal(shadow["stat"][...], jnp.full(3, 2.0))
    assert int(shadow["count"][...]) == 3  # integer leaves take the params' value
