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
