"""Hostile inputs to the functional core (numpy, array-api-strict, plain containers): each test
pins a promise an odd but plausible input used to break: nests matched leaf for leaf, nothing
written before a refusal, clear ``TypeError`` / ``ValueError`` messages, no precision lost."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytest

import ema_core as ema

aas = pytest.importorskip("array_api_strict")


class AB(NamedTuple):
    a: Any
    b: Any


class BA(NamedTuple):
    b: Any
    a: Any


class XY(NamedTuple):
    x: Any
    y: Any


@pytest.mark.parametrize("other", [BA, XY])
def test_namedtuples_with_other_fields_are_refused_not_paired_by_position(other: type) -> None:
    # BA(b=, a=) used to pair shadow.a with params.b: the decay-0 copy swapped the two leaves
    shadow = AB(a=np.zeros(2), b=np.full(2, 10.0))
    params = other(np.full(2, 10.0), np.zeros(2))
    with pytest.raises(TypeError, match=r"params: expected a AB with fields \('a', 'b'\), got"):
        ema.ema_update(shadow, params, 1, decay=0.0)
    assert shadow.a.tolist() == [0.0, 0.0] and shadow.b.tolist() == [10.0, 10.0]
    # another class with the same fields in the same order still matches
    out = ema.ema_update(shadow, type("AB2", (AB,), {})(np.ones(2), np.ones(2)), 1, decay=0.0)
    assert out.a.tolist() == out.b.tolist() == [1.0, 1.0]


def test_a_decay_array_on_another_device_is_moved_to_the_leaves() -> None:
    # it used to copy the integer leaf, then fail on the float one in array-api-strict's words
    dev = aas.Device("device1")
    shadow = {
        "n": aas.zeros(2, dtype=aas.int32, device=dev),
        "w": aas.zeros(2, dtype=aas.float64, device=dev),
    }
    params = {
        "n": aas.ones(2, dtype=aas.int32, device=dev),
        "w": aas.ones(2, dtype=aas.float64, device=dev),
    }
    out = ema.ema_update(shadow, params, 1, decay=aas.asarray(0.25))
    assert out["w"].device == dev
    cpu = aas.Device("CPU_DEVICE")
    assert np.asarray(out["w"].to_device(cpu)).tolist() == [0.75, 0.75]
    assert np.asarray(out["n"].to_device(cpu)).tolist() == [1, 1]


@pytest.mark.parametrize("shift", [1, -1])
def test_a_shadow_overlapping_the_params_is_refused(shift: int) -> None:
    # the in-place engine read params already overwritten through the shadow: wrong averages
    buf = np.arange(11.0)
    shadow, params = (buf[1:], buf[:-1]) if shift == 1 else (buf[:-1], buf[1:])
    with pytest.raises(ValueError, match=r"shadow\[1\] and params\[1\] share memory"):
        ema.ema_update([np.zeros(2), shadow], [np.ones(2), params], 1, decay=0.5)
    assert buf.tolist() == list(range(11))
    want = shadow + 0.5 * (params - shadow)
    out = ema.ema_update(shadow, params, 1, decay=0.5, copy=True)
    assert np.array_equal(out, want) and buf.tolist() == list(range(11))


def test_a_shadow_that_is_the_params_or_their_same_view_is_allowed() -> None:
    params = np.arange(4.0)
    assert ema.ema_update(params, params, 1, decay=0.5) is params
    out = ema.ema_update(params[:], params, 1, decay=0.5)
    assert out.tolist() == [0.0, 1.0, 2.0, 3.0]


wide = pytest.mark.skipif(
    np.finfo(np.longdouble).bits <= 64, reason="np.longdouble is float64 on this platform"
)


@wide
def test_a_longdouble_zeros_read_keeps_its_dtype() -> None:
    cfg = ema.Config(schedule=0.5, init="zeros")
    third = np.full(2, np.longdouble(1) / 3)
    state = ema.update(ema.init({"w": third}, cfg), {"w": third}, cfg)
    read = ema.average(state, cfg)["w"]
    assert read.dtype == np.longdouble and np.array_equal(read, third)


@wide
def test_a_longdouble_blend_is_not_rounded_to_float32() -> None:
    sub = type("Sub", (np.ndarray,), {})  # an ndarray subclass takes the generic core
    s, p = np.full(2, np.longdouble(1) / 3), np.full(2, np.longdouble(2) / 3)
    want = p - np.longdouble(0.3) * (p - s)  # the two-sided blend below decay 0.5
    out = ema.ema_update(s.copy().view(sub), p.view(sub), 1, decay=0.3)
    assert np.array_equal(np.asarray(out), want)


@pytest.mark.parametrize(
    ("weight", "error", "said"),
    [("1", TypeError, "str"), (None, TypeError, "NoneType"), (np.ones(2), ValueError, "shape")],
)
def test_average_checks_the_weight(weight: Any, error: type, said: str) -> None:
    cfg = ema.Config(schedule=0.5, init="zeros")
    state = ema.init({"w": np.ones(2)}, cfg)._replace(weight=weight)
    with pytest.raises(error, match=rf"state\.weight must be a .*0-d float array.*{said}"):
        ema.average(state, cfg)


def test_a_nest_that_contains_itself_is_a_value_error() -> None:
    shadow: list[Any] = [np.zeros(2)]
    shadow.append(shadow)
    with pytest.raises(ValueError, match=r"shadow contains itself or is nested too deeply"):
        ema.ema_update(shadow, [np.ones(2), []], 1, decay=0.5)
    assert shadow[0].tolist() == [0.0, 0.0]


def test_huge_ints_are_value_errors_naming_the_argument() -> None:
    with pytest.raises(ValueError, match=r"decay must be in \[0.0, 1.0\], got an int of"):
        ema.ema_update(np.zeros(2), np.ones(2), 1, decay=10**400)
    for huge in (2**63, 10**400):
        with pytest.raises(
            ValueError, match=r"Config.interval must be an int in \[1, 2\*\*63 - 1\]"
        ):
            ema.Config(interval=huge)


def test_a_shadow_that_is_another_leafs_params_is_refused() -> None:
    # leaf 0 overwrote b, then leaf 1 read the new b as its params
    a, b, c = np.zeros(3), np.full(3, 4.0), np.full(3, 8.0)
    with pytest.raises(ValueError, match=r"shadow\[0\] and params\[1\] share memory"):
        ema.ema_update([b, a], [c, b], 1, decay=0.5)
    assert a.tolist() == [0.0] * 3 and b.tolist() == [4.0] * 3


@pytest.mark.parametrize(
    ("params", "dtype"),
    [(np.ones(2, np.float32), "bfloat16"), (aas.ones(2, dtype=aas.float32), "float16")],
)
def test_init_refuses_a_shadow_dtype_the_namespace_lacks(params: Any, dtype: str) -> None:
    # it used to keep the params' dtype silently (a float32 shadow for Config(dtype="bfloat16"))
    with pytest.raises(TypeError, match=rf"Config.dtype is '{dtype}' but .* has no {dtype}"):
        ema.init({"w": params}, ema.Config(dtype=dtype))
