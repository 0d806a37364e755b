"""Leftovers of the JAX review: a state made with ``init="zeros"`` read by ``ema_core.average``
with a config of another ``init``; a numpy 64-bit state given to a compiled update while JAX's
x64 mode is off; a ``str`` child of a custom pytree node named by its full path."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
import ema_core._ops  # noqa: E402
import ema_core.jax._compiled  # noqa: E402
from ema_core.jax import make_bank_update, make_update  # noqa: E402

ZEROS = ema.Config(schedule=0.5, init="zeros")
HALF = ema.Config(schedule=0.5)
X64_OFF = pytest.mark.skipif(jax.config.jax_enable_x64, reason="x64 is on: nothing is narrowed")

# --- average: a state made with init="zeros", read with a config of another init --------------


def _zeros_state(make: Any) -> ema.EMAState:
    """A "zeros" state after one update at decay 0.5: shadow 2, weight 0.5, average 4."""
    return ema.update(ema.init({"w": make([0.0, 0.0])}, ZEROS), {"w": make([4.0, 4.0])}, ZEROS)


def _torch(values: list[float]) -> Any:
    return pytest.importorskip("torch").tensor(values, dtype=pytest.importorskip("torch").float64)


MAKERS = {"numpy": np.asarray, "jax-cpu": jnp.asarray, "torch-cpu": _torch}


@pytest.mark.parametrize("maker", MAKERS.values(), ids=MAKERS.keys())
@pytest.mark.parametrize("other", ["params", "copy"])
def test_average_refuses_a_zeros_state_read_with_another_init(maker: Any, other: str) -> None:
    state = _zeros_state(maker)
    config = ema.Config(schedule=0.5, init=other)
    named = rf"init='{other}', but state has weight 0\.5: .*init='zeros'.*average\(state, config\)"
    with pytest.raises(ValueError, match=named):
        ema.average(state, config)
    with pytest.raises(ValueError, match=named if other == "params" else "init='params'"):
        ema.average(state)
    np.testing.assert_array_equal(np.asarray(ema.average(state, ZEROS)["w"]), [4.0, 4.0])


@pytest.mark.parametrize("weight", [0.0, 0.25, np.float32(0.9)], ids=["0", "py-float", "np-f32"])
def test_average_reads_a_host_weight_of_any_kind(weight: Any) -> None:
    """Python numbers and numpy scalars too; the first read of a fresh "zeros" state (weight 0)."""
    state = ema.init({"w": np.zeros(2)}, ZEROS)._replace(weight=weight)
    with pytest.raises(ValueError, match=r"init='params', but state has weight 0(\.25|\.9)?:"):
        ema.average(state)


def test_average_of_a_params_state_is_still_its_shadow() -> None:
    """A weight of 1 (float32, after many updates) is not taken for a "zeros" state."""
    state = ema.init({"w": jnp.zeros(3)}, HALF)
    for _ in range(20):
        state = ema.update(state, {"w": jnp.ones(3)}, HALF)
    assert ema.average(state, HALF) is state.shadow
    assert ema.average(state) is state.shadow


def test_a_traced_weight_is_not_read() -> None:
    """Inside jax.jit the weight is a tracer: not read (no concretization error), shadow kept."""
    state = _zeros_state(jnp.asarray)
    out = jax.jit(lambda s: ema.average(s, HALF))(state)
    np.testing.assert_array_equal(np.asarray(out["w"]), [2.0, 2.0])


@pytest.mark.parametrize("maker", [jnp.asarray, _torch], ids=["jax", "torch"])
def test_a_device_weight_is_not_read(monkeypatch: pytest.MonkeyPatch, maker: Any) -> None:
    """A weight off the host (here: CPU taken as a device) would cost a sync: left unread."""
    state = _zeros_state(maker)
    monkeypatch.setattr(ema_core._ops, "HOST_PLATFORMS", frozenset())
    assert ema.average(state, HALF) is state.shadow


# --- x64 off: a numpy 64-bit state going into a compiled update -------------------------------


@X64_OFF
@pytest.mark.parametrize(
    ("dtype", "narrow"),
    [("float64", "float32"), ("complex128", "complex64"), ("int64", "int32")],
)
def test_make_update_refuses_a_numpy_64_bit_shadow(dtype: str, narrow: str) -> None:
    shadow = {"a": np.zeros(2, np.float32), "w": np.arange(3).astype(dtype)}
    state = ema.EMAState(np.asarray(0), shadow, np.asarray(1.0))
    params = {"a": np.ones(2, np.float32), "w": np.ones(3, dtype)}
    named = rf"state\.shadow\['w'\] has dtype {dtype}.*x64 mode is off.*as {narrow}:.*update it"
    with pytest.raises(TypeError, match=named):
        make_update(HALF)(state, params)
    with pytest.raises(TypeError, match=named.replace("state", r"states\[0\]", 1)):
        make_bank_update([HALF])((state,), params)
    np.testing.assert_array_equal(state.shadow["w"], np.arange(3).astype(dtype))


@X64_OFF
def test_numpy_states_keep_64_bits_eagerly_and_under_x64() -> None:
    """The eager numpy update is not JAX's business; with x64 on the compiled update keeps them."""
    state = ema.init({"w": np.zeros(2)}, HALF)
    state = ema.update(state, {"w": np.full(2, 1 / 3)}, HALF)
    shadow = ema.ema_update({"w": np.zeros(2)}, {"w": np.full(2, 1 / 3)}, 1, decay=0.5)
    assert state.shadow["w"].dtype == shadow["w"].dtype == np.float64
    assert state.shadow["w"][0] == shadow["w"][0] == 1 / 6  # not rounded to float32
    with jax.enable_x64(True):
        out = make_update(HALF, donate=False)(ema.init({"w": np.zeros(2)}, HALF), {"w": np.ones(2)})
        assert out.shadow["w"].dtype == np.float64


@X64_OFF
def test_a_numpy_float32_state_and_its_narrowed_numpy_step_and_weight_pass() -> None:
    """float64 params, an int64 step and a float64 weight are narrowed harmlessly."""
    state = ema.EMAState(np.asarray(0, np.int64), {"w": np.zeros(2, np.float32)}, np.asarray(1.0))
    out = make_update(HALF)(state, {"w": np.ones(2)})
    assert out.shadow["w"].dtype == np.float32 and int(out.step) == 1
    np.testing.assert_array_equal(np.asarray(out.shadow["w"]), [0.5, 0.5])


@X64_OFF
def test_a_numpy_step_past_int32_saturates_instead_of_wrapping() -> None:
    state = ema.init({"w": jnp.zeros(2)}, HALF)._replace(step=np.asarray(2**40))
    out = make_update(HALF)(state, {"w": jnp.ones(2)})
    assert int(out.step) == 2**31 - 1  # jit wrapped 2**40 to 0, so this was 1


def test_the_x64_check_runs_once_per_new_state(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    check = ema_core.jax._call_checks.check_x64

    def counted(*args: Any) -> None:
        calls.append(check(*args))

    for module in (ema_core.jax._compiled, ema_core.jax._call_checks):  # where it is called
        monkeypatch.setattr(module, "check_x64", counted)
    update = make_update(HALF)
    state = ema.init({"w": np.zeros(2, np.float32)}, HALF)
    for _ in range(4):
        state = update(state, {"w": np.ones(2, np.float32)})
    assert len(calls) == 1


# --- a str child of a custom pytree node -------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Node:
    w: Any
    tag: Any


class Pair:
    def __init__(self, w: Any, tag: Any) -> None:
        self.w, self.tag = w, tag


jax.tree_util.register_pytree_node(
    Pair, lambda p: ((p.w, p.tag), None), lambda _, kids: Pair(*kids)
)

CALLS = {
    "ema_update": lambda s, p: ema.ema_update(s, p, 1, decay=0.5),
    "update": lambda s, p: ema.update(ema.EMAState(np.asarray(0), s, np.asarray(1.0)), p),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize(("node", "tag"), [(Node, r"\.tag"), (Pair, r"\[1\]")], ids=["dc", "pn"])
def test_a_str_child_of_a_pytree_node_is_named_by_its_path(call: Any, node: Any, tag: str) -> None:
    shadow = {"n": node(np.zeros(2), "relu")}
    with pytest.raises(TypeError, match=rf"shadow\['n'\]{tag} must be an array, got str \(params"):
        call(shadow, {"n": node(np.ones(2), np.ones(2))})
    with pytest.raises(TypeError, match=rf"^params\['n'\]{tag} must be an array, got str \("):
        call({"n": node(np.zeros(2), np.zeros(2))}, {"n": node(np.ones(2), "relu")})
    np.testing.assert_array_equal(shadow["n"].w, [0.0, 0.0])  # nothing written
    kept = ema.ema_update(shadow, {"n": node(np.ones(2), "gelu")}, 1, decay=0.5)
    assert kept["n"].tag == "relu" and kept["n"].w.tolist() == [0.5, 0.5]


def test_make_update_names_a_str_child_and_donates_nothing() -> None:
    state = ema.init({"n": Node(jnp.zeros(2), "relu")}, HALF)
    with pytest.raises(TypeError, match=r"state\.shadow\['n'\]\.tag must be an array, got str"):
        make_update(HALF)(state, {"n": Node(jnp.ones(2), jnp.ones(2))})
    assert not state.shadow["n"].w.is_deleted() and not state.step.is_deleted()
