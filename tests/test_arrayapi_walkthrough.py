"""A new user's walk through the functional API on numpy and array-api-strict: the breaks found.

- ``np.memmap`` leaves (a model too big for memory) took the generic route, allocating three
  model-sized temporaries per update; they now take the host engine, with the same bits.
- The generic backend (array-api-strict computes with numpy) let numpy's ``RuntimeWarning`` out
  of an update (inf - inf, an overflowing cast), an error under ``-W error`` after earlier
  leaves were written; ``init`` on numpy did the same for a cast that overflows.
- ``np.ma`` arrays were blended with their masks kept inconsistently (a masked param masked
  the shadow for good, a decay of 0 copied the values under the mask): now a ``TypeError``.
"""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

import ema_core as ema
from ema_core import _core

xp = pytest.importorskip("array_api_strict")


def _memmaps(tmp_path: Path, n: int) -> tuple[np.memmap, np.memmap, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    s0 = rng.standard_normal(n).astype(np.float32)
    p0 = rng.standard_normal(n).astype(np.float16)
    s = np.memmap(tmp_path / "s.bin", dtype=np.float32, mode="w+", shape=(n,))
    p = np.memmap(tmp_path / "p.bin", dtype=np.float16, mode="w+", shape=(n,))
    s[:], p[:] = s0, p0
    return s, p, s0, p0


def test_memmap_leaves_update_in_place_without_model_sized_temporaries(tmp_path: Path) -> None:
    n = 1 << 20  # 4 MiB of float32 shadow; the generic route allocated 3 such temporaries
    s, p, s0, p0 = _memmaps(tmp_path, n)
    ema.ema_update(np.zeros(n, np.float32), np.ones(n, np.float16), 1, decay=0.5)  # compiles
    ref = s0
    for step in (1, 2):  # planned, then from the plan cache
        tracemalloc.start()
        try:
            out = ema.ema_update(s, p, step, decay=0.9)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert out is s
        assert peak < s.nbytes // 4, (step, peak)
        ref = _core.blend(np, ref, p0, 0.9, 1 - 0.9)
        assert np.asarray(s).tobytes() == ref.tobytes()


def test_memmap_leaves_match_the_generic_bits_cached_copied_and_strided(tmp_path: Path) -> None:
    s, p, s0, p0 = _memmaps(tmp_path, 5000)
    ref = s0
    for step, d in enumerate((0.9, 0.3, 0.0, 0.999), start=1):  # step 2 on: the plan cache
        assert ema.ema_update({"a": s}, {"a": p}, step, decay=d)["a"] is s
        ref = _core.blend(np, ref, p0, d, 1 - d)
        assert np.asarray(s).tobytes() == ref.tobytes()
    copied = ema.ema_update(s, p, 5, decay=0.5, copy=True)
    assert not np.shares_memory(copied, s)
    assert np.asarray(copied).tobytes() == _core.blend(np, ref, p0, 0.5, 0.5).tobytes()
    assert np.asarray(s).tobytes() == ref.tobytes()
    m = np.memmap(tmp_path / "m.bin", dtype=np.float64, mode="w+", shape=(6, 8))
    m[:] = 1.0
    view = m[::2, ::-3]
    assert ema.ema_update(view, np.zeros(view.shape), 1, decay=0.25) is view
    assert (m[::2, ::-3] == 0.25).all() and (m[1::2] == 1.0).all()


def _strict_pair() -> tuple[dict[str, object], dict[str, object]]:
    inf = float("inf")
    shadow = {
        "a": xp.zeros(3, dtype=xp.float64),
        "b": xp.asarray([inf, 3e38, -3e38], dtype=xp.float32),
    }
    params = {
        "a": xp.ones(3, dtype=xp.float64),
        "b": xp.asarray([inf, -3e38, 3e38], dtype=xp.float32),
    }
    return shadow, params


@pytest.mark.parametrize("decay", [0.5, "array"])
def test_generic_backend_gives_ieee_values_without_warnings(decay: object) -> None:
    shadow, params = _strict_pair()
    d = xp.asarray(0.5) if decay == "array" else 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ema.ema_update(shadow, params, 1, decay=d)  # type: ignore[arg-type]
    assert out["a"] is shadow["a"]
    np.testing.assert_array_equal(np.asarray(shadow["a"]), [0.5, 0.5, 0.5])
    b = np.asarray(shadow["b"])
    assert np.isnan(b[0]) and np.isinf(b[1:]).all()  # inf - inf; (p - s) overflows float32


def test_init_update_average_cast_overflow_without_warnings() -> None:
    cfg = ema.Config(0.5, dtype="float32", init="zeros")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for params in ({"w": np.asarray([1e300, 1.0])}, {"w": xp.asarray([1e300, 1.0])}):
            state = ema.init(params, cfg)
            state = ema.update(state, params, cfg)
            avg = np.asarray(ema.average(state, cfg)["w"])
            assert avg.dtype == np.float32 and np.isinf(avg[0]) and avg[1] == 1.0
        state = ema.init({"w": np.asarray([1e300])}, ema.Config(0.5, dtype="float16"))
        assert np.isinf(state.shadow["w"]).all()


@pytest.mark.parametrize("where", ["shadow", "params"])
def test_masked_arrays_are_refused_by_path_before_any_write(where: str) -> None:
    plain = np.zeros(3)
    masked = np.ma.array(np.zeros(3), mask=[0, 1, 0])
    shadow = {"a": plain, "m": masked if where == "shadow" else np.zeros(3)}
    params = {"a": np.ones(3), "m": masked if where == "params" else np.ones(3)}
    with pytest.raises(TypeError, match=rf"{where}\['m'\] is a numpy masked array.*getdata"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert plain.tobytes() == np.zeros(3).tobytes()
    assert masked.mask.tolist() == [False, True, False]
    with pytest.raises(TypeError, match=r"params\['m'\] is a numpy masked array"):
        ema.init({"m": masked})


def test_complex_and_real_pairs_say_which_shadow_is_needed() -> None:
    with pytest.raises(TypeError, match="a complex leaf a complex one"):
        ema.ema_update(np.zeros(2), np.ones(2, np.complex128), 1, decay=0.5)


@pytest.mark.parametrize("weight", ["float", "array"])
def test_a_zero_started_0d_shadow_reads_as_a_0d_array(weight):
    # numpy divides 0-d arrays into a numpy scalar; the read keeps the shadow's kind of object
    cfg = ema.Config(0.5, init="zeros")
    state = ema.update(
        ema.init({"w": np.zeros((), np.float32)}, cfg), {"w": np.asarray(4.0, np.float32)}, cfg
    )
    if weight == "array":
        state = state._replace(weight=np.asarray(state.weight, np.float64))
    got = ema.average(state, cfg)["w"]
    assert type(got) is np.ndarray and got.shape == () and got.dtype == np.float32
    assert float(got) == 4.0
