"""The stateless call's plan cache (``ema_core._stateless``): a nest changed behind its back
(resized, replaced, re-pointed, another dtype, strides or writeable flag, a leaf that died and
whose id came back, other options, a leaf added or removed) is checked and planned again: the
result has the bits of a call the cache never saw, and errors still raise with nothing written."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import _stateless

torch = pytest.importorskip("torch")

Nest = dict[str, Any]
_config = ema.Config(schedule=0.9, non_float="error")


def _nests(params_dtype: torch.dtype = torch.float32) -> tuple[Nest, Nest]:
    gen = torch.Generator().manual_seed(0)
    shadow = {k: torch.randn(4, 4, generator=gen) for k in "abc"}
    params = {k: torch.randn(4, 4, generator=gen).to(params_dtype) for k in "abc"}
    shadow["n"], params["n"] = torch.zeros(3, dtype=torch.int64), torch.arange(3)
    return shadow, params


def _cached(shadow: Nest, params: Nest, **kw: Any) -> None:
    """Two calls: the second makes the cache entry, the third uses it (and its plan)."""
    _stateless.clear()
    for t in (1, 2, 3):
        ema.ema_update(shadow, params, t, decay=0.9, **kw)
    (entry,) = _stateless._ENTRIES.values()
    assert _stateless.find(list(shadow.values()), list(params.values()), entry.treedef,
                           entry.options) is entry  # fmt: skip


def _fresh(nest: Nest) -> Nest:
    return {k: torch.empty_like(v).copy_(v) if isinstance(v, torch.Tensor) else v.copy()
            for k, v in nest.items()}  # fmt: skip


def _same_as_uncached(shadow: Nest, params: Nest, **kw: Any) -> None:
    """The cached call gives the bits of the same call on new objects (never cached)."""
    want = ema.ema_update(_fresh(shadow), _fresh(params), 4, decay=0.9, **kw)
    got = ema.ema_update(shadow, params, 4, decay=0.9, **kw)
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
        a, b = (np.ascontiguousarray(x).view(np.uint8) for x in (got[k], want[k]))
        assert np.array_equal(a, b), k


def _refused(err: type[Exception], match: str, shadow: Nest, call: Callable[[], Any]) -> None:
    before = {k: np.asarray(v).copy() for k, v in shadow.items()}
    with pytest.raises(err, match=match):
        call()
    for k, v in before.items():
        assert np.array_equal(np.asarray(shadow[k]), v), k


def _replace_data(s: Nest, p: Nest) -> None:
    p["a"].data = torch.full((4, 4), 7.0, dtype=p["a"].dtype)


def _replace_object(s: Nest, p: Nest) -> None:
    p["a"] = torch.full((4, 4), 7.0, dtype=p["a"].dtype)


def _set_storage(s: Nest, p: Nest) -> None:
    s["a"].set_(torch.zeros(4, 4))
    p["b"].set_(torch.ones(16, dtype=p["b"].dtype).view(4, 4))


def _resize_both(s: Nest, p: Nest) -> None:
    s["a"].resize_(5, 4)
    p["a"].resize_(5, 4)


def _to_bfloat16(s: Nest, p: Nest) -> None:
    p["a"].data = p["a"].data.to(torch.bfloat16)


def _to_float64(s: Nest, p: Nest) -> None:
    p["b"].data = p["b"].data.double()
    s["c"].data = s["c"].data.double()


def _transposed(s: Nest, p: Nest) -> None:
    s["a"].t_()
    p["b"].t_()


def _broadcast(s: Nest, p: Nest) -> None:
    s["a"].as_strided_((4, 4), (0, 1))  # a broadcast view: no longer written in place


def _added(s: Nest, p: Nest) -> None:
    s["d"], p["d"] = torch.zeros(2), torch.ones(2)


def _removed(s: Nest, p: Nest) -> None:
    del s["b"], p["b"]


@pytest.mark.parametrize("change", [_replace_data, _replace_object, _set_storage, _resize_both,
                                    _to_bfloat16, _to_float64, _transposed, _broadcast, _added,
                                    _removed])  # fmt: skip
@pytest.mark.parametrize("params_dtype", [torch.float32, torch.bfloat16])
def test_a_changed_nest_is_planned_again(
    change: Callable[[Nest, Nest], None], params_dtype: torch.dtype
) -> None:
    """fp32 params take torch's fused lerp, bf16 ones the host engine over kept views. The
    engine's views are made from data addresses, so the tensors stay resizable: a storage that
    grows moves its data, and the cache plans again (it compares data pointers)."""
    shadow, params = _nests(params_dtype)
    _cached(shadow, params)
    change(shadow, params)
    _same_as_uncached(shadow, params)


def test_a_resized_params_tensor_still_raises_before_any_write() -> None:
    shadow, params = _nests()
    _cached(shadow, params)
    params["b"].resize_(16)
    _refused(ValueError, r"params\['b'\] has shape \(16,\)", shadow,
             lambda: ema.ema_update(shadow, params, 4, decay=0.9))  # fmt: skip


def test_a_moved_params_tensor_still_raises_before_any_write() -> None:
    shadow, params = _nests()
    _cached(shadow, params)
    params["c"] = params["c"].to("meta")
    _refused(ValueError, r"params\['c'\] is on meta", shadow,
             lambda: ema.ema_update(shadow, params, 4, decay=0.9))  # fmt: skip


def test_a_broadcast_shadow_still_refuses_copy_false() -> None:
    shadow, params = _nests()
    _cached(shadow, params, copy=False)
    _broadcast(shadow, params)
    _refused(ValueError, r"shadow\['a'\] cannot be written in place", shadow,
             lambda: ema.ema_update(shadow, params, 4, decay=0.9, copy=False))  # fmt: skip


def test_an_extra_params_key_still_raises() -> None:
    shadow, params = _nests()
    _cached(shadow, params)
    params["x"] = torch.ones(1)
    _refused(ValueError, r"params\['x'\]: unexpected key", shadow,
             lambda: ema.ema_update(shadow, params, 4, decay=0.9))  # fmt: skip


def test_other_options_are_checked_again() -> None:
    shadow, params = _nests()
    _cached(shadow, params)
    kept = {k: v.clone() for k, v in shadow.items()}
    out = ema.ema_update(shadow, params, 4, decay=0.9, copy=True)
    assert all(out[k] is not shadow[k] and torch.equal(shadow[k], kept[k]) for k in shadow)
    _same_as_uncached(shadow, params, copy=True)
    _refused(TypeError, r"params\['n'\] has non-floating dtype", shadow,
             lambda: ema.ema_update(shadow, params, 4, config=_config))  # fmt: skip
    _refused(TypeError, "copy must be None, True or False", shadow,
             lambda: ema.ema_update(shadow, params, 4, decay=0.9, copy=1))  # fmt: skip


def test_a_leaf_that_died_drops_the_entry_before_its_id_comes_back() -> None:
    """The entry goes the moment one of its leaves dies, so an id that CPython hands to a new
    object later can never match it (whether the allocator reuses the address is up to it)."""
    shadow, params = _nests()
    _cached(shadow, params)
    del params["a"]
    gc.collect()
    assert not _stateless._ENTRIES
    params["a"] = torch.full((4, 4), 3.0, dtype=torch.float64)  # another plan at the same key
    _same_as_uncached(shadow, params)


def test_a_numpy_array_made_read_only_gets_a_new_array() -> None:
    shadow = {k: np.zeros((3, 3)) for k in "ab"}
    params = {k: np.ones((3, 3)) for k in "ab"}
    _stateless.clear()
    for t in (1, 2, 3):
        ema.ema_update(shadow, params, t, decay=0.9)
    assert _stateless._ENTRIES  # numpy leaves are cached too (``leaf_signature``)
    shadow["a"].flags.writeable = False
    before = shadow["a"].copy()
    out = ema.ema_update(shadow, params, 4, decay=0.9)
    assert out["a"] is not shadow["a"] and np.array_equal(shadow["a"], before)
    _refused(ValueError, r"shadow\['a'\] cannot be written in place", shadow,
             lambda: ema.ema_update(shadow, params, 4, decay=0.9, copy=False))  # fmt: skip


def test_the_cache_keeps_no_leaf_alive() -> None:
    shadow, params = _nests()
    _cached(shadow, params)
    probe = [torch.Tensor._make_subclass(torch.Tensor, shadow["a"])]  # noqa: F841
    del shadow, params
    gc.collect()
    assert not _stateless._ENTRIES


def _numpy_nests() -> tuple[Nest, Nest]:
    rng = np.random.default_rng(0)
    shadow = {"w": rng.random((5, 7)), "h": rng.random(300).astype(np.float32),
              "z": rng.random(4) + 1j * rng.random(4), "n": np.zeros(3, np.int64)}  # fmt: skip
    params = {"w": rng.random((5, 7)), "h": rng.random(300).astype(np.float16),
              "z": rng.random(4) + 1j, "n": np.arange(3)}  # fmt: skip
    return shadow, params


def test_numpy_keeps_its_routes_and_plan_and_gives_the_same_bits() -> None:
    """A cached numpy call runs the kept routes and engine plan (over raw views of the arrays'
    memory): the bits of an uncached call, at decays 1, 0 and between (the integer leaf copied
    at each)."""
    shadow, params = _numpy_nests()
    _cached(shadow, params)
    (entry,) = _stateless._ENTRIES.values()
    assert entry.memo["kept"] is not None and entry.memo["kept"].plan is not None
    for decay in (1.0, 0.0, 0.3, 0.999):
        params["n"] += 1
        want = ema.ema_update(shadow, params, 4, decay=decay, copy=True)  # never kept
        got = ema.ema_update(shadow, params, 4, decay=decay)
        for k in want:
            assert got[k] is shadow[k], k
            assert np.array_equal(got[k].view(np.uint8), want[k].view(np.uint8)), (decay, k)


def test_numpy_leaves_the_engine_cannot_keep_are_planned_per_call() -> None:
    """A strided engine leaf cannot be seen through a raw view: planned on every call (still
    cached: the checks are skipped), with the same bits."""
    shadow, params = _numpy_nests()
    shadow["t"], params["t"] = np.zeros((6, 4)).T, np.ones((6, 4)).T
    _cached(shadow, params)
    (entry,) = _stateless._ENTRIES.values()
    assert entry.memo["kept"] is None
    _same_as_uncached(shadow, params)


def test_the_cache_keeps_no_numpy_array_alive() -> None:
    """Every array of a cached call dies with the caller's last reference (the kept plan sees
    their memory through raw views), and the entry goes with the first one. Engine leaves only:
    a leaf outside the plan dying would drop the entry, and with it the plan, anyway."""
    shadow, params = _numpy_nests()
    del shadow["n"], params["n"]
    _cached(shadow, params)
    refs = [weakref.ref(a) for a in (*shadow.values(), *params.values())]
    del shadow, params
    gc.collect()
    assert not _stateless._ENTRIES
    assert all(ref() is None for ref in refs)


def test_an_entry_is_made_the_second_time_in_a_row_only() -> None:
    """A one-off call keeps nothing; the same leaves twice in a row are kept; a call with
    other leaves in between starts the count again."""
    shadow, params = _numpy_nests()
    other = _fresh(shadow), _fresh(params)
    _stateless.clear()
    ema.ema_update(shadow, params, 1, decay=0.9)
    assert not _stateless._ENTRIES
    ema.ema_update(*other, 1, decay=0.9)
    ema.ema_update(shadow, params, 2, decay=0.9)
    assert not _stateless._ENTRIES
    ema.ema_update(shadow, params, 3, decay=0.9)
    assert len(_stateless._ENTRIES) == 1
