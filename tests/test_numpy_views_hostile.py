"""Hostile views, aliasing and memory layouts in the stateless ``ema_update`` and the functional
``init`` / ``update`` / ``average`` (numpy and array-api-strict): shadows that are views of a
larger buffer (sliced, strided, transposed, reversed, broadcast, 0-d, empty), shadows that
overlap each other or the params, read-only and memory-mapped shadows, odd dtypes and steps,
and the plan cache when the leaves change between calls. In-place writes must land exactly where
the README's "Choices where the contract is silent" says; a refusal is a ``ValueError`` or
``TypeError`` naming the leaf, with nothing written."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import ema_core as ema
from ema_core import _stateless

aas = pytest.importorskip("array_api_strict")

DECAY = 0.75  # above 0.5: the blend is s + (1 - d) * (p - s), exact in binary


def _blend(s: np.ndarray, p: np.ndarray, decay: float = DECAY) -> np.ndarray:
    """The core's blend for d >= 0.5, in the shadow's dtype (float64 here): the reference."""
    rate = np.asarray(1.0 - decay, dtype=s.dtype)
    return s + rate * (p - s)


def _bits(a: Any) -> bytes:
    """An array's values as bytes, whatever its layout."""
    return np.ascontiguousarray(np.asarray(a)).tobytes()


def _uncached(s: np.ndarray, p: np.ndarray, step: int = 1) -> np.ndarray:
    """The same update on fresh C-contiguous copies (a layout no test here gives)."""
    out = ema.ema_update(np.array(s, order="C"), np.array(p, order="C"), step, decay=DECAY)
    return np.asarray(out)


def _refused(call: Callable[[], Any], match: str, *buffers: np.ndarray) -> None:
    """``call`` raises ``ValueError`` matching ``match`` and leaves every buffer as it was."""
    before = [b.copy() for b in buffers]
    with pytest.raises(ValueError, match=match):
        call()
    for b, was in zip(buffers, before, strict=True):
        assert _bits(b) == _bits(was)


# --- in-place writes into views land where the view points, nowhere else ----------------------


@pytest.mark.parametrize(
    "view",
    [
        lambda b: b[3:9],  # a slice (C-contiguous)
        lambda b: b[::2],  # strided
        lambda b: b[::-1],  # reversed (negative stride)
        lambda b: b.reshape(4, 3).T,  # transposed (F-contiguous)
        lambda b: b.reshape(3, 4)[:, 1:3],  # rows of a 2-D buffer, strided rows
        lambda b: b.reshape(2, 6)[::-1, ::-3],  # negative strides on both axes
    ],
    ids=["slice", "every-2nd", "reversed", "transposed", "row-slab", "negative-2d"],
)
def test_a_shadow_view_is_written_in_place_and_nothing_else_moves(
    view: Callable[[np.ndarray], np.ndarray],
) -> None:
    """A view of a larger buffer is updated in place (the same object comes back), its
    elements take the core's bits, and the buffer's other elements keep theirs."""
    buf = np.arange(12.0) / 7
    shadow = view(buf)
    params = np.linspace(-1.0, 1.0, shadow.size).reshape(shadow.shape)
    want = _blend(shadow, params)
    outside = np.ones(buf.shape, bool)
    outside[np.unique(np.asarray(view(np.arange(12))).ravel())] = False
    kept = buf[outside].copy()
    for t in (1, 2, 3):  # the third call runs on the plan cache's entry
        expected = want if t == 1 else _blend(np.asarray(shadow).copy(), params)
        out = ema.ema_update({"w": shadow}, {"w": params}, t, decay=DECAY)
        assert out["w"] is shadow
        assert _bits(shadow) == _bits(expected)
        assert _bits(buf[outside]) == _bits(kept)


def test_large_strided_and_transposed_shadows_give_the_bits_of_contiguous_ones() -> None:
    """Views of more than the engine's small-leaf size (slabs of rows, pieces) blend to the same
    bits as C-contiguous copies of them, whatever the params' layout."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((300, 80)).astype(np.float32)
    views = {"t": base.T, "every-2nd-col": base[:, ::2], "reversed": base[::-1]}
    params = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in views.items()}
    params["t"] = np.asfortranarray(params["t"])  # params in yet another layout
    key = "every-2nd-col"
    want = _uncached(views[key], params[key])
    odd = base[:, 1::2].copy()
    assert ema.ema_update({key: views[key]}, {key: params[key]}, 1, decay=DECAY)[key] is views[key]
    assert _bits(base[:, ::2]) == _bits(want) and _bits(base[:, 1::2]) == _bits(odd)
    for k in ("t", "reversed"):
        v = views[k]
        want_k = _uncached(v, params[k])
        assert ema.ema_update(v, params[k], 1, decay=DECAY) is v
        assert _bits(v) == _bits(want_k)


def test_a_fortran_ordered_shadow_keeps_its_layout_and_bits() -> None:
    """A Fortran-ordered shadow (over C-ordered float16 params) is written in place, stays
    Fortran-ordered and takes the bits of the C-ordered update."""
    shadow = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(4, 6) / 3)
    params = (np.arange(24).reshape(4, 6) / 5).astype(np.float16)
    want = _uncached(shadow, params)
    assert ema.ema_update(shadow, params, 1, decay=DECAY) is shadow
    assert shadow.flags.f_contiguous and not shadow.flags.c_contiguous
    assert _bits(shadow) == _bits(want)


def test_a_0d_view_writes_its_one_element_of_the_buffer() -> None:
    """A 0-d view of one element of a buffer is updated in place: that element only."""
    buf = np.arange(6.0)
    point = buf[2:3].reshape(())
    out = ema.ema_update({"b": point}, {"b": np.array(10.0)}, 1, decay=0.5)
    assert out["b"] is point
    assert buf.tolist() == [0.0, 1.0, 6.0, 3.0, 4.0, 5.0]


def test_empty_views_share_no_element_with_anything() -> None:
    """An empty view inside a buffer written in place beside it is no overlap (nothing of it
    is written), also as the params of another leaf."""
    buf = np.arange(6.0)
    out = ema.ema_update([buf, buf[2:2]], [np.ones(6), np.ones(0)], 1, decay=0.5, copy=False)
    assert out[0] is buf and out[1].size == 0
    assert buf.tolist() == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    ema.ema_update([buf[3:3], buf], [buf[1:1], np.zeros(6)], 1, decay=0.5, copy=False)
    assert buf.tolist() == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]


def test_the_real_and_imaginary_views_of_one_complex_array_are_two_shadows() -> None:
    """``c.real`` and ``c.imag`` interleave in one buffer without sharing an element: both are
    written in place, each with its own params."""
    c = np.zeros(5, complex)
    out = ema.ema_update(
        {"r": c.real, "i": c.imag}, {"r": np.ones(5), "i": np.full(5, 2.0)}, 1, decay=0.5
    )
    assert out["r"].base is c and out["i"].base is c
    assert c.tolist() == [0.5 + 1.0j] * 5


def test_a_memmap_view_is_updated_in_the_file(tmp_path: Path) -> None:
    """A strided view of a memory-mapped shadow is written in place; the file holds the new
    values at the view's elements and the old ones elsewhere."""
    path = tmp_path / "shadow.bin"
    mm = np.memmap(path, dtype=np.float64, mode="w+", shape=(8,))
    mm[:] = np.arange(8.0)
    view = mm[1::3]
    assert ema.ema_update(view, np.full(3, 9.0), 1, decay=0.5) is view
    mm.flush()
    on_disk = np.fromfile(path, dtype=np.float64)
    assert on_disk.tolist() == [0.0, 5.0, 2.0, 3.0, 6.5, 5.0, 6.0, 8.0]
    del view, mm


# --- read-only and broadcast shadows -------------------------------------------------------------


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@pytest.mark.parametrize(
    "make",
    [
        lambda: _read_only(np.zeros((2, 3))),
        lambda: np.broadcast_to(np.zeros(3), (2, 3)),
        lambda: as_strided(np.zeros(3), shape=(2, 3), strides=(0, 8)),  # writeable, stride 0
    ],
    ids=["read-only", "broadcast_to", "writeable-stride-0"],
)
def test_unwriteable_shadows_under_each_copy_mode(make: Callable[[], np.ndarray]) -> None:
    """A read-only or broadcast shadow beside a plain one: ``copy=None`` returns a new array
    for it and writes the plain one; ``copy=False`` names it and writes nothing;
    ``copy=True`` writes nothing and returns the blend for both."""
    params = {"a": np.full((2, 3), 4.0), "w": np.arange(6.0).reshape(2, 3)}
    odd = make()
    plain = np.ones((2, 3))
    before = odd.copy()
    want = _blend(before, params["w"])
    with pytest.raises(ValueError, match=r"copy=False .* shadow\['w'\] cannot be written"):
        ema.ema_update({"a": plain, "w": odd}, params, 1, decay=DECAY, copy=False)
    assert plain.tolist() == [[1.0] * 3] * 2 and _bits(odd) == _bits(before)
    out = ema.ema_update({"a": plain, "w": odd}, params, 1, decay=DECAY, copy=True)
    assert out["a"] is not plain and plain.tolist() == [[1.0] * 3] * 2
    assert out["w"] is not odd and _bits(out["w"]) == _bits(want)
    out = ema.ema_update({"a": plain, "w": odd}, params, 1, decay=DECAY)
    assert out["a"] is plain and plain.tolist() == [[1.75] * 3] * 2
    assert out["w"] is not odd and _bits(out["w"]) == _bits(want)
    assert _bits(odd) == _bits(before)
    assert out["w"].flags.writeable and 0 not in out["w"].strides


# --- overlaps: between shadows, and between a shadow and the params ------------------------------


def test_two_overlapping_views_as_shadows_are_refused_by_both_paths() -> None:
    """Two shadows over overlapping parts of one buffer: ``ValueError`` naming both paths,
    before any write (also of a valid leaf before them); ``copy=True`` computes both."""
    buf = np.arange(10.0)
    first = np.zeros(3)
    shadow = {"a": first, "b": buf[:6], "c": buf[4:]}
    params = {"a": np.ones(3), "b": np.ones(6), "c": np.ones(6)}
    _refused(
        lambda: ema.ema_update(shadow, params, 1, decay=0.5),
        r"shadow\['b'\] and shadow\['c'\] share memory",
        buf,
        first,
    )
    out = ema.ema_update(shadow, params, 1, decay=0.5, copy=True)
    assert out["c"].tolist() == [2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    assert buf.tolist() == list(np.arange(10.0))


def test_overlapping_shadows_behind_a_long_interleaved_view_are_refused() -> None:
    """``buf[0::2]`` spans the whole buffer without sharing an element with ``buf[1:4:2]`` or
    ``buf[3:4]``, but those two share element 3: the update would apply twice there."""
    buf = np.zeros(20)
    shadow = [buf[0::2], buf[1:4:2], buf[3:4]]
    params = [np.ones(10), np.ones(2), np.ones(1)]
    _refused(
        lambda: ema.ema_update(shadow, params, 1, decay=0.5),
        r"shadow\[1\] and shadow\[2\] share memory",
        buf,
    )


def test_a_shadow_overlapping_other_params_behind_a_long_interleaved_view_is_refused() -> None:
    """``shadow[0] = buf[3:4]`` is element 3 of ``params[2] = buf[1:4]``; ``params[1] =
    buf[0::2]`` spans past both without sharing an element with the shadow."""
    buf = np.arange(20.0)
    shadow = [buf[3:4], np.zeros(10), np.zeros(3)]
    params = [np.ones(1), buf[0::2], buf[1:4]]
    _refused(
        lambda: ema.ema_update(shadow, params, 1, decay=0.5),
        r"shadow\[0\] and params\[2\] share memory",
        buf,
        shadow[1],
        shadow[2],
    )


@pytest.mark.parametrize(
    "alias",
    [
        lambda x: as_strided(x, shape=x.shape, strides=x.strides),
        lambda x: np.frombuffer(memoryview(x), dtype=x.dtype),
    ],
    ids=["as_strided", "frombuffer"],
)
def test_a_view_over_foreign_memory_beside_its_owner_is_refused(
    alias: Callable[[np.ndarray], np.ndarray],
) -> None:
    """A view whose ``base`` is no ndarray (``as_strided``, ``np.frombuffer``) over the same
    memory as another shadow: the same array twice, refused as ``[x, x]`` is."""
    x = np.zeros(4)
    shadow = [x, alias(x)]
    assert shadow[1].flags.writeable
    _refused(
        lambda: ema.ema_update(shadow, [np.ones(4), np.ones(4)], 1, decay=0.5),
        r"shadow\[0\] and shadow\[1\] share memory",
        x,
    )


def _subclass_and_read_only_view() -> tuple[list[Any], list[Any], np.ndarray]:
    """An ndarray subclass over a buffer (the numpy backend's generic route writes it inside
    its loop over the leaves) and a read-only view of that buffer's first half."""
    sub = type("Sub", (np.ndarray,), {})
    buf = np.zeros(4)
    ro = buf[:2].view()
    ro.flags.writeable = False
    return [buf.view(sub), ro], [np.ones(4), np.ones(2)], buf


def _strict_and_read_only_view() -> tuple[list[Any], list[Any], np.ndarray]:
    """An array-api-strict array and a read-only view of its memory wrapped without a copy."""
    x = aas.zeros(4, dtype=aas.float64)
    ro = np.asarray(x)[:2].view()
    ro.flags.writeable = False
    ones = [aas.ones(4, dtype=aas.float64), aas.ones(2, dtype=aas.float64)]
    return [x, aas.asarray(ro, copy=False)], ones, np.asarray(x)


@pytest.mark.parametrize(
    "make", [_subclass_and_read_only_view, _strict_and_read_only_view], ids=["subclass", "strict"]
)
def test_a_read_only_shadow_over_memory_another_leaf_writes_is_not_blended_twice(
    make: Callable[[], tuple[list[Any], list[Any], np.ndarray]],
) -> None:
    """``[w, ro]`` where ``ro`` is a read-only view of ``w``'s buffer: ``copy=None`` writes
    ``w`` in place and returns a new array for ``ro``. The README says a shadow written in place
    may not share memory with another one, so either the call is refused with nothing written
    or ``ro``'s new array is the blend of its values before the call (what ``copy=True`` gives),
    not the blend of values that ``w``'s write has already moved (the update applied twice)."""
    shadow, params, buf = make()
    assert np.shares_memory(np.asarray(shadow[1]), buf)
    want = ema.ema_update(shadow, params, 1, decay=0.5, copy=True)
    try:
        out = ema.ema_update(shadow, params, 1, decay=0.5)
    except ValueError as error:
        assert "share memory" in str(error) and buf.tolist() == [0.0] * 4
    else:
        assert _bits(out[1]) == _bits(want[1]) and _bits(buf) == _bits(want[0])


def test_a_view_over_foreign_memory_is_compared_with_the_params() -> None:
    """An ``as_strided`` alias of the params as another leaf's shadow is refused (params are
    compared by byte range when any side lies over foreign memory)."""
    p = np.arange(4.0)
    _refused(
        lambda: ema.ema_update([np.zeros(4), as_strided(p)], [p, np.ones(4)], 1, decay=0.5),
        r"shadow\[1\] and params\[0\] share memory",
        p,
    )


@pytest.mark.parametrize(
    ("shadow_of", "params_of"),
    [
        (lambda b: b, lambda b: b[::-1]),  # the params reversed
        (lambda b: b[:4], lambda b: b[2:]),  # shifted
        (lambda b: b.reshape(2, 3), lambda b: b.reshape(2, 3)[::-1]),  # rows swapped
        (lambda b: b.reshape(2, 3).T, lambda b: b.reshape(3, 2)),  # same shape, other elements
    ],
    ids=["reversed", "shifted", "rows-swapped", "transposed"],
)
def test_params_that_are_another_view_of_the_shadows_buffer_are_refused(
    shadow_of: Callable[[np.ndarray], np.ndarray],
    params_of: Callable[[np.ndarray], np.ndarray],
) -> None:
    """Params over the shadow's own memory but not its very same elements: ``ValueError``
    naming both, nothing written; ``copy=True`` gives the blend of the values as they were."""
    buf = np.arange(6.0)
    s, p = shadow_of(buf), params_of(buf)
    want = _blend(s.copy(), p.copy())
    _refused(
        lambda: ema.ema_update({"w": s}, {"w": p}, 1, decay=DECAY),
        r"shadow\['w'\] and params\['w'\] share memory",
        buf,
    )
    out = ema.ema_update({"w": s}, {"w": p}, 1, decay=DECAY, copy=True)
    assert _bits(out["w"]) == _bits(want) and buf.tolist() == list(np.arange(6.0))


@pytest.mark.parametrize(
    "same", [lambda b: b[::-1], lambda b: b.T, lambda b: b[:, ::2]], ids=["rev", "T", "step"]
)
def test_a_shadow_that_is_another_object_for_its_own_params_elements_is_allowed(
    same: Callable[[np.ndarray], np.ndarray],
) -> None:
    """Two view objects with the very same elements as shadow and params (the shadow is its
    own params): allowed, and the blend of a value with itself keeps it."""
    buf = np.arange(12.0).reshape(3, 4) / 3
    before = buf.copy()
    s, p = same(buf), same(buf)
    assert s is not p
    assert ema.ema_update(s, p, 1, decay=DECAY, copy=False) is s
    assert _bits(buf) == _bits(before)


def test_one_params_array_for_two_leaves_is_read_by_both() -> None:
    """Params may alias each other (they are only read): the same array for two leaves, and
    overlapping views, each give their shadow the blend of what they point at."""
    p = np.arange(8.0)
    shadow = {"a": np.zeros(8), "b": np.zeros(8), "c": np.zeros(4), "d": np.zeros(4)}
    params = {"a": p, "b": p, "c": p[2:6], "d": p[::-2]}
    out = ema.ema_update(shadow, params, 1, decay=0.5, copy=False)
    assert out["a"].tolist() == out["b"].tolist() == (p / 2).tolist()
    assert out["c"].tolist() == [1.0, 1.5, 2.0, 2.5]
    assert out["d"].tolist() == [3.5, 2.5, 1.5, 0.5]
    assert p.tolist() == list(np.arange(8.0))


@pytest.mark.parametrize(
    "views",
    [lambda x: [x[:3], x[1:]], lambda x: [x, x[::-1]], lambda x: [x[::2], x[2:3]]],
    ids=["shifted", "reversed", "strided"],
)
def test_array_api_strict_overlapping_slices_are_refused(
    views: Callable[[Any], list[Any]],
) -> None:
    """array-api-strict slices are views of one numpy buffer: overlapping ones as shadows are
    refused as numpy's are, nothing written; ``copy=True`` computes them."""
    x = aas.asarray(np.arange(5.0))
    shadow = views(x)
    params = [aas.ones(s.shape, dtype=aas.float64) for s in shadow]
    with pytest.raises(ValueError, match=r"shadow\[0\] and shadow\[1\] share memory"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert np.asarray(x).tolist() == list(np.arange(5.0))
    out = ema.ema_update(shadow, params, 1, decay=0.5, copy=True)
    for o, s in zip(out, shadow, strict=True):
        assert np.asarray(o).tolist() == ((np.asarray(s) + 1) / 2).tolist()
    assert np.asarray(x).tolist() == list(np.arange(5.0))


def test_array_api_strict_interleaved_slices_are_written_in_place() -> None:
    """Interleaved array-api-strict slices share no element: both are written in place, into
    the buffer they slice."""
    x = aas.zeros(6, dtype=aas.float64)
    shadow = {"even": x[::2], "odd": x[1::2]}
    params = {"even": aas.ones(3, dtype=aas.float64), "odd": aas.full(3, 3.0, dtype=aas.float64)}
    ema.ema_update(shadow, params, 1, decay=0.5, copy=False)
    assert np.asarray(x).tolist() == [0.5, 1.5] * 3


# --- the plan cache while the leaves change ------------------------------------------------------


def test_replacing_dict_values_with_overlapping_views_is_checked_again() -> None:
    """A cached nest whose values are replaced by new views of the same memory, now
    overlapping: the new objects are checked in full and refused, nothing written."""
    _stateless.clear()
    buf = np.zeros(8)
    shadow = {"a": buf[:4], "b": buf[4:]}
    params = {"a": np.ones(4), "b": np.ones(4)}
    for t in (1, 2, 3):
        ema.ema_update(shadow, params, t, decay=0.5)
    assert len(_stateless._ENTRIES) == 1
    shadow["b"] = buf[2:6]
    _refused(
        lambda: ema.ema_update(shadow, params, 4, decay=0.5),
        r"shadow\['a'\] and shadow\['b'\] share memory",
        buf,
    )


def test_a_cached_view_reshaped_in_place_is_checked_again() -> None:
    """A cached shadow view given another shape in place (``a.shape = ...``) no longer matches
    its params: ``ValueError`` naming it, nothing written; restored, it updates again."""
    _stateless.clear()
    buf = np.zeros(12)
    s = buf[2:8]
    for t in (1, 2, 3):
        ema.ema_update({"w": s}, {"w": np.ones(6)}, t, decay=0.5)
    s.shape = (2, 3)
    _refused(
        lambda: ema.ema_update({"w": s}, {"w": np.ones(6)}, 4, decay=0.5),
        r"shadow\['w'\] has shape \(2, 3\) but params\['w'\] has shape \(6,\)",
        buf,
    )
    s.shape = (6,)
    ema.ema_update({"w": s}, {"w": np.ones(6)}, 5, decay=0.5)
    assert buf[2:8].tolist() == [1.0 - 0.5**4] * 6 and buf[[0, 1, 8, 9]].tolist() == [0.0] * 4


def test_a_cached_shadow_cannot_be_resized_under_the_plan() -> None:
    """The cache's weak references keep ``ndarray.resize`` (which would move the memory under
    the kept engine plan) refused even with ``refcheck=False``; the plan stays valid."""
    _stateless.clear()
    shadow, params = {"w": np.zeros(4)}, {"w": np.ones(4)}
    for t in (1, 2, 3):
        ema.ema_update(shadow, params, t, decay=0.5)
    with pytest.raises(ValueError, match="cannot resize"):
        shadow["w"].resize((400,), refcheck=False)
    ema.ema_update(shadow, params, 4, decay=0.5)
    assert shadow["w"].tolist() == [1.0 - 0.5**4] * 4


def test_the_buffer_under_a_cached_view_changed_by_the_user_is_read_afresh() -> None:
    """Values written into the buffer under cached views between calls are what the next
    cached update blends (the plan keeps addresses, never values)."""
    _stateless.clear()
    sbuf, pbuf = np.zeros(10), np.zeros(10)
    shadow, params = {"w": sbuf[2:7]}, {"w": pbuf[3:8]}
    for t in (1, 2, 3):
        ema.ema_update(shadow, params, t, decay=0.5)
    sbuf[:] = 8.0
    pbuf[:] = np.arange(10.0)
    ema.ema_update(shadow, params, 4, decay=0.5)
    assert sbuf.tolist() == [8.0, 8.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.0, 8.0]


# --- dtypes, array types and steps ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: np.zeros(2, dtype=[("a", "f8")]), r"has dtype \[\('a', '<f8'\)\]"),
        (lambda: np.zeros(2, dtype=object), "has dtype object"),
        (lambda: np.zeros(2, dtype=">f8"), "non-native byte order"),
        (lambda: np.ma.array(np.ones(2), mask=[True, False]), "masked array"),
    ],
    ids=["structured", "object", "big-endian", "masked"],
)
@pytest.mark.parametrize("side", ["shadow", "params"])
def test_odd_leaves_are_refused_by_path_before_any_write(
    make: Callable[[], np.ndarray], said: str, side: str
) -> None:
    """A structured, object, big-endian or masked leaf as shadow or params: ``TypeError``
    naming ``shadow['x']`` or ``params['x']``; the valid leaf beside it is not written."""
    first = np.zeros(2)
    shadow = {"a": first, "x": np.zeros(2)}
    params = {"a": np.ones(2), "x": np.ones(2)}
    (shadow if side == "shadow" else params)["x"] = make()
    with pytest.raises(TypeError, match=rf"{side}\['x'\] .*{said}"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert first.tolist() == [0.0, 0.0]


def test_a_numpy_matrix_leaf_is_refused_by_path() -> None:
    """``np.matrix`` (whose ``*`` is a matrix product) is no array to average: ``TypeError``
    naming the leaf, nothing written."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        m = np.matrix([[1.0, 2.0], [3.0, 4.0]])
    first = np.zeros(2)
    with pytest.raises(TypeError, match=r"shadow\['m'\] must be an array, got matrix"):
        ema.ema_update({"a": first, "m": m}, {"a": np.ones(2), "m": np.eye(2)}, 1, decay=0.5)
    assert first.tolist() == [0.0, 0.0] and m.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_a_float16_view_shadow_blends_in_float32_and_rounds_once() -> None:
    """A float16 shadow (a strided view) over float16 params: computed in float32, written in
    place as float16, the buffer's other elements untouched."""
    buf = (np.arange(12) / 7).astype(np.float16)
    s = buf[1::2]
    p = (np.arange(6) / 3).astype(np.float16)
    s32, p32 = s.astype(np.float32), p.astype(np.float32)
    want = (s32 + np.float32(1.0 - DECAY) * (p32 - s32)).astype(np.float16)
    evens = buf[::2].copy()
    assert ema.ema_update(s, p, 1, decay=DECAY) is s
    assert _bits(s) == _bits(want) and _bits(buf[::2]) == _bits(evens)


@pytest.mark.skipif(np.finfo(np.longdouble).bits <= 64, reason="np.longdouble is float64 here")
def test_a_longdouble_reversed_view_blends_in_its_own_dtype() -> None:
    """A reversed long double view is blended in long double, in place."""
    buf = np.arange(6, dtype=np.longdouble) / 3
    s, p = buf[::-1], np.full(6, np.longdouble(2) / 3)
    want = _blend(s.copy(), p)
    assert ema.ema_update(s, p, 1, decay=DECAY) is s
    assert s.dtype == np.longdouble  # compared by value: float128's padding bytes are junk
    assert np.array_equal(s, want) and not np.array_equal(s.astype(np.float64), want)


@pytest.mark.parametrize(
    "step",
    [np.array(3, np.int64), np.array(3, np.uint64), np.uint64(3), np.int8(3), aas.asarray(3)],
    ids=["int64-0d", "uint64-0d", "uint64-scalar", "int8-scalar", "strict-0d"],
)
def test_numpy_and_strict_integer_steps_act_as_the_int(step: Any) -> None:
    """A 0-d integer step of any width (numpy or array-api-strict) gives the Python int's bits
    under a schedule that depends on the step."""
    sched = ema.schedules.num_updates(0.99)
    want = ema.ema_update(np.zeros(3), np.ones(3), 3, schedule=sched)
    got = ema.ema_update(np.zeros(3), np.ones(3), step, schedule=sched)
    assert _bits(got) == _bits(want)


@pytest.mark.parametrize(
    ("step", "error", "said"),
    [
        (True, TypeError, "step must be a Python int .* got bool"),
        (np.bool_(True), TypeError, "step must be a 0-d integer array.*bool"),
        (np.array(1.0), TypeError, "step must be a 0-d integer array.*float64"),
        (np.array([1]), TypeError, r"step must be a 0-d integer array.*\(1,\)"),
        (np.uint64(2**63), ValueError, r"step must be <= 2\*\*63 - 1"),
        (np.array(-1, np.int64), ValueError, "step must be >= 0"),
    ],
    ids=["bool", "np-bool", "float-0d", "1-d", "uint64-top", "negative"],
)
def test_bad_steps_are_refused_before_any_write(step: Any, error: type, said: str) -> None:
    """A bool, float, 1-d, too large or negative step: the error names ``step``, and the
    shadow view is left as it was."""
    buf = np.zeros(4)
    with pytest.raises(error, match=said):
        ema.ema_update({"w": buf[1:3]}, {"w": np.ones(2)}, step, decay=0.5)
    assert buf.tolist() == [0.0] * 4


# --- the functional init / update / average over views -------------------------------------------


def test_init_update_average_never_write_into_view_params_or_shadows() -> None:
    """``init`` over strided view params makes shadows that share no memory with them;
    ``update`` of a state whose shadow is a view of a buffer never writes that buffer; the
    ``average`` of a non-zeros EMA is the shadow itself (as documented)."""
    pbuf = np.arange(12.0)
    params = {"w": pbuf[::3], "r": pbuf[::-1][:4]}
    state = ema.init(params)
    for k, p in params.items():
        assert not np.shares_memory(state.shadow[k], pbuf)
        assert state.shadow[k].tolist() == p.tolist()
    sbuf = np.zeros(10)
    state = state._replace(shadow={"w": sbuf[1:5], "r": sbuf[6:10]})
    cfg = ema.Config(schedule=0.5)
    new = ema.update(state, params, cfg)
    assert sbuf.tolist() == [0.0] * 10 and pbuf.tolist() == list(np.arange(12.0))
    assert new.shadow["w"].tolist() == (params["w"] / 2).tolist()
    assert ema.average(new, cfg)["w"] is new.shadow["w"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.broadcast_to(np.arange(3.0), (2, 3)),
        lambda: _read_only(np.arange(6.0).reshape(2, 3)),
        lambda: np.arange(12.0).reshape(4, 3)[::-2],
    ],
    ids=["broadcast", "read-only", "reversed-strided"],
)
def test_init_over_unwriteable_or_strided_params_gives_writeable_shadows(
    make: Callable[[], np.ndarray],
) -> None:
    """``init`` over broadcast, read-only or strided params makes a writeable shadow of its
    own memory (no stride 0), which a later ``copy=False`` update writes in place."""
    params = {"w": make()}
    shadow = ema.init(params).shadow
    s = shadow["w"]
    assert s.flags.writeable and 0 not in s.strides and not np.shares_memory(s, params["w"])
    assert _bits(s) == _bits(params["w"])
    assert ema.ema_update(shadow, params, 1, decay=0.5, copy=False)["w"] is s


def test_a_zeros_read_of_a_view_shadow_is_a_new_array() -> None:
    """Under ``init="zeros"`` the corrected read of a view shadow is a new array, the buffer
    under the shadow unchanged."""
    cfg = ema.Config(schedule=0.5, init="zeros")
    sbuf = np.zeros(6)
    state = ema.init({"w": np.ones(3)}, cfg)._replace(shadow={"w": sbuf[::2]})
    state = ema.update(state, {"w": np.full(3, 4.0)}, cfg)
    read = ema.average(state, cfg)["w"]
    assert read.tolist() == [4.0] * 3 and not np.shares_memory(read, sbuf)
    assert sbuf.tolist() == [0.0] * 6


# ---- self-overlapping views (as_strided with no stride 0) ----


@pytest.mark.parametrize(
    ("shape", "strides"),
    [((3, 3), (4, 4)), ((2, 3), (8, 4)), ((4,), (2,))],
    ids=["rows-over-one-element", "rows-overlapping", "half-an-element-apart"],
)
def test_a_self_overlapping_numpy_shadow_is_copied_or_refused(
    shape: tuple[int, ...], strides: tuple[int, ...]
) -> None:
    """A float32 shadow whose elements share memory with each other (``as_strided`` with no
    stride 0: two elements at one offset, or less than an element apart) cannot be blended in
    place; ``copy=None`` returns a new array with the ``copy=True`` numbers, the memory
    unchanged, and ``copy=False`` is a ValueError naming it."""
    base = np.zeros(16, np.float32)
    s = as_strided(base, shape, strides)
    p = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    want = ema.ema_update(s, p, 1, decay=DECAY, copy=True)
    out = ema.ema_update(s, p, 1, decay=DECAY)
    assert out is not s and _bits(out) == _bits(want) == _bits(_blend(np.array(s), p))
    assert not base.any()
    with pytest.raises(ValueError, match=r"copy=False .* shadow .*self-overlapping"):
        ema.ema_update(s, p, 1, decay=DECAY, copy=False)
    assert not base.any()


def test_an_interleaved_view_whose_elements_do_not_overlap_is_written_in_place() -> None:
    """``as_strided`` with shape (3, 2) and strides of 2 and 3 elements: the strides fail the
    quick test (3 < the 4 elements the first dimension spans) but no two elements meet, so the
    shadow is written in place like any view."""
    base = np.zeros(8, np.float32)
    s = as_strided(base, (3, 2), (2 * 4, 3 * 4))
    p = np.arange(1.0, 7.0, dtype=np.float32).reshape(3, 2)
    want = _blend(np.array(s), p)
    out = ema.ema_update(s, p, 1, decay=DECAY)
    assert out is s and _bits(s) == _bits(want)


def test_an_empty_view_with_overlapping_strides_is_written_in_place() -> None:
    """A zero-size view whose other dimensions' strides would overlap has no elements to
    share: it is returned as it is, not copied."""
    base = np.zeros(8, np.float32)
    s = as_strided(base, (0, 3, 3), (4, 4, 4))
    p = np.zeros((0, 3, 3), np.float32)
    assert ema.ema_update(s, p, 1, decay=DECAY, copy=False) is s
