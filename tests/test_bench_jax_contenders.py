"""The JAX benchmark's baselines time what they say: on a tiny workload the hand-written
``tree_map`` and the packed state's ``packed_concat`` move their shadows by the EMA step at the
benchmark's decay, and ``handoff`` hands the arrays back unchanged. A baseline that computed
something else (or nothing) would make its row, and the README's bounds read from it, a lie.
(ema-core's own row is ``make_update``, tested everywhere else.)"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("jax")

from benchmarks.backends import jax as bench_jax
from benchmarks.backends._common import host_arrays
from benchmarks.workloads import Workload

TINY = Workload("tiny", ((3, 4), (5,), (2, 2, 2)))


def _flat(leaves: Iterable[Any]) -> np.ndarray:
    return np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in leaves])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_arithmetic_baselines_take_ema_steps(dtype: str) -> None:
    """Three calls of each baseline from its start (the random shadows for ``tree_map``, zeros
    for ``packed_concat``) give the shadows of three EMA steps at the benchmark's decay (the
    params rounded to bf16 first for the bf16 rows)."""
    import jax.numpy as jnp

    cases = bench_jax.cases(TINY, dtype, "cpu")
    assert {"ema_core", "tree_map", "packed_concat", "ceiling"} <= set(cases)
    shadows, params = host_arrays(TINY)
    pdtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    p = _flat([jnp.asarray(x, dtype=pdtype) for x in params])
    expect_from = {"tree_map": _flat(shadows), "packed_concat": np.zeros_like(p)}
    for name, start in expect_from.items():
        s = start
        for t in range(3):
            out = cases[name](t)
            s = s + (1 - bench_jax.DECAY) * (p - s)
        np.testing.assert_allclose(_flat(out), s, rtol=1e-6, atol=1e-7, err_msg=name)


def test_handoff_contenders_return_their_inputs_unchanged() -> None:
    """``handoff`` hands the shadows back as they came: no arithmetic hides in the bound."""
    cases = bench_jax.cases(TINY, "fp32", "cpu")
    shadows, _ = host_arrays(TINY)
    np.testing.assert_array_equal(_flat(cases["handoff"](0)), _flat(shadows))
    assert len(cases["handoff_params"](0)) == 1


def test_hwio_layout_is_flax_conv_kernel_layout() -> None:
    """``hwio_layout`` turns torch's ``(out, in, kh, kw)`` into Flax's ``(kh, kw, in, out)``
    element for element, contiguous, and leaves other ranks alone."""
    kernel = np.arange(2 * 3 * 5 * 7, dtype=np.float32).reshape(2, 3, 5, 7)
    flax = bench_jax.hwio_layout(kernel)
    assert flax.shape == (5, 7, 3, 2) and flax.flags.c_contiguous
    for o, i, h, w in [(0, 0, 0, 0), (1, 2, 4, 6), (1, 0, 3, 2), (0, 1, 2, 5)]:
        assert flax[h, w, i, o] == kernel[o, i, h, w]
    vector = np.ones(4, dtype=np.float32)
    assert bench_jax.hwio_layout(vector) is vector


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_hwio_contender_is_make_update_on_the_flax_layout(dtype: str) -> None:
    """``ema_core_hwio`` runs only where the workload has 4-d leaves, and it is the EMA step
    over the params in Flax's layout: the averaged 4-d shadow is that layout, and after one
    call from the params each shadow still equals its param, its step counted."""
    import jax.numpy as jnp

    assert "ema_core_hwio" not in bench_jax.cases(TINY, dtype, "cpu")
    conv = Workload("conv", ((4, 3, 3, 3), (4,)))
    cases = bench_jax.cases(conv, dtype, "cpu")
    _, params = host_arrays(conv)
    pdtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    state = cases["ema_core_hwio"](0)
    assert int(state.step) == 1 and int(cases["ema_core_hwio"](1).step) == 2
    state = cases["ema_core_hwio"](2)
    kernel, bias = state.shadow
    assert kernel.shape == (3, 3, 3, 4) and bias.shape == (4,)
    want = [bench_jax.hwio_layout(p) for p in params]
    for got, p in zip((kernel, bias), want, strict=True):
        rounded = np.asarray(jnp.asarray(p, dtype=pdtype), dtype=np.float64)
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), rounded, rtol=1e-6)


def test_packed_contender_is_make_update_on_a_packed_state() -> None:
    """``packed`` updates ``pack`` of the workload's state: three calls from the params give
    their EMA (each shadow still its param, the step counted) in the packed layout."""
    from ema_core.jax import PackedState, unpack

    cases = bench_jax.cases(TINY, "fp32", "cpu")
    _, params = host_arrays(TINY)
    for t in range(3):
        state = cases["packed"](t)
    assert isinstance(state, PackedState) and len(state.flats) == 1 and int(state.step) == 3
    np.testing.assert_allclose(_flat(unpack(state).shadow), _flat(params), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_slices_update_takes_ema_steps_leaf_by_leaf(dtype: str) -> None:
    """``slices_update`` (the CUDA row ``packed_slices``) gives, from a zero flat shadow, three
    EMA steps of each param over its own slice, in the params' order; the CPU runs leave the
    row out (a tenth of the ceiling there)."""
    import jax
    import jax.numpy as jnp

    assert "packed_slices" not in bench_jax.cases(TINY, dtype, "cpu")
    _, params = host_arrays(TINY)
    pdtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    leaves = [jnp.asarray(x, dtype=pdtype) for x in params]
    update = bench_jax.slices_update([x.size for x in leaves])
    flat, s = jax.numpy.zeros(sum(x.size for x in leaves)), np.zeros(sum(x.size for x in leaves))
    p = _flat(leaves)
    for _ in range(3):
        flat = update(flat, leaves)
        s = s + (1 - bench_jax.DECAY) * (p - s)
    np.testing.assert_allclose(np.asarray(flat, dtype=np.float64), s, rtol=1e-6, atol=1e-7)


def test_packed_slices_row_runs_slices_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA row itself, run on the CPU: three calls from a zero flat shadow."""
    monkeypatch.setattr(bench_jax, "SLICES_DEVICES", ("cuda", "cpu"))
    cases = bench_jax.cases(TINY, "fp32", "cpu")
    _, params = host_arrays(TINY)
    p, s = _flat(params), np.zeros(sum(x.size for x in params))
    for t in range(3):
        out = cases["packed_slices"](t)
        s = s + (1 - bench_jax.DECAY) * (p - s)
    np.testing.assert_allclose(np.asarray(out, dtype=np.float64), s, rtol=1e-6, atol=1e-7)
