"""Hostile use of the framework-generic path (``ema_update``, ``init`` / ``update`` /
``average``) with array-api-strict arrays on its several devices, and with the odd nests users
send: each test pins that valid odd input gives the plain numpy path's bits, and that bad input
is a ``TypeError`` / ``ValueError`` naming the argument or leaf, raised before any write."""

from __future__ import annotations

import collections
import dataclasses
import decimal
import fractions
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest

import ema_core as ema

aas = pytest.importorskip("array_api_strict")

CPU = aas.Device("CPU_DEVICE")
D1 = aas.Device("device1")
D2 = aas.Device("device2")
StrictArray = type(aas.asarray(0.0))


class AB(NamedTuple):
    a: Any
    b: Any


@dataclasses.dataclass
class Holder:
    w: Any


def strict(a: np.ndarray, device: Any = D1) -> Any:
    """A strict array holding a copy of ``a`` (``aas.asarray`` alone would share its memory)."""
    return aas.asarray(np.array(a, copy=True), device=device)


def host(x: Any) -> np.ndarray:
    """A numpy copy of a strict array from any device (``np.asarray`` wants the CPU device)."""
    return np.array(np.asarray(x.to_device(CPU)), copy=True)


def snapshot(tree: dict[str, Any]) -> dict[str, bytes]:
    """The bytes of every leaf of a flat dict of strict or numpy arrays."""
    return {
        k: (host(v) if isinstance(v, StrictArray) else np.asarray(v)).tobytes()
        for k, v in tree.items()
    }


def mixed_pair(seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A shadow and params with float32, float64, int8, uint64, bool and 0-d leaves."""
    rng = np.random.default_rng(seed)

    def one() -> dict[str, np.ndarray]:
        return {
            "f32": rng.standard_normal(5).astype(np.float32),
            "f64": rng.standard_normal((2, 3)),
            "i8": rng.integers(-9, 9, 4).astype(np.int8),
            "u64": rng.integers(0, 9, 3).astype(np.uint64),
            "b": rng.random(2) > 0.5,
            "z": np.asarray(rng.standard_normal()),
        }

    return one(), one()


# --- devices -------------------------------------------------------------------------------


def test_params_on_another_device_are_refused_before_the_integer_leaf_is_copied() -> None:
    """An integer leaf before a float leaf whose params sit on device2: ValueError naming both
    paths and devices, and the integer shadow (which is copied, not averaged) keeps its value."""
    shadow = {
        "a": aas.zeros(2, dtype=aas.int32, device=D1),
        "b": aas.zeros(3, dtype=aas.float64, device=D1),
    }
    params = {
        "a": aas.ones(2, dtype=aas.int32, device=D1),
        "b": aas.ones(3, dtype=aas.float64, device=D2),
    }
    before = snapshot(shadow)
    with pytest.raises(
        ValueError, match=r"shadow\['b'\] is on device .*device1.* params\['b'\] is on .*device2"
    ):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert snapshot(shadow) == before


def test_functional_update_refuses_params_on_another_device_and_keeps_the_state() -> None:
    """``update`` with params moved to device2 names ``state.shadow`` and ``params``; the state's
    arrays keep their bits."""
    params = {"w": strict(np.arange(3.0)), "n": aas.asarray([1, 2], dtype=aas.int32, device=D1)}
    config = ema.Config(0.5, init="zeros")
    state = ema.update(ema.init(params, config), params, config)
    before = snapshot(state.shadow)
    moved = {k: v.to_device(D2) for k, v in params.items()}
    with pytest.raises(ValueError, match=r"state\.shadow\['w'\] is on device .* but params\['w'\]"):
        ema.update(state, moved, config)
    assert snapshot(state.shadow) == before
    assert int(host(state.step)) == 1 and float(host(state.weight)) == 0.5


def test_pairs_spread_over_two_devices_give_the_numpy_bits_on_their_own_devices() -> None:
    """Each shadow beside its own params, one pair per device: the stateless and functional
    paths blend each on its device and give the numpy bits (zeros start, debiased read)."""
    rng = np.random.default_rng(3)
    s_np, p_np = rng.standard_normal(4), rng.standard_normal(5)
    shadow = {"a": strict(s_np, D1), "b": strict(s_np[:3].copy(), D2)}
    params = {"a": strict(p_np[:4].copy(), D1), "b": strict(p_np[:3].copy(), D2)}
    out = ema.ema_update(shadow, params, 4, schedule=ema.schedules.warmup(0.99))
    ref = ema.ema_update(
        {"a": s_np.copy(), "b": s_np[:3].copy()},
        {"a": p_np[:4].copy(), "b": p_np[:3].copy()},
        4,
        schedule=ema.schedules.warmup(0.99),
    )
    assert out["a"].device == D1 and out["b"].device == D2
    assert snapshot(out) == snapshot(ref)
    config = ema.Config(0.9, init="zeros")
    state, ref_state = (
        ema.init(params, config),
        ema.init({k: host(v) for k, v in params.items()}, config),
    )
    for _ in range(3):
        state = ema.update(state, params, config)
        ref_state = ema.update(ref_state, {k: host(v) for k, v in params.items()}, config)
    got, want = ema.average(state, config), ema.average(ref_state, config)
    assert got["b"].device == D2
    assert snapshot(got) == snapshot(want)


def test_0d_leaves_on_device2_are_written_in_place_and_read_on_device2() -> None:
    """0-d float32 leaves on device2: ``ema_update`` writes the shadow itself; a zeros-started
    state counts, weighs and reads on device2 and debiases a constant to itself."""
    shadow = aas.asarray(0.0, dtype=aas.float32, device=D2)
    out = ema.ema_update(shadow, aas.asarray(1.0, dtype=aas.float32, device=D2), 1, decay=0.25)
    assert out is shadow and float(host(shadow)) == 0.75
    config = ema.Config(0.5, init="zeros")
    p = aas.asarray(2.0, dtype=aas.float32, device=D2)
    state = ema.update(ema.init(p, config), p, config)
    read = ema.average(state, config)
    assert state.step.device == state.weight.device == read.device == D2
    assert read.shape == () and float(host(read)) == 2.0


# --- numbers: strict vs numpy --------------------------------------------------------------


def test_a_mixed_dtype_nest_gives_the_numpy_bits_step_after_step() -> None:
    """float32, float64, int8, uint64, bool and 0-d leaves in one dict under a warm-up schedule:
    strict on device1 and numpy agree bit for bit, dtypes included."""
    s_np, p_np = mixed_pair(0)
    shadow = {k: strict(v) for k, v in s_np.items()}
    params = {k: strict(v) for k, v in p_np.items()}
    for step in range(1, 6):
        shadow = ema.ema_update(shadow, params, step, schedule=ema.schedules.warmup(0.999))
        s_np = ema.ema_update(s_np, p_np, step, schedule=ema.schedules.warmup(0.999))
    assert {k: host(v).dtype for k, v in shadow.items()} == {k: v.dtype for k, v in s_np.items()}
    assert snapshot(shadow) == snapshot(s_np)


@pytest.mark.parametrize(
    "config",
    [
        ema.Config(0.9, init="zeros"),
        ema.Config(ema.schedules.warmup(0.99), dtype="float64"),
        ema.Config(0.9, init="copy", interval=2),
    ],
    ids=["zeros", "float64-shadow", "copy-interval"],
)
def test_the_functional_api_gives_the_numpy_bits_over_a_mixed_nest(config: ema.Config) -> None:
    """``init`` / ``update`` / ``average`` over the mixed nest: the strict average, step and
    weight equal numpy's."""
    _, p_np = mixed_pair(1)
    params = {k: strict(v) for k, v in p_np.items()}
    state, ref = ema.init(params, config), ema.init(p_np, config)
    for _ in range(5):
        state, ref = ema.update(state, params, config), ema.update(ref, p_np, config)
    assert snapshot(ema.average(state, config)) == snapshot(ema.average(ref, config))
    assert int(host(state.step)) == int(ref.step) == 5
    assert float(host(state.weight)) == float(ref.weight)


@pytest.mark.parametrize(
    "step",
    [
        np.int64(3),
        np.asarray(3),
        np.int32(3),
        aas.asarray(3),
        aas.asarray(3, device=D2),
        aas.asarray(3, dtype=aas.int8),
        aas.asarray(3, dtype=aas.uint8, device=D2),
    ],
    ids=[
        "np-int64",
        "np-0d",
        "np-int32",
        "strict",
        "strict-device2",
        "strict-int8",
        "strict-uint8",
    ],
)
@pytest.mark.parametrize("how", ["interval", "every"])
def test_integer_steps_of_any_kind_and_device_act_as_the_python_int(step: Any, how: str) -> None:
    """A step given as a numpy integer, a 0-d numpy array or a 0-d strict integer array (on
    another device than the leaves too) gives the bits of the Python int step, under an interval
    and under ``every``."""
    rng = np.random.default_rng(5)
    s_np, p_np = rng.standard_normal(7), rng.standard_normal(7)
    warm = ema.schedules.warmup(0.99)
    kw: dict[str, Any] = (
        {"config": ema.Config(warm, interval=3)}
        if how == "interval"
        else {"schedule": ema.schedules.every(warm, 3)}
    )
    out = ema.ema_update(strict(s_np), strict(p_np), step, **kw)
    ref = ema.ema_update(s_np, p_np, 3, **kw)
    assert host(out).tobytes() == ref.tobytes()


@pytest.mark.parametrize(
    "decay",
    [
        np.float32(0.999),
        np.asarray(np.float32(0.999)),
        aas.asarray(0.999, dtype=aas.float32),
        aas.asarray(0.999, dtype=aas.float32, device=D2),
        aas.asarray(float(np.float32(0.999))),
    ],
    ids=["np-float32", "np-0d", "strict-f32", "strict-f32-device2", "strict-f64"],
)
def test_a_float32_decay_of_any_kind_gives_the_bits_of_its_python_float(decay: Any) -> None:
    """A decay that is float32 0.999 (numpy scalar, numpy 0-d, strict 0-d on either device) over
    float64 strict leaves gives the bits of the Python float of that float32 value."""
    rng = np.random.default_rng(7)
    s_np, p_np = rng.standard_normal(9), rng.standard_normal(9)
    out = ema.ema_update(strict(s_np), strict(p_np), 1, decay=decay)
    ref = ema.ema_update(s_np, p_np, 1, decay=float(np.float32(0.999)))
    assert out.device == D1
    assert host(out).tobytes() == ref.tobytes()


@pytest.mark.parametrize("step", [1, aas.asarray(1, device=D1), aas.asarray(1, device=D2)])
def test_a_schedule_returning_a_strict_decay_on_another_device_is_moved(step: Any) -> None:
    """A callable schedule that returns a 0-d strict decay on device2 for leaves on device1 is
    applied on device1 (moved, as a ``decay=`` array is), with the numpy bits."""
    shadow = {"n": aas.zeros(2, dtype=aas.int32, device=D1), "w": strict(np.zeros(2))}
    params = {
        "n": aas.asarray([5, 5], dtype=aas.int32, device=D1),
        "w": strict(np.array([1.0, 3.0])),
    }
    out = ema.ema_update(shadow, params, step, schedule=lambda t: aas.asarray(0.25, device=D2))
    assert out["w"].device == D1
    assert host(out["w"]).tolist() == [0.75, 2.25] and host(out["n"]).tolist() == [5, 5]


# --- bad scalars, refused before any write ---------------------------------------------------


def fresh() -> tuple[dict[str, Any], dict[str, Any]]:
    """A strict pair whose first leaf is an integer (copied at once by a careless backend)."""
    shadow = {"a": aas.zeros(2, dtype=aas.int32, device=D1), "b": strict(np.zeros(2))}
    params = {"a": aas.asarray([7, 7], dtype=aas.int32, device=D1), "b": strict(np.ones(2))}
    return shadow, params


@pytest.mark.parametrize(
    ("step", "error"),
    [
        (True, TypeError),
        (np.bool_(True), TypeError),
        (aas.asarray(True), TypeError),
        (3.0, TypeError),
        (np.float64(3.0), TypeError),
        (aas.asarray(3.0), TypeError),
        (aas.asarray([3]), TypeError),
        ("3", TypeError),
        (None, TypeError),
        (aas.asarray(-1), ValueError),
        (np.uint64(2**64 - 1), ValueError),
    ],
    ids=lambda v: repr(v)[:24],
)
def test_bad_steps_are_refused_by_name_before_any_write(step: Any, error: type) -> None:
    """Bools, floats, 1-d, text, None, negative and past-int64 steps: the promised error type
    naming ``step``, and neither the integer nor the float shadow moved."""
    shadow, params = fresh()
    before = snapshot(shadow)
    with pytest.raises(error, match=r"^step must"):
        ema.ema_update(shadow, params, step, schedule=ema.schedules.num_updates(0.9))
    assert snapshot(shadow) == before


@pytest.mark.parametrize(
    ("decay", "error"),
    [
        (aas.asarray(1), TypeError),
        (aas.asarray(True), TypeError),
        (aas.asarray([0.5]), TypeError),
        (np.bool_(True), TypeError),
        (True, TypeError),
        ("0.5", TypeError),
        (0.5 + 0j, TypeError),
        (fractions.Fraction(1, 2), TypeError),
        (decimal.Decimal("0.5"), TypeError),
        (aas.asarray(1.5), ValueError),
        (aas.asarray(float("nan"), device=D2), ValueError),
    ],
    ids=lambda v: repr(v)[:24],
)
def test_bad_decays_are_refused_by_name_before_any_write(decay: Any, error: type) -> None:
    """Integer, bool, 1-d, text, complex, Fraction, Decimal and out-of-range decays: the promised
    error type naming ``decay``, and nothing written."""
    shadow, params = fresh()
    before = snapshot(shadow)
    with pytest.raises(error, match=r"^decay must"):
        ema.ema_update(shadow, params, 1, decay=decay)
    assert snapshot(shadow) == before


@pytest.mark.parametrize("copy", [1, "yes", np.bool_(True)], ids=repr)
def test_copy_must_be_none_or_a_python_bool(copy: Any) -> None:
    """``copy=`` other than None/True/False (a numpy bool included) is a TypeError naming it."""
    shadow, params = fresh()
    before = snapshot(shadow)
    with pytest.raises(TypeError, match=r"^copy must be None, True or False"):
        ema.ema_update(shadow, params, 1, decay=0.5, copy=copy)
    assert snapshot(shadow) == before


def test_copy_true_never_mutates_strict_shadows_also_at_a_skipped_step() -> None:
    """``copy=True`` returns new strict arrays and leaves the inputs' bits, at decay 0.5 and 1."""
    for decay in (0.5, 1.0):
        shadow, params = fresh()
        before = snapshot(shadow)
        out = ema.ema_update(shadow, params, 1, decay=decay, copy=True)
        assert out["a"] is not shadow["a"] and out["b"] is not shadow["b"]
        assert snapshot(shadow) == before
        assert host(out["a"]).tolist() == [7, 7]


@pytest.mark.parametrize(
    ("field", "value", "error", "said"),
    [
        ("step", True, TypeError, r"state\.step must"),
        ("step", aas.asarray(False), TypeError, r"state\.step must"),
        ("step", aas.asarray(0.0), TypeError, r"state\.step must"),
        ("step", aas.asarray(-1), ValueError, r"state\.step must be >= 0"),
        ("weight", aas.asarray(0), TypeError, r"state\.weight must"),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_a_bad_state_step_or_weight_is_refused_and_the_state_kept(
    field: str, value: Any, error: type, said: str
) -> None:
    """A bool, float or negative ``state.step`` and an integer ``state.weight`` are refused by
    name; the state's shadows keep their bits."""
    _, params = fresh()
    config = ema.Config(0.5, init="zeros")
    state = ema.init(params, config)
    before = snapshot(state.shadow)
    with pytest.raises(error, match=said):
        ema.update(state._replace(**{field: value}), params, config)
    assert snapshot(state.shadow) == before


def test_guard_finite_refuses_before_the_integer_leaf_is_copied() -> None:
    """``guard_finite=True`` with an inf in the second leaf: ValueError naming it, and neither
    the stateless shadows nor the functional state moved (the integer leaf included)."""
    shadow, params = fresh()
    params["b"] = strict(np.array([1.0, np.inf]))
    config = ema.Config(0.5, guard_finite=True)
    before = snapshot(shadow)
    with pytest.raises(ValueError, match=r"params\['b'\] holds NaN or infinite"):
        ema.ema_update(shadow, params, 1, config=config)
    assert snapshot(shadow) == before
    state = ema.init(fresh()[0], config)
    with pytest.raises(ValueError, match=r"params\['b'\] holds NaN or infinite"):
        ema.update(state, params, config)
    assert snapshot(state.shadow) == {
        "a": np.zeros(2, np.int32).tobytes(),
        "b": np.zeros(2).tobytes(),
    }


# --- nests ---------------------------------------------------------------------------------


def test_dicts_with_int_tuple_none_and_frozenset_keys_pair_by_key() -> None:
    """Keys of mixed, unorderable types (int, str "0" beside int 0, tuple, None, frozenset, float)
    pair by key, order free, at decay 0 (a copy)."""
    keys: list[Any] = [0, "0", (1, "a"), None, frozenset({1}), 2.5]
    shadow = {k: strict(np.zeros(2)) for k in keys}
    params = {k: strict(np.full(2, float(i))) for i, k in enumerate(reversed(keys))}
    out = ema.ema_update(shadow, params, 1, decay=0.0)
    assert list(out) == keys
    assert all(host(out[k]).tolist() == host(params[k]).tolist() for k in keys)


def test_a_tuple_key_is_named_in_the_error_path() -> None:
    """A dtype mismatch under a tuple key of a nested dict names ``['a'][(0, 'x')]`` on both
    sides."""
    shadow = {"a": {(0, "x"): aas.zeros(2, dtype=aas.float64)}}
    params = {"a": {(0, "x"): aas.zeros(2, dtype=aas.int64)}}
    with pytest.raises(
        TypeError, match=r"shadow\['a'\]\[\(0, 'x'\)\] .* params\['a'\]\[\(0, 'x'\)\]"
    ):
        ema.ema_update(shadow, params, 1, decay=0.5)


def test_odd_containers_give_the_plain_dict_bits_and_keep_the_shadows_types() -> None:
    """An OrderedDict shadow over dict params (other key order), a list shadow over tuple params,
    a NamedTuple inside, and empty containers and None nodes beside: the floats equal the plain
    numpy dict path and every container keeps the shadow's type."""
    rng = np.random.default_rng(11)
    s1, s2, s3, p1, p2, p3 = (rng.standard_normal(3) for _ in range(6))
    shadow = collections.OrderedDict(
        [("z", [strict(s1), AB(strict(s2), strict(s3))]), ("e", [[], {}, ()]), ("n", None)]
    )
    params = {"n": None, "e": ([], {}, ()), "z": (strict(p1), AB(strict(p2), strict(p3)))}
    out = ema.ema_update(shadow, params, 2, decay=0.7)
    ref = ema.ema_update({"1": s1, "2": s2, "3": s3}, {"1": p1, "2": p2, "3": p3}, 2, decay=0.7)
    assert type(out) is collections.OrderedDict and list(out) == ["z", "e", "n"]
    assert type(out["z"]) is list and type(out["z"][1]) is AB
    assert out["e"] == [[], {}, ()] and out["n"] is None
    got = {"1": out["z"][0], "2": out["z"][1].a, "3": out["z"][1].b}
    assert snapshot(got) == snapshot(ref)


@pytest.mark.parametrize(
    ("shadow", "params", "said"),
    [
        ({"a": [], "w": 0}, {"a": {}, "w": 0}, r"params\['a'\]: expected a list, got dict"),
        ({"a": None, "w": 0}, {"a": [], "w": 0}, r"params\['a'\]: expected None, got list"),
        ({"a": None, "w": 0}, {"a": 1, "w": 0}, r"params\['a'\]: expected None, got Array"),
        ({"a": 1, "w": 0}, {"a": None, "w": 0}, r"params\['a'\]: expected an array, got NoneType"),
        (AB(1, 0), (1, 0), r"params: expected a AB, got tuple"),
        ((1, 0), AB(1, 0), r"params: expected a tuple, got AB"),
        (AB(1, 0), {"a": 1, "b": 0}, r"params: expected a AB, got dict"),
    ],
    ids=["list-dict", "none-list", "none-array", "array-none", "nt-tuple", "tuple-nt", "nt-dict"],
)
def test_structure_mismatches_name_the_first_differing_path(
    shadow: Any, params: Any, said: str
) -> None:
    """Container mismatches (an int in the spec stands for a strict array) are TypeErrors naming
    the path; the shadow's arrays keep their bits."""

    def build(spec: Any, value: float) -> Any:
        if isinstance(spec, int) and not isinstance(spec, bool):
            return strict(np.full(2, value))
        if isinstance(spec, AB):
            return AB(*(build(x, value) for x in spec))
        if isinstance(spec, dict):
            return {k: build(v, value) for k, v in spec.items()}
        if isinstance(spec, (list, tuple)):
            return type(spec)(build(x, value) for x in spec)
        return spec

    s, p = build(shadow, 0.0), build(params, 1.0)
    leaves = [v for v in (s.values() if isinstance(s, dict) else s) if isinstance(v, StrictArray)]
    with pytest.raises(TypeError, match=r"does not match the structure of shadow at " + said):
        ema.ema_update(s, p, 1, decay=0.0)
    assert all(host(v).tolist() == [0.0, 0.0] for v in leaves)


@pytest.mark.parametrize("tree", [{}, [], None, [[], {}], {"a": (None, {})}], ids=repr)
def test_nests_without_arrays_are_value_errors(tree: Any) -> None:
    """A nest holding no array at all is a ValueError for ``ema_update`` and ``init``."""
    with pytest.raises(ValueError, match=r"params holds no arrays"):
        ema.ema_update(tree, tree, 1, decay=0.5)
    with pytest.raises(ValueError, match=r"params holds no arrays"):
        ema.init(tree)


@pytest.mark.parametrize(
    ("make", "path"),
    [
        (
            lambda s, p: ({"w": s, "x": 0.0}, {"w": p, "x": 1.0}),
            r"shadow\['x'\] must be an array, got float",
        ),
        (
            lambda s, p: ({"w": s, "x": s + 0}, {"w": p, "x": 1.0}),
            r"params\['x'\] must be an array, got float",
        ),
        (
            lambda s, p: ([s, Holder(s + 0)], [p, Holder(p + 0)]),
            r"shadow\[1\] must be an array, got Holder",
        ),
        (
            lambda s, p: ((s, types.SimpleNamespace(w=s + 0)), (p, types.SimpleNamespace(w=p + 0))),
            r"shadow\[1\] must be an array, got SimpleNamespace",
        ),
    ],
    ids=["float-shadow", "float-params", "dataclass", "namespace"],
)
def test_non_array_leaves_are_type_errors_by_path_before_any_write(
    make: Callable[[Any, Any], tuple[Any, Any]], path: str
) -> None:
    """Python floats and unregistered objects (a dataclass, a SimpleNamespace) as leaves are a
    TypeError naming their path; the strict leaf beside them is not written."""
    first = strict(np.zeros(2))
    shadow, params = make(first, strict(np.ones(2)))
    with pytest.raises(TypeError, match=path):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert host(first).tolist() == [0.0, 0.0]


# --- memory shared through numpy ---------------------------------------------------------------


def test_strict_arrays_over_one_numpy_buffer_are_checked_as_shared_memory() -> None:
    """Strict arrays wrapping numpy memory: shifted views of one buffer as shadow and params are
    refused, two wrappers of one buffer as two shadows are refused, and a shadow that wraps its
    own params' elements is allowed; refusals write nothing."""
    buf = np.arange(5.0)
    with pytest.raises(ValueError, match=r"shadow and params share memory"):
        ema.ema_update(aas.asarray(buf[1:]), aas.asarray(buf[:-1]), 1, decay=0.5)
    assert buf.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    twice = np.zeros(4)
    with pytest.raises(ValueError, match=r"shadow\[0\] and shadow\[1\] share memory"):
        ema.ema_update(
            [aas.asarray(twice), aas.asarray(twice)], [strict(np.ones(4), CPU)] * 2, 1, decay=0.5
        )
    assert twice.tolist() == [0.0] * 4
    out = ema.ema_update(aas.asarray(buf), aas.asarray(buf), 1, decay=0.5)
    assert host(out).tolist() == buf.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_strict_shadow_over_read_only_numpy_memory_is_never_written() -> None:
    """A strict shadow over a read-only (or broadcast) numpy array: ``copy=None`` returns a new
    array with the average, ``copy=False`` is a ValueError; the numpy memory keeps its zeros."""
    ro = np.zeros(3)
    ro.flags.writeable = False
    bc = np.broadcast_to(np.zeros(1), (3,))
    for base in (ro, bc):
        out = ema.ema_update(aas.asarray(base), strict(np.ones(3), CPU), 1, decay=0.5)
        assert host(out).tolist() == [0.5] * 3 and base.tolist() == [0.0] * 3
        with pytest.raises(ValueError, match=r"copy=False needs writeable arrays, but shadow"):
            ema.ema_update(aas.asarray(base), strict(np.ones(3), CPU), 1, decay=0.5, copy=False)
        assert base.tolist() == [0.0] * 3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("step", aas.asarray(0, device=D2)),
        ("step", np.int64(0)),
        ("step", 0),
        ("weight", aas.asarray(0.0, dtype=aas.float64, device=D2)),
        ("weight", np.float64(0.0)),
        ("weight", 0.0),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_state_scalars_of_another_kind_or_device_give_the_same_update(
    field: str, value: Any
) -> None:
    """A zeros-started strict state on device1 whose step or weight is on device2, numpy or a
    Python number updates and reads exactly as the state ``init`` made."""
    rng = np.random.default_rng(13)
    params = {"w": strict(rng.standard_normal(6))}
    config = ema.Config(ema.schedules.warmup(0.9), init="zeros")
    plain = odd = ema.init(params, config)
    odd = odd._replace(**{field: value})
    for _ in range(3):
        plain, odd = ema.update(plain, params, config), ema.update(odd, params, config)

    def scalar(x: Any) -> float:
        return float(host(x)) if isinstance(x, StrictArray) else float(x)

    assert scalar(odd.step) == scalar(plain.step) == 3
    assert scalar(odd.weight) == scalar(plain.weight)
    assert snapshot(ema.average(odd, config)) == snapshot(ema.average(plain, config))
    assert snapshot(odd.shadow) == snapshot(plain.shadow)
