"""Every backend against the float64 oracle, for every schedule, init policy and interval mode,
over a nest of mixed shapes and dtypes (float64, float32, float16, bfloat16, int64)."""

from __future__ import annotations

import numpy as np
import pytest

import ema_core as ema
from ema_core import _core
from tests.conftest import Backend, Name, assert_close, to_numpy
from tests.reference import SPECS, Spec, closed_form, config_for, effective_decay, run_loop

STEPS = 12
ULPS = 48  # rounding of up to ~4 operations per step, over 12 steps


def _host_nest(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal(5),
        "c": np.asarray(rng.standard_normal(), dtype=np.float32),
        "h": rng.standard_normal(6).astype(np.float16),
        "bf": rng.standard_normal(4).astype(np.float32),
        "n": rng.integers(0, 100, size=2),
    }


def _native(backend: Backend, host: dict[str, np.ndarray]) -> dict[str, object]:
    dtypes = {"bf": "bfloat16"} if backend.has_bf16 else {}
    if not backend.has_f16:
        host = {**host, "h": host["h"].astype(np.float32)}
    return backend.tree(host, dtypes)


def _tolerance_dtype(leaf: object) -> str:
    import array_api_compat as compat

    return _core.dtype_name(compat.array_namespace(leaf), leaf.dtype)  # type: ignore[attr-defined]


def _compare(got: dict, want: dict[str, np.ndarray], what: str) -> None:
    for key, value in want.items():
        if key == "n":
            np.testing.assert_array_equal(to_numpy(got[key]), value, err_msg=f"{what} {key}")
        else:
            assert_close(
                got[key], value, _tolerance_dtype(got[key]), ulps=ULPS, what=f"{what} leaf {key}"
            )


CASES = [(spec, init, 1, True) for spec in SPECS for init in ("params", "copy", "zeros")] + [
    (spec, init, 3, comp)
    for spec in SPECS[2:4]
    for init in ("params", "copy", "zeros")
    for comp in (True, False)
]


@pytest.mark.parametrize(
    ("spec", "init", "interval", "compensate"),
    CASES,
    ids=[f"{c[0].name}{c[0].args}-{c[1]}-n{c[2]}{'c' if c[3] else ''}" for c in CASES],
)
def test_functional_matches_oracle(
    backend: Backend, spec: Spec, init: str, interval: int, compensate: bool
) -> None:
    rng = np.random.default_rng(0)
    natives = [_native(backend, _host_nest(rng)) for _ in range(STEPS + 1)]
    hosts = [{k: to_numpy(v) for k, v in n.items()} for n in natives]  # exactly what was fed
    cfg = config_for(spec, init, interval, compensate)
    expected = run_loop(spec, init, interval, compensate, hosts[0], hosts[1:])
    state = ema.init(natives[0], cfg)
    for t in range(1, STEPS + 1):
        state = ema.update(state, natives[t], cfg)
        want_shadow, want_weight = expected[t - 1]
        _compare(state.shadow, want_shadow, f"shadow at t={t}")
        assert float(state.weight) == pytest.approx(want_weight, rel=1e-6, abs=1e-7)
        if init == "zeros" and want_weight > 0:
            want_avg = {k: v / (want_weight if k != "n" else 1) for k, v in want_shadow.items()}
            _compare(ema.average(state, cfg), want_avg, f"average at t={t}")
    assert int(state.step) == STEPS


@pytest.mark.parametrize("spec", SPECS, ids=[f"{s.name}{s.args}" for s in SPECS])
def test_stateless_in_place_matches_oracle(backend: Backend, spec: Spec) -> None:
    """``ema_update`` with a schedule applies exactly ``schedule(step)``; in place where it can."""
    rng = np.random.default_rng(1)
    natives = [_native(backend, _host_nest(rng)) for _ in range(STEPS + 1)]
    natives[0] = {
        k: backend.cast(v, "float32") if k in ("h", "bf") else v for k, v in natives[0].items()
    }
    hosts = [{k: to_numpy(v) for k, v in n.items()} for n in natives]
    expected = run_loop(spec, "params", 1, True, hosts[0], hosts[1:])
    shadow = natives[0]
    before = {k: id(v) for k, v in shadow.items()}
    for t in range(1, STEPS + 1):
        shadow = ema.ema_update(shadow, natives[t], t, schedule=spec.build())
        _compare(shadow, expected[t - 1][0], f"ema_update at t={t}")
    in_place = backend.name is not Name.JAX
    assert ({k: id(v) for k, v in shadow.items()} == before) is in_place


def test_oracle_loop_equals_closed_form() -> None:
    rng = np.random.default_rng(2)
    seq = [rng.standard_normal(4) for _ in range(9)]
    s0 = rng.standard_normal(4)
    for spec in SPECS:
        for init, interval, comp in (
            ("params", 1, True),
            ("copy", 1, True),
            ("params", 3, True),
            ("copy", 3, False),
        ):
            decays = [effective_decay(spec, t, init, interval, comp) for t in range(1, 10)]
            loop = run_loop(spec, init, interval, comp, {"x": s0}, [{"x": p} for p in seq])
            np.testing.assert_allclose(
                loop[-1][0]["x"], closed_form(decays, s0, seq), rtol=1e-12, atol=1e-12
            )
