"""The host engine (``ema_core/backends/host/``, CPU torch through ``backends/torch/_host.py``
and ``_routes.py``) used the way real users feed it: every layout numpy and torch hand out
(transposed, Fortran, channels_last, stepped slices, negative strides, storage offsets, 0-d,
expanded params), sizes just below, at and above the engine's block constants (``SMALL``,
``BLOCK``, ``LARGE``, ``TORCH_BLOCK``, the thread threshold), the decays at the edges (0, 1, a
float32 subnormal, ``1 - 2**-24``, 0.5 and just below it), NaN, inf and signed zeros, memory-mapped
shadows and 10,000 tiny leaves, with numba on and off. Each result is compared bit for bit with
the README's reference: the generic core (``_core.blend`` in the shadow's dtype) for the host
engine, torch's ``lerp`` for same-dtype torch groups (the fused route), the params' bits at
decay 0 and the shadow's at decay 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import array_api_compat.numpy as np_xp
import numpy as np
import pytest

import ema_core as ema
from ema_core import _core, _settings
from ema_core.backends import host
from ema_core.backends.host import _blocks
from ema_core.schedules import constant

torch = pytest.importorskip("torch")

import array_api_compat.torch as t_xp  # noqa: E402

from ema_core.backends.torch import _host  # noqa: E402

pytestmark = pytest.mark.usefixtures("host_kernels")

#: Decays at the edges of the engine's branches: 1e-40 is a float32 subnormal whose rate rounds
#: to 1.0 in float64, 1 - 2**-24 has an exact float32 rate, 0.5 and the float just below it
#: sit on the two sides of the two-sided lerp.
INTERIOR = [0.999, 0.5, float(np.nextafter(0.5, 0.0)), 0.3, 1.0 - 2.0**-24, 1e-40]
DECAYS = [*INTERIOR, 0.0, 1.0]
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_TINT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _pair_of(decay: float) -> tuple[float, float]:
    """The (decay, rate) the public API takes for a constant decay."""
    d, r = constant(decay).decay_and_rate(1)
    return float(d), float(r)


def _np_bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(a))
    return a.view(_UINT[a.itemsize])


def _t_bits(t: torch.Tensor) -> np.ndarray:
    t = t.detach().contiguous().clone()
    return t.view(_TINT[t.element_size()]).numpy()


def _np_same(got: np.ndarray, want: np.ndarray) -> bool:
    got, want = np.asarray(got), np.asarray(want)
    return got.dtype == want.dtype and np.array_equal(_np_bits(got), _np_bits(want))


def _t_same(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.dtype == want.dtype and np.array_equal(_t_bits(got), _t_bits(want))


def _np_same_nan(got: np.ndarray, want: np.ndarray) -> bool:
    """The same bits, except that any NaN matches any NaN (sign and payload not compared)."""
    got, want = np.asarray(got), np.asarray(want)
    nan = np.isnan(want)
    return bool(
        got.dtype == want.dtype
        and np.array_equal(np.isnan(got), nan)
        and np.array_equal(_np_bits(np.where(nan, 0, got)), _np_bits(np.where(nan, 0, want)))
    )


def _t_same_nan(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.dtype == want.dtype and _np_same_nan(
        got.detach().double().numpy(), want.detach().double().numpy()
    )


def _values(n: int, seed: int, *, shadow: bool) -> np.ndarray:
    """``n`` float64 values with signed zeros (every sign pair of shadow and params at the
    same positions), float32 subnormals and a float16 subnormal first, then random ones."""
    rng = np.random.default_rng(seed)
    out = rng.standard_normal(n) * 3
    head = [0.0, -0.0, 0.0, -0.0, 1e-41, 3.0, 6e-8] if shadow else [-0.0, 0.0, 0.0, -0.0]
    head += [] if shadow else [-1e-41, 6e-8, -2.5e-39]
    k = min(n, len(head))
    out[:k] = head[:k]
    return out


def _np_core(s: np.ndarray, p: np.ndarray, decay: float) -> np.ndarray:
    """The generic core's blend in the shadow's dtype (the engine's reference)."""
    d, r = _pair_of(decay)
    with np.errstate(all="ignore"):
        return np.asarray(_core.blend(np_xp, s.copy(), p, d, r))


def _t_core(s: torch.Tensor, p: torch.Tensor, decay: float) -> torch.Tensor:
    d, r = _pair_of(decay)
    return _core.blend(t_xp, s.clone(), p, d, r).clone()


# --- numpy: every layout, dtype pair and edge decay ------------------------------------------

_NP_PAIRS = [("f4", "f2"), ("f8", "f4"), ("f8", "f2"), ("f4", "f4"), ("f8", "f8"), ("f2", "f2")]


def _np_layout(layout: str, dtype: str, seed: int, *, shadow: bool) -> np.ndarray:
    """One array of ``dtype`` in ``layout`` (a writeable view where the layout is one)."""

    def base(*shape: int) -> np.ndarray:
        return _values(int(np.prod(shape)), seed, shadow=shadow).reshape(shape).astype(dtype)

    match layout:
        case "contiguous":
            return base(6, 10)
        case "transposed":
            return base(10, 6).T
        case "fortran":
            return np.asfortranarray(base(6, 10))
        case "stepped":
            return base(12, 30)[::2, ::3]
        case "negative":
            return base(6, 10)[::-1, ::-2]
        case "zero_d":
            return base(1).reshape(())
        case "channels_last":
            return base(2, 4, 5, 3).transpose(0, 3, 1, 2)
        case "one_element_strided":
            return base(9)[4:5]
    raise AssertionError(layout)


_NP_LAYOUTS = [
    "contiguous",
    "transposed",
    "fortran",
    "stepped",
    "negative",
    "zero_d",
    "channels_last",
    "one_element_strided",
]


@pytest.mark.parametrize(("sd", "pd"), _NP_PAIRS, ids=["-".join(x) for x in _NP_PAIRS])
def test_numpy_layouts_and_edge_decays_equal_the_core(sd: str, pd: str) -> None:
    """numpy leaves of every layout (shadow and params alike, and a contiguous shadow over
    reversed params) blend in place, twice over the same arrays (the second call through the
    stateless plan cache), to the core's bits at every edge decay."""
    for k, layout in enumerate(_NP_LAYOUTS):
        for decay in DECAYS:
            s = _np_layout(layout, sd, k, shadow=True)
            p = _np_layout(layout, pd, k + 100, shadow=False)
            mixed_s = _np_layout("contiguous", sd, k, shadow=True)
            mixed_p = _np_layout("contiguous", pd, k + 200, shadow=False)[::-1]
            shadow, params = {"a": s, "b": mixed_s}, {"a": p, "b": mixed_p}
            for _ in range(2):
                want = {name: _np_core(shadow[name], params[name], decay) for name in shadow}
                out = ema.ema_update(shadow, params, 1, decay=decay)
                for name, arr in shadow.items():
                    assert out[name] is arr, (layout, decay, name)
                    assert _np_same(arr, want[name]), (layout, decay, name, sd, pd)


def test_numpy_float32_shadow_over_float64_params_takes_the_core_bits() -> None:
    """A float32 shadow over float64 params (``Config(dtype="float32")``) is rounded as the
    core rounds it (the params cast to float32 first) in every layout the engine sees, values
    beyond float32's range included."""
    config = ema.Config(schedule=0.3, dtype="float32")
    for k, layout in enumerate(_NP_LAYOUTS):
        first = _np_layout(layout, "f8", k, shadow=False)
        first *= 1e39  # beyond float32: the shadow starts with infinities
        state = ema.init({"w": first}, config)
        shadow = state.shadow["w"]
        later = _np_layout(layout, "f8", k + 50, shadow=False)
        later *= 7.1
        want = _np_core(shadow, later, 0.3)
        state = ema.update(state, {"w": later}, config)
        assert _np_same(state.shadow["w"], want), layout


# --- sizes around the engine's constants -------------------------------------------------------

_SMALL_SIZES = [1, host.SMALL - 1, host.SMALL, host.SMALL + 1]
_BLOCK_SIZES = [_blocks.BLOCK - 1, _blocks.BLOCK, _blocks.BLOCK + 1]


@pytest.mark.parametrize("decay", [0.999, 0.3])
def test_numpy_sizes_around_small_block_and_the_thread_threshold(
    monkeypatch: pytest.MonkeyPatch, decay: float
) -> None:
    """Leaves just below, at and above ``SMALL`` (batched or not), ``BLOCK`` (the numpy
    blocks' and a batch's size) and one over ``2 * LEAST`` elements with a large strided leaf
    (dealt over 2 threads) blend to the core's bits."""
    monkeypatch.setenv("EMA_CORE_NUMPY_THREADS", "2")
    monkeypatch.setattr(_settings, "_kept", [])
    sizes = _SMALL_SIZES + _SMALL_SIZES + _BLOCK_SIZES + [2 * host.LEAST + 1]
    pairs = [("f4", "f2"), ("f8", "f4")]
    shadow, params = {}, {}
    for i, n in enumerate(sizes):
        sd, pd = pairs[i % 2]
        shadow[f"l{i}"] = _values(n, i, shadow=True).astype(sd)
        params[f"l{i}"] = _values(n, i + 500, shadow=False).astype(pd)
    shadow["strided"] = _values(1100 * 1000, 7, shadow=True).astype("f4").reshape(1100, 1000).T
    params["strided"] = _values(1000 * 1100, 8, shadow=False).astype("f2").reshape(1000, 1100)
    n = 2 * _blocks.BLOCK + 3
    shadow["reversed"] = _values(n, 9, shadow=True).astype("f8")[::-1]
    params["reversed"] = _values(2 * n, 10, shadow=False).astype("f4")[::-2]
    want = {k: _np_core(shadow[k], params[k], decay) for k in shadow}
    ema.ema_update(shadow, params, 1, decay=decay)
    bad = [k for k in shadow if not _np_same(shadow[k], want[k])]
    assert not bad


def test_numpy_small_leaves_crossing_a_batch_boundary() -> None:
    """Small leaves whose sizes add up past one batch (``BLOCK`` elements) are batched in two
    and keep the core's bits, 0-d leaves among them, through a direct engine plan."""
    sizes = [host.SMALL] * 15 + [host.SMALL - 1, 1, 2, host.SMALL, 3]
    shadows = [_values(n, i, shadow=True).astype("f4") for i, n in enumerate(sizes)]
    params = [_values(n, i + 70, shadow=False).astype("f2") for i, n in enumerate(sizes)]
    shadows.append(np.array(0.25, np.float32))
    params.append(np.array(-0.0, np.float16))
    work = host.plan(shadows, params)
    for decay in INTERIOR:
        d, r = _pair_of(decay)
        want = [_np_core(s, p, decay) for s, p in zip(shadows, params, strict=True)]
        with np.errstate(all="ignore"):
            host.run(work, d, r)
        assert all(_np_same(s, w) for s, w in zip(shadows, want, strict=True)), decay


# --- NaN, inf and guard_finite ------------------------------------------------------------------

_SPECIAL_S = [np.inf, -np.inf, np.nan, 1.0, np.inf, 2.0, -0.0, np.nan, 5e-39]
_SPECIAL_P = [np.inf, np.inf, 1.0, np.nan, -np.inf, -np.inf, np.nan, -np.nan, np.inf]


@pytest.mark.parametrize(("sd", "pd"), [("f4", "f2"), ("f8", "f4"), ("f4", "f4")])
def test_numpy_non_finite_values_give_the_core_bits(sd: str, pd: str) -> None:
    """inf and NaN in shadows and params, small (batched) and large (blocks, compiled loop):
    every decay gives the core's bits, NaN payloads and signs included."""
    for n in (len(_SPECIAL_S), 3 * _blocks.BLOCK + 5):
        for decay in DECAYS:
            s = np.resize(np.array(_SPECIAL_S), n).astype(sd)
            p = np.resize(np.array(_SPECIAL_P), n).astype(pd)
            want = _np_core(s, p, decay)
            ema.ema_update([s], [p], 1, decay=decay)
            assert _np_same_nan(s, want), (n, decay)


def test_numpy_guard_finite_refuses_before_any_engine_write() -> None:
    """``guard_finite=True`` refuses a NaN in the last of many engine leaves (batched, large,
    strided) with a ValueError naming it; no shadow changed."""
    config = ema.Config(schedule=0.9, guard_finite=True)
    shadow = {
        "small": np.ones(10, np.float32),
        "large": np.ones(3 * _blocks.BLOCK, np.float32),
        "strided": np.ones((20, 30), np.float64).T,
    }
    params = {k: np.zeros(v.shape, np.float16 if v.dtype == np.float32 else np.float32)
              for k, v in shadow.items()}  # fmt: skip
    params["strided"][3, 4] = np.nan
    before = {k: v.copy() for k, v in shadow.items()}
    with pytest.raises(ValueError, match=r"\['strided'\]"):
        ema.ema_update(shadow, params, 1, config=config)
    assert all(_np_same(shadow[k], before[k]) for k in shadow)


# --- memory-mapped shadows ----------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 2])
def test_memmap_shadows_are_blended_in_the_file(tmp_path: os.PathLike[str], offset: int) -> None:
    """``np.memmap`` shadows (at an aligned and an unaligned file offset, C and Fortran order)
    take the engine in place: the file holds the core's bits after two updates."""
    path = os.path.join(tmp_path, "shadow.bin")
    shapes = {"big": (3, _blocks.BLOCK + 1), "small": (7, 9), "bias": (5,), "fortran": (40, 30)}
    total = offset + sum(int(np.prod(s)) * 4 for s in shapes.values())
    with open(path, "wb") as f:
        f.write(b"\0" * total)
    shadow, params, at = {}, {}, offset
    for i, (name, shape) in enumerate(shapes.items()):
        order = "F" if name == "fortran" else "C"
        mm = np.memmap(path, np.float32, "r+", offset=at, shape=shape, order=order)
        mm[...] = _values(mm.size, i, shadow=True).reshape(shape)
        shadow[name] = mm
        params[name] = _values(mm.size, i + 9, shadow=False).reshape(shape).astype(np.float16)
        at += mm.nbytes
    for decay in (0.999, 0.3):
        want = {k: _np_core(np.asarray(shadow[k]), params[k], decay) for k in shadow}
        out = ema.ema_update(shadow, params, 1, decay=decay)
        assert all(out[k] is shadow[k] for k in shadow)
        assert all(_np_same(np.asarray(shadow[k]), want[k]) for k in shadow), decay
    for mm in shadow.values():
        mm.flush()
    at = offset
    for name, shape in shapes.items():
        order = "F" if name == "fortran" else "C"
        disk = np.memmap(path, np.float32, "r", offset=at, shape=shape, order=order)
        assert _np_same(np.array(disk), np.array(shadow[name])), name
        at += disk.nbytes


# --- 10,000 tiny leaves -------------------------------------------------------------------------


def test_ten_thousand_tiny_numpy_leaves() -> None:
    """10,000 tiny leaves of three dtype pairs (0-d and 1 to 7 elements), updated twice (the
    second through the kept plan and its batched tables), keep the core's bits."""
    pairs = [("f4", "f2"), ("f8", "f4"), ("f4", "f4")]
    shadow, params = {}, {}
    for i in range(10_000):
        sd, pd = pairs[i % 3]
        shape = () if i % 8 == 0 else (i % 8,)
        n = int(np.prod(shape))
        shadow[f"l{i}"] = _values(n, i, shadow=True).astype(sd).reshape(shape)
        params[f"l{i}"] = _values(n, i + 1, shadow=False).astype(pd).reshape(shape)
    groups = [[f"l{i}" for i in range(j, 10_000, 3)] for j in range(3)]  # one per dtype pair

    def flat(nest: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
        return np.concatenate([nest[k].reshape(-1) for k in keys])

    for decay in (0.9, 0.3):  # the core is elementwise: its bits over a group end to end
        want = [_np_core(flat(shadow, keys), flat(params, keys), decay) for keys in groups]
        ema.ema_update(shadow, params, 1, decay=decay)
        for keys, w in zip(groups, want, strict=True):
            if not _np_same(flat(shadow, keys), w):
                at = np.cumsum([shadow[k].size for k in keys])[:-1]
                bad = [k for k, w_k in zip(keys, np.split(w, at), strict=True)
                       if not _np_same(shadow[k].reshape(-1), w_k)]  # fmt: skip
                pytest.fail(f"leaves {bad[:5]} differ from the core at decay {decay}")


# --- torch CPU tensors --------------------------------------------------------------------------

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
_MIXED = [(F32, BF16), (F32, F16), (F64, F32), (F64, BF16), (F64, F16)]
_SAME = [(F32, F32), (F64, F64)]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def _t_base(shape: tuple[int, ...], dtype: torch.dtype, seed: int, *, shadow: bool) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(_values(n, seed, shadow=shadow)).reshape(shape).to(dtype)


def _t_layout(
    layout: str, sd: torch.dtype, pd: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(shadow, params) of one layout; the params of "expanded" are a broadcast view."""

    def both(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        return _t_base(shape, sd, seed, shadow=True), _t_base(shape, pd, seed + 1, shadow=False)

    match layout:
        case "contiguous":
            return both((6, 10))
        case "transposed":
            s, p = both((10, 6))
            return s.t(), p.t()
        case "channels_last":
            s, p = both((2, 3, 4, 5))
            cl = torch.channels_last
            return s.contiguous(memory_format=cl), p.contiguous(memory_format=cl)
        case "stepped":
            s, p = both((12, 30))
            return s[::2, ::3], p[::2, ::3]
        case "offset":
            s, p = both((70,))
            return s[13:], p[9:66]
        case "zero_d":
            s, p = both((1,))
            return s.reshape(()).clone(), p.reshape(()).clone()
        case "expanded":
            s, p = both((1, 10))
            return s.repeat(6, 1), p.expand(6, 10)
    raise AssertionError(layout)


_T_LAYOUTS = ["contiguous", "transposed", "channels_last", "stepped", "offset", "zero_d"]


@pytest.mark.parametrize(("sd", "pd"), _MIXED, ids=[f"{_name(a)}-{_name(b)}" for a, b in _MIXED])
def test_torch_mixed_layouts_and_edge_decays_equal_the_core(
    sd: torch.dtype, pd: torch.dtype
) -> None:
    """A float32/float64 shadow over narrower CPU params (the host engine's route) in every
    layout, expanded params included, twice per decay over the same tensors: the core's bits."""
    for k, layout in enumerate([*_T_LAYOUTS, "expanded"]):
        s, p = _t_layout(layout, sd, pd, 10 * k)
        for decay in DECAYS:
            for _ in range(2):
                want = _t_core(s, p, decay)
                out = ema.ema_update([s], [p], 1, decay=decay)
                assert out[0] is s
                assert _t_same(s, want), (layout, decay)


@pytest.mark.parametrize(("sd", "pd"), _SAME, ids=["f32", "f64"])
def test_torch_same_dtype_layouts_equal_torch_lerp(sd: torch.dtype, pd: torch.dtype) -> None:
    """A same-dtype CPU group takes torch's fused lerp: its bits are ``torch.lerp(s, p, 1 - d)``
    for every interior decay and layout; decay 0 gives the params' bits, 1 the shadow's."""
    for k, layout in enumerate([*_T_LAYOUTS, "expanded"]):
        s, p = _t_layout(layout, sd, pd, 10 * k)
        for decay in DECAYS:
            d, r = _pair_of(decay)
            before = s.clone()
            if d == 0.0:
                want = p.clone()
            elif d == 1.0:
                want = before
            else:
                want = torch.lerp(before, p, r)
            ema.ema_update([s], [p], 1, decay=decay)
            assert _t_same(s, want), (layout, decay)


def test_signed_zeros_on_every_cpu_route() -> None:
    """Every sign pair of zero shadows and params, at every decay: the host engine (numpy and
    torch, float32 over half params) gives the core's bits, the fused route torch.lerp's, and
    the numpy and torch engines give each other's bits."""
    signs_s = [0.0, 0.0, -0.0, -0.0]
    signs_p = [0.0, -0.0, 0.0, -0.0]
    for decay in DECAYS:
        d, r = _pair_of(decay)
        s_np = np.array(signs_s, np.float32)
        p_np = np.array(signs_p, np.float16)
        want_np = _np_core(s_np, p_np, decay)
        ema.ema_update([s_np], [p_np], 1, decay=decay)
        assert _np_same(s_np, want_np), decay
        s_t, p_t = torch.tensor(signs_s), torch.tensor(signs_p, dtype=BF16)
        want_t = _t_core(s_t, p_t, decay)
        ema.ema_update([s_t], [p_t], 1, decay=decay)
        assert _t_same(s_t, want_t), decay
        s_f, p_f = torch.tensor(signs_s), torch.tensor(signs_p)
        fused = torch.lerp(s_f.clone(), p_f, r) if 0.0 < d < 1.0 else None
        ema.ema_update([s_f], [p_f], 1, decay=decay)
        if fused is not None:
            assert _t_same(s_f, fused), decay
        assert np.array_equal(_t_bits(s_t), _np_bits(s_np).view(np.int32)), decay


@pytest.mark.parametrize(("sd", "pd"), [(F32, BF16), (F64, F32)], ids=["f32-bf16", "f64-f32"])
def test_torch_sizes_around_large_and_torch_block(
    monkeypatch: pytest.MonkeyPatch, host_kernels: str, sd: torch.dtype, pd: torch.dtype
) -> None:
    """Contiguous leaves just below, at and above ``LARGE`` (where, without numba, torch's own
    ops take over) and ``TORCH_BLOCK + 1`` elements (a one-element last block, and enough for
    the engine's threads), beside a large channels_last leaf (never torch's ops) and small
    ones: the core's bits, at both branches of the lerp."""
    calls: list[int] = []
    original = _host._torch_blocks
    monkeypatch.setattr(_host, "_torch_blocks", lambda *a: calls.append(1) or original(*a))
    sizes = [_host.LARGE - 1, _host.LARGE, _host.LARGE + 1, _host.TORCH_BLOCK + 1, 5]
    pairs = [(_t_base((n,), sd, i, shadow=True), _t_base((n,), pd, i + 3, shadow=False))
             for i, n in enumerate(sizes)]  # fmt: skip
    cl = torch.channels_last
    s4 = _t_base((4, 64, 32, 32), sd, 40, shadow=True).contiguous(memory_format=cl)
    p4 = _t_base((4, 64, 32, 32), pd, 41, shadow=False).contiguous(memory_format=cl)
    pairs.append((s4, p4))
    shadows, params = [s for s, _ in pairs], [p for _, p in pairs]
    for decay in (0.999, 0.3):
        want = [_t_core(s, p, decay) for s, p in pairs]
        ema.ema_update(shadows, params, 1, decay=decay)
        assert all(_t_same(s, w) for s, w in zip(shadows, want, strict=True)), decay
    assert bool(calls) is (host_kernels == "off")


_T_SPECIAL_S = torch.tensor(_SPECIAL_S, dtype=F64)
_T_SPECIAL_P = torch.tensor(_SPECIAL_P, dtype=F64)


@pytest.mark.parametrize(("sd", "pd"), [(F32, BF16), (F32, F16), (F64, F32)])
def test_torch_non_finite_values_give_the_core_bits(
    monkeypatch: pytest.MonkeyPatch, sd: torch.dtype, pd: torch.dtype
) -> None:
    """inf and NaN in CPU shadows and params (small, strided, and large: torch's ops without
    numba) give the core's bits at every decay."""
    monkeypatch.setattr(_host, "LARGE", 64)
    monkeypatch.setattr(_host, "TORCH_BLOCK", 50)
    for n in (len(_SPECIAL_S), 150):
        for decay in DECAYS:
            s = _T_SPECIAL_S.repeat(n // len(_SPECIAL_S) + 1)[:n].to(sd)
            p = _T_SPECIAL_P.repeat(n // len(_SPECIAL_P) + 1)[:n].to(pd)
            st, pt = s.repeat(2, 1).t(), p.repeat(2, 1).t()  # (n, 2), strided
            want, want_t = _t_core(s, p, decay), _t_core(st, pt, decay)
            ema.ema_update([s, st], [p, pt], 1, decay=decay)
            assert _t_same_nan(s, want), (n, decay)
            assert _t_same_nan(st, want_t), (n, decay)


def test_torch_guard_finite_refuses_before_any_engine_write() -> None:
    """``guard_finite=True`` on CPU tensors of the host engine's route: an inf in one params
    tensor is a ValueError naming it, and no shadow of the group changed."""
    config = ema.Config(schedule=0.9, guard_finite=True)
    shadow = {"a": torch.ones(100), "b": torch.ones(300_000), "c": torch.ones(4, 6).t()}
    params = {k: torch.zeros(v.shape, dtype=BF16) for k, v in shadow.items()}
    params["c"][2, 1] = float("inf")
    before = {k: v.clone() for k, v in shadow.items()}
    with pytest.raises(ValueError, match=r"\['c'\]"):
        ema.ema_update(shadow, params, 1, config=config)
    assert all(_t_same(shadow[k], before[k]) for k in shadow)


def test_torch_ema_class_channels_last_bf16_model() -> None:
    """The ``EMA`` class over a bf16 model in channels_last (a conv weight of more than
    ``LARGE`` elements that is not contiguous, a linear, biases): three updates, each the
    core's bits."""
    from ema_core.torch import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 9), torch.nn.Flatten(),
                                torch.nn.Linear(10, 3))  # fmt: skip
    model = model.to(dtype=BF16).to(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous() and model[0].weight.numel() >= _host.LARGE
    ema_ = EMA(model, decay=0.9)
    live = dict(model.named_parameters())
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, dtype=F32).to(BF16))
        before = {k: v.clone() for k, v in ema_.average.items()}
        ema_.update()
        for name, shadow in ema_.average.items():
            want = _t_core(before[name], live[name].detach(), 0.9)
            assert _t_same(shadow, want), name


def test_ten_thousand_tiny_torch_tensors() -> None:
    """10,000 tiny bf16 tensors (0-d and 1 to 7 elements) under float32 shadows, updated twice
    (batched tables with numba, gathered blocks without): the core's bits. The core's blend
    is elementwise, so its bits over all the leaves laid end to end are each leaf's."""
    shadows, params = [], []
    big_s = torch.from_numpy(_values(80_000, 1, shadow=True))
    big_p = torch.from_numpy(_values(80_000, 2, shadow=False))
    for i in range(10_000):
        shape = () if i % 8 == 0 else (i % 8,)
        n = max(1, i % 8)
        shadows.append(big_s[8 * i : 8 * i + n].to(F32).reshape(shape))
        params.append(big_p[8 * i : 8 * i + n].to(BF16).reshape(shape))
    sizes = [t.numel() for t in params]
    flat = torch.cat([t.reshape(-1) for t in params])
    for decay in (0.9, 0.3):
        want = _t_core(torch.cat([t.reshape(-1) for t in shadows]), flat, decay)
        ema.ema_update(shadows, params, 1, decay=decay)
        got = torch.cat([t.reshape(-1) for t in shadows])
        if not _t_same(got, want):
            pieces = zip(got.split(sizes), want.split(sizes), strict=True)
            bad = [i for i, (s, w) in enumerate(pieces) if not _t_same(s, w)]
            pytest.fail(f"leaves {bad[:5]} differ from the core at decay {decay}")


# --- EMA_CORE_NUMBA=0 from the start of a process -----------------------------------------------


@pytest.mark.parametrize("host_kernels", ["off"], indirect=True)
def test_numba_turned_off_before_import_never_imports_numba(host_kernels: str) -> None:
    """``EMA_CORE_NUMBA=0`` set before the process starts: the engine runs its numpy blocks
    (``compiled()`` False), gives the core's bits, and numba is never imported (the kernels
    import it on first use only)."""
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import array_api_compat.numpy as xp
        import ema_core as ema
        from ema_core import _core
        from ema_core.backends import host
        rng = np.random.default_rng(0)
        s = rng.standard_normal(70_000).astype(np.float32)
        p = rng.standard_normal(70_000).astype(np.float16)
        tiny = [np.float32(i).reshape(1).copy() for i in range(9)]
        want = np.asarray(_core.blend(xp, s.copy(), p, 0.99, 1.0 - 0.99))
        ema.ema_update([s, *tiny], [p, *[np.zeros(1, np.float16)] * 9], 1, decay=0.99)
        assert s.tobytes() == want.tobytes()
        assert not host.compiled()
        assert "numba" not in sys.modules, "numba imported"
        print("ok")
        """
    )
    env = dict(os.environ, EMA_CORE_NUMBA="0")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_nan_shadow_over_nan_params_stays_nan() -> None:
    """A +NaN shadow blended with -NaN params at a decay >= 0.5 (and < 0.5) on a leaf the engine
    blends in place (numba's loop or the numpy blocks): NaN, as the core gives, with the sign
    and payload left open (README: IEEE 754 does not fix which NaN), and the leaves that are
    not NaN in the same array keep the core's bits."""
    n = 3 * _blocks.BLOCK
    for decay in (0.999, 0.25):
        s = np.full(n, np.nan, np.float32)
        p = np.full(n, -np.nan, np.float32)
        s[::7], p[::7] = 1.5, -2.0
        want = _np_core(s, p, decay)
        ema.ema_update([s], [p], 1, decay=decay)
        assert np.array_equal(np.isnan(s), np.isnan(want)) and np.isnan(s[1:7]).all()
        assert _np_same(s[::7], want[::7]), decay
